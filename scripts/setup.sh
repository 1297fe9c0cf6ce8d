#!/usr/bin/env bash
# Set up a development machine (Debian/Ubuntu): Python venv in .venv with the project and its dev extra,
# Debian packages the tests and demo use, and a Redis server on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)  # the Realtime emulator's agent voice
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The monitoring tests run a real Prometheus and promtool on deploy/prometheus/ (no exporters: no recommends).
if ! { command -v prometheus && command -v promtool; } >/dev/null 2>&1; then
  echo "installing Debian package: prometheus" >&2
  [ ${#missing[@]} -gt 0 ] || $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

bash scripts/ensure-redis.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q -e ".[dev]"  # the test extra and CI's gates (ruff, mypy, import-linter)
# The real-PBX tests (pytest -m realpbx) need Debian's asterisk package unpacked into a cache (once; nothing is
# installed on the system). Without it setup goes on and those tests are skipped, loudly.
if ! scripts/real-asterisk install >&2; then
  cat >&2 <<'WARN'
######################################################################################################
#  WARNING: the real Asterisk could not be installed (the reason is printed above).
#  The real-PBX tests (pytest -m realpbx) will be SKIPPED until it can be: they will not run.
#  Retry with: scripts/real-asterisk install
#  Or use an Asterisk you run: pytest -m realpbx --ari-url http://127.0.0.1:8088 --ari-password PW
######################################################################################################
WARN
fi
echo "setup done: .venv ready, Redis on 127.0.0.1:6379" >&2
