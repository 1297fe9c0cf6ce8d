"""scripts/setup.sh says what it will install, and why, before it installs anything (`--dry-run`: only that)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_setup_names_each_package_with_its_reason_before_installing(tmp_path):
    # A PATH with python3 and the few tools the script itself runs: no redis-server, espeak-ng or prometheus.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "id", "dirname"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, bin_dir / tool)
    os.symlink(sys.executable, bin_dir / "python3")
    done = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "setup.sh"), "--dry-run"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    for package, why in (
        ("redis-server", "shared state"),
        ("espeak-ng", "voices"),
        ("prometheus", "monitoring tests"),
    ):
        (line,) = [line for line in lines if line.split()[:1] == [package]]
        assert why in line, line
    assert "pip-install the project" in done.stderr and "nothing installed system-wide" in done.stderr
