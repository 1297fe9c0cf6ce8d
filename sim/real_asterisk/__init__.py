"""A real Asterisk 22 for the tests: Debian's package installed into a cache, started in a run directory of
its own with the project's deploy/asterisk confs."""

from sim.real_asterisk.install import Installation, RealAsteriskUnavailable, default_cache, install, installed

__all__ = ["Installation", "RealAsteriskUnavailable", "default_cache", "install", "installed"]
from sim.real_asterisk.process import RealAsterisk, default_run_root, start  # noqa: E402

__all__ += ["RealAsterisk", "default_run_root", "start"]
