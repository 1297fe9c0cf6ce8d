"""media_worker.event_loop: the worker runs on asyncio's loop or on uvloop; a wrong name or a missing uvloop is
a clear error before anything starts."""

from __future__ import annotations

import asyncio
import sys

import pytest

from shared import event_loop
from shared.config import ConfigError
from shared.config.load import parse_config
from sim.cluster import LocalCluster, http_get
from tests.conftest import TEST_API_KEY


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_runs_on_the_standard_loop():
    assert event_loop.run(loop_module(), "asyncio").startswith("asyncio")


def test_uvloop_runs_on_uvloop():
    pytest.importorskip("uvloop")  # the [uvloop] extra, part of [test]
    assert event_loop.run(loop_module(), "uvloop").startswith("uvloop")


def test_uvloop_not_installed_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it raises ImportError, as when not installed
    with pytest.raises(event_loop.EventLoopUnavailable, match=r"pip install 'asterisk-ai-voice-agent\[uvloop\]'"):
        event_loop.run(loop_module(), "uvloop")


def test_config_takes_asyncio_or_uvloop_only():
    env = {"OPENAI_API_KEY": TEST_API_KEY}
    loaded = parse_config("media_worker:\n  event_loop: uvloop\n", "test.yaml", env)
    assert loaded.config.media_worker.event_loop == "uvloop"
    assert parse_config("company_name: x\n", "test.yaml", env).config.media_worker.event_loop == "asyncio"
    with pytest.raises(ConfigError) as info:
        parse_config("media_worker:\n  event_loop: trio\n", "test.yaml", env)
    assert "line 2: media_worker.event_loop: expected one of 'asyncio', 'uvloop', got 'trio'" in [
        str(p) for p in info.value.problems
    ]


def test_the_health_server_answers_on_uvloop():
    # uvloop's transports are not asyncio.Transport subclasses: the server took them for a wrong type.
    pytest.importorskip("uvloop")
    from shared.http_server import HttpServer, Response

    async def ok() -> Response:
        return Response.text(200, "ok")

    async def fetch() -> int:
        server = HttpServer({"/readyz": ok})
        await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(5):
                status = await reader.readline()
            writer.close()
            return int(status.split()[1])
        finally:
            await server.close()

    assert event_loop.run(fetch(), "uvloop") == 200


def test_uvloop_missing_names_the_setting_that_asked_for_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(event_loop.EventLoopUnavailable, match=r"^--event-loop is uvloop, .* set --event-loop to"):
        event_loop.run(loop_module(), "uvloop", setting="--event-loop")


@pytest.mark.parametrize("kind", ["realtime", "asterisk"])
def test_the_simulators_serve_on_uvloop(tmp_path, kind):
    """The load test's generators on uvloop (`--sim-loop uvloop`): each starts, answers, and stops cleanly."""
    pytest.importorskip("uvloop")
    cluster = LocalCluster(tmp_path / "none.yaml", tmp_path, {})
    sim = cluster.start_sim(kind, "--event-loop", "uvloop")
    try:
        base = sim.url.replace("ws://", "http://").split("/v1/")[0]
        status, _ = http_get(base + ("/v1/models" if kind == "realtime" else "/ari/asterisk/info"))
        assert status not in (0, 500)  # it answers HTTP on its loop (the ARI asks for credentials: 401)
    finally:
        cluster.stop_all()
    assert sim.popen.returncode == 0
