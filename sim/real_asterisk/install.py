"""Install Debian's Asterisk 22 package into a private cache: a private apt tree downloads the package and its
dependency closure (sid's libc6 included), `dpkg -x` unpacks every .deb into `<cache>/prefix`. Nothing touches
the system's dpkg state, /etc or the running system's libraries; the binary runs with the prefix's own loader."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Debian sid carries asterisk 22.x (stable has none); binaries from sid need sid's glibc, hence the whole closure.
SOURCES = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main\n"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PACKAGES = [
    "asterisk",
    "asterisk-modules",
    "asterisk-config",
    "asterisk-core-sounds-en-wav",
    "asterisk-moh-opsound-wav",
]
MARKER = "installed.json"
APT_TIMEOUT = 900
LOCK_TIMEOUT = 1200


class RealAsteriskUnavailable(RuntimeError):
    """A real Asterisk cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class Installation:
    prefix: Path
    package_version: str  # Debian's version of the asterisk package
    version: str  # what `asterisk -V` prints, e.g. "Asterisk 22.10.1~dfsg+~cs6.15.60671435-1"

    @property
    def libdirs(self) -> list[Path]:
        return [
            d for d in (self.prefix / "usr/lib/x86_64-linux-gnu", self.prefix / "lib/x86_64-linux-gnu") if d.is_dir()
        ]

    @property
    def loader(self) -> Path:
        return self.prefix / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

    @property
    def modules_dir(self) -> Path:
        return self.prefix / "usr/lib/x86_64-linux-gnu/asterisk/modules"

    @property
    def share(self) -> Path:
        return self.prefix / "usr/share/asterisk"

    def command(self, *args: str) -> list[str]:
        """argv running the prefix's asterisk binary with the prefix's own loader and libraries."""
        return [
            str(self.loader),
            "--library-path",
            ":".join(map(str, self.libdirs)),
            str(self.prefix / "usr/sbin/asterisk"),
            *args,
        ]


def default_cache() -> Path:
    return Path(os.environ.get("VA_ASTERISK_CACHE") or Path.home() / ".cache" / "voice-agent" / "asterisk")


def installed(cache_dir: Path | str | None = None) -> Installation | None:
    """The finished installation in the cache, or None."""
    cache = Path(cache_dir) if cache_dir else default_cache()
    try:
        info = json.loads((cache / MARKER).read_text())
    except (OSError, ValueError):
        return None
    inst = Installation(cache / "prefix", info["package_version"], info["version"])
    return inst if inst.loader.exists() and inst.modules_dir.is_dir() else None


def install(cache_dir: Path | str | None = None, log=print) -> Installation:
    """Install (once; later calls return the cached one) Debian sid's Asterisk into the cache directory."""
    cache = Path(cache_dir) if cache_dir else default_cache()
    if found := installed(cache):
        return found
    if os.uname().machine != "x86_64":
        raise RealAsteriskUnavailable(f"the harness installs amd64 packages; this machine is {os.uname().machine}")
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RealAsteriskUnavailable(f"{tool} not found: installing Debian's asterisk package needs apt and dpkg")
    if not KEYRING.exists():
        raise RealAsteriskUnavailable(f"{KEYRING} missing (package debian-archive-keyring): cannot verify the archive")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with _locked(cache / ".lock"):
            if found := installed(cache):  # another process finished it while we waited
                return found
            return _install(cache, log)
    except OSError as exc:
        raise RealAsteriskUnavailable(f"cannot install into {cache}: {exc}") from None


