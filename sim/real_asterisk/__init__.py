"""A real Asterisk 22 for the tests: Debian's package installed into a cache, started in a run directory of
its own with the project's deploy/asterisk confs (`python -m sim.real_asterisk`, scripts/real-asterisk)."""

from sim.real_asterisk.install import Installation, RealAsteriskUnavailable, default_cache, install, installed
from sim.real_asterisk.process import RealAsterisk, connect, default_run_root, start, start_or_explain

__all__ = [
    "Installation",
    "RealAsterisk",
    "RealAsteriskUnavailable",
    "connect",
    "default_cache",
    "default_run_root",
    "install",
    "installed",
    "start",
    "start_or_explain",
]
