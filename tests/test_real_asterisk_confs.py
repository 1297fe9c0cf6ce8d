"""The real Asterisk harness's run directory, without Asterisk: the shipped deploy/asterisk confs with a fresh
password and port, every directory inside the run directory, and the module list the product needs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sim.real_asterisk import confs
from sim.real_asterisk.install import Installation, RealAsteriskUnavailable
from tests.conftest import ROOT


@pytest.fixture
def inst(tmp_path) -> Installation:
    """A stand-in for the unpacked package: only the folders the run directory links to."""
    prefix = tmp_path / "prefix"
    for sub in (
        "usr/share/asterisk/sounds/en_US_f_Allison",
        "usr/share/asterisk/moh",
        "usr/share/asterisk/rest-api",
        "usr/share/asterisk/documentation",
        "usr/lib/x86_64-linux-gnu/asterisk/modules",
    ):
        (prefix / sub).mkdir(parents=True)
    return Installation(prefix, "1:22.10.1", "Asterisk 22.10.1")


def test_the_run_directory_holds_the_shipped_confs_with_a_fresh_password_and_port(inst, tmp_path):
    run = tmp_path / "run"
    confs.write_run_dir(inst, confs.RunConfig(run, 41234, (30000, 30199), "asterisk", "s3cret-pw"))
    etc = run / "etc"
    ari = (etc / "ari.conf").read_text()
    assert "password = s3cret-pw" in ari and "CHANGE_ME" not in ari
    assert "channelvars = AI_CONTEXT,AI_PROVIDER" in ari and "127.0.0.1:41234" in ari
    http = (etc / "http.conf").read_text()
    assert re.search(r"^bindport = 41234\b", http, re.M) and re.search(r"^bindaddr = 127\.0\.0\.1", http, re.M)
    for name in ("extensions_custom.conf", "extensions_plain_asterisk.conf"):
        assert (etc / name).read_text() == (ROOT / "deploy/asterisk" / name).read_text()
        assert f"#include {name}" in (etc / "extensions.conf").read_text()
    assert (run / "data/sounds/en").resolve() == inst.share / "sounds/en_US_f_Allison"
    assert "100 =>" in (etc / "voicemail.conf").read_text().split("[default]")[1]
    assert "rtpstart = 30000" in (etc / "rtp.conf").read_text()
    # Every directory is the run directory's, except the package's modules and binaries.
    dirs = dict(re.findall(r"^(\w+) => (.+)$", (etc / "asterisk.conf").read_text(), re.M))
    outside = {k for k, v in dirs.items() if not v.startswith(str(run))}
    assert outside == {"astmoddir", "astsbindir"} and dirs["astmoddir"] == str(inst.modules_dir)


def test_the_module_list_is_explicit_and_has_what_the_product_needs(inst, tmp_path):
    confs.write_run_dir(inst, confs.RunConfig(tmp_path / "run", 41234, (30000, 30199), "asterisk", "pw"))
    modules = (tmp_path / "run/etc/modules.conf").read_text()
    assert "autoload = no" in modules
    loaded = set(re.findall(r"^load = (\S+)\.so$", modules, re.M))
    assert {
        "res_ari",
        "app_stasis",
        "chan_audiosocket",
        "chan_rtp",
        "chan_websocket",
        "app_voicemail",
        "res_musiconhold",
        "codec_resample",
    } <= loaded
    assert not {"app_voicemail_odbc", "app_voicemail_imap"} & loaded  # they clash with app_voicemail


def test_a_changed_deploy_file_is_named_in_the_error(inst, tmp_path, monkeypatch):
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for f in (ROOT / "deploy/asterisk").glob("*.conf"):
        (deploy / f.name).write_text(f.read_text())
    (deploy / "http.conf").write_text("[general]\nenabled = yes\n")
    monkeypatch.setattr(confs, "DEPLOY", deploy)
    with pytest.raises(RealAsteriskUnavailable, match="http.conf: expected one line matching"):
        confs.write_run_dir(inst, confs.RunConfig(tmp_path / "run", 41234, (30000, 30199), "asterisk", "pw"))


def test_status_says_when_nothing_is_installed(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim.real_asterisk",
            "--cache",
            str(tmp_path / "cache"),
            "--run-root",
            str(tmp_path / "runs"),
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "not installed" in done.stdout and "no real Asterisk running" in done.stdout