def _install(cache: Path, log) -> Installation:
    started = time.monotonic()
    apt = cache / "apt"
    shutil.rmtree(apt, ignore_errors=True)
    for sub in ("lists/partial", "archives/partial", "cache"):
        (apt / sub).mkdir(parents=True)
    (apt / "sources.list").write_text(SOURCES)
    (apt / "status").write_text("")  # an empty dpkg status: apt resolves the whole closure, system untouched
    opts = [
        f"-oDir::Etc::sourcelist={apt / 'sources.list'}",
        "-oDir::Etc::sourceparts=/nonexistent",
        "-oDir::Etc::preferencesparts=/nonexistent",
        f"-oDir::Etc::preferences={apt / 'preferences'}",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::State::status={apt / 'status'}",
        f"-oDir::Cache={apt / 'cache'}",
        f"-oDir::Cache::archives={apt / 'archives'}",
        "-oDebug::NoLocking=1",
        "-oAcquire::Languages=none",
        "-oAcquire::http::Timeout=30",
        "-oAcquire::Retries=2",
        "-oAPT::Install-Recommends=false",
        "-oAPT::Update::Error-Mode=any",
    ]
    if os.geteuid() == 0:
        opts.append("-oAPT::Sandbox::User=root")  # _apt cannot enter a cache under /root
    log(f"real Asterisk: reading Debian sid's package lists into {apt}")
    _apt(["apt-get", *opts, "update"], "apt-get update (is the Debian archive reachable?)")
    uris = _apt(
        ["apt-get", *opts, "install", "--print-uris", "-y", *PACKAGES],
        "apt-get could not resolve " + " ".join(PACKAGES),
    )
    debs = re.findall(r"^'(\S+)' (\S+\.deb) (\d+) ", uris, re.M)
    if not debs:
        raise RealAsteriskUnavailable(f"apt-get listed nothing to download for {' '.join(PACKAGES)}")
    size = sum(int(d[2]) for d in debs)
    log(
        f"real Asterisk: downloading {len(debs)} packages, {size / 1e6:.1f} MB "
        f"({', '.join(n.split('_')[0] for _, n, _ in debs if n.startswith('asterisk'))} and their dependencies)"
    )
    _apt(["apt-get", *opts, "install", "--download-only", "-y", "-q", *PACKAGES], "apt-get download")
    files = sorted((apt / "archives").glob("*.deb"))
    prefix, tmp = cache / "prefix", cache / "prefix.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"real Asterisk: unpacking {len(files)} packages into {prefix}")
    for deb in files:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}", 120)
    package_version = _run(
        ["dpkg-deb", "-f", str(next(f for f in files if f.name.startswith("asterisk_"))), "Version"], "dpkg-deb -f", 30
    ).strip()
    shutil.rmtree(prefix, ignore_errors=True)
    tmp.rename(prefix)
    shutil.rmtree(apt, ignore_errors=True)  # the prefix is the cache; the .debs are not needed again
    inst = Installation(prefix, package_version, "")
    version = _run(inst.command("-V"), "asterisk -V (the unpacked binary does not run)", 30).strip()
    (cache / MARKER).write_text(
        json.dumps(
            {"package_version": package_version, "version": version, "packages": len(files), "download_bytes": size},
            indent=1,
        )
        + "\n"
    )
    log(f"real Asterisk: {version} installed in {time.monotonic() - started:.0f}s ({_du(prefix) / 1e6:.0f} MB)")
    return Installation(prefix, package_version, version)


def _apt(argv: list[str], what: str) -> str:
    return _run(argv, what, APT_TIMEOUT, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})


def _run(argv: list[str], what: str, timeout: float, env: dict | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RealAsteriskUnavailable(f"{what}: no result after {timeout:.0f}s") from None
    except OSError as exc:
        raise RealAsteriskUnavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise RealAsteriskUnavailable(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _du(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if not f.is_dir())


class _locked:
    """An exclusive flock on `path`, waited for at most LOCK_TIMEOUT (two installs never unpack together)."""

    def __init__(self, path: Path):
        self.file = open(path, "w")

    def __enter__(self):
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RealAsteriskUnavailable(
                        f"{self.file.name} stayed locked for {LOCK_TIMEOUT}s (another install running?)"
                    ) from None
                time.sleep(0.5)

    def __exit__(self, *exc):
        self.file.close()
