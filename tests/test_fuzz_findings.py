"""Regression tests for what the fuzz suite (tests/fuzz) found: each input is the minimal one hypothesis
shrank a crash to. The fixed ones pass; the ones routed to another area are strict xfails that name the owner
and turn into failures (to be unmarked) once fixed."""

from __future__ import annotations

import pytest
from aiohttp import web

from controller.ari.errors import AriError
from controller.ari.event_types import BadEvent, decode_event
from controller.ari.rest import AriRest
from media_worker.transport import websocket_codec as wc

DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than any recursive parser's stack


def test_a_deeply_nested_websocket_control_message_is_a_control_error():
    with pytest.raises(wc.ControlError, match="nested too deeply"):
        wc.parse_event(b'{"event":"STATUS","x":' + DEEP + b"}")


def test_a_deeply_nested_ari_event_is_a_bad_event():
    event = decode_event(b'{"type":"ChannelUserevent","userevent":' + DEEP + b"}")
    assert isinstance(event, BadEvent) and event.reason == "nested too deeply"
    event = decode_event(b'{"type":"StasisStart","channel":{"id":"c","x":' + DEEP + b"}}")
    assert isinstance(event, BadEvent) and event.reason == "nested too deeply"


async def test_a_deeply_nested_ari_answer_is_an_ari_error():
    """An error answer (400) and a 2xx answer whose body is nested too deeply: AriError both, not RecursionError."""

    async def answer(request: web.Request) -> web.Response:
        status = 400 if request.path.endswith("/answer") else 200
        return web.Response(status=status, body=b'{"message":' + DEEP + b"}", content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with AriRest(f"http://127.0.0.1:{port}", "asterisk", "pw", timeout=5) as ari:
            with pytest.raises(AriError) as raised:
                await ari.answer("c1")
            assert raised.value.status == 400
            with pytest.raises(AriError, match="nested too deeply"):
                await ari.info()
    finally:
        await runner.cleanup()
