"""`voice-agent healthcheck URL` (the containers' healthcheck) against a real health server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import health
from voice_agent.cli import main
from tests.conftest import ROOT


@pytest.fixture
def server():
    """The roles' real endpoints on a free loopback port, with a readiness check the test can fail."""
    state: dict = {"redis": None}
    srv = health.ThreadedServer(
        health.make_server("controller", "controller-test", {"redis": lambda: state["redis"]}), "127.0.0.1", 0
    )
    srv.start()
    yield srv, state
    srv.stop()  # a second stop (after the test's own) does nothing


def test_ready_is_exit_0_and_not_ready_says_which_check_fails(server, capsys):
    srv, state = server
    url = f"http://127.0.0.1:{srv.port}/readyz"
    assert main(["healthcheck", url]) == 0
    assert capsys.readouterr().err == ""

    state["redis"] = "Redis is unreachable"
    assert main(["healthcheck", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert "HTTP 503" in err and "Redis is unreachable" in err


def test_unknown_path_and_stopped_server_are_exit_1(server, capsys):
    srv, state = server
    assert main(["healthcheck", f"http://127.0.0.1:{srv.port}/nope"]) == 1
    assert "HTTP 404" in capsys.readouterr().err

    port = srv.port
    srv.stop()
    assert main(["healthcheck", f"http://127.0.0.1:{port}/readyz"]) == 1
    assert "refused" in capsys.readouterr().err.lower()


def test_the_installed_command_returns_the_exit_code(server):
    srv, state = server
    url = f"http://127.0.0.1:{srv.port}/readyz"
    # A proxy in the environment is ignored (it would refuse the connection).
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    run = [str(Path(sys.executable).with_name("voice-agent")), "healthcheck", url]  # what the container runs
    assert subprocess.run(run, cwd=ROOT, env=env, capture_output=True, timeout=30).returncode == 0
    state["redis"] = "Redis is unreachable"
    res = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "HTTP 503" in res.stderr
