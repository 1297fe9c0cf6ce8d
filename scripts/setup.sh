#!/usr/bin/env bash
# Set up a development machine (Debian/Ubuntu): Python venv in .venv with the project and its dev extra,
# Debian packages the tests and demo use, and a Redis server on 127.0.0.1:6379. It first says what it will
# install and why; `scripts/setup.sh --dry-run` says only that.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0; [ "${1:-}" = "--dry-run" ] && DRY_RUN=1   # say what would be installed, install nothing
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# What this machine lacks, and why each is needed: said before anything is installed.
missing=(); reasons=()
need() { missing+=("$1"); reasons+=("$2"); }
command -v python3 >/dev/null 2>&1 || need python3 "the project's language"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need python3-venv "the project's virtual environment (.venv)"
command -v redis-server >/dev/null 2>&1 || need redis-server "the cluster's shared state; tests and demo use 127.0.0.1:6379"
command -v espeak-ng >/dev/null 2>&1 || need espeak-ng "the voices of the demo's caller and the Realtime emulator's agent"
prometheus=0
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || prometheus=1

echo "scripts/setup.sh sets up this machine for development:" >&2
if [ ${#missing[@]} -gt 0 ] || [ $prometheus -eq 1 ]; then
  echo "  Debian packages to install with apt-get${SUDO:+ (via sudo)}:" >&2
  for i in "${!missing[@]}"; do printf '    %-13s %s\n' "${missing[$i]}" "${reasons[$i]}" >&2; done
  [ $prometheus -eq 0 ] || printf '    %-13s %s\n' prometheus \
    "the monitoring tests run Prometheus and promtool on deploy/prometheus/ (no exporters: no recommends)" >&2
else
  echo "  Debian packages: nothing to install (python3-venv, redis-server, espeak-ng, prometheus are here)" >&2
fi
cat >&2 <<'PLAN'
  then: start redis-server on 127.0.0.1:6379 unless something answers there (scripts/ensure-redis.sh),
        create .venv and pip-install the project with its dev extra (tests, ruff, mypy, import-linter),
        and unpack Debian's asterisk package into ~/.cache/voice-agent/asterisk for the real-PBX tests
        (nothing installed system-wide; scripts/real-asterisk install).
PLAN
[ $DRY_RUN -eq 0 ] || exit 0

if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ $prometheus -eq 1 ]; then
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
