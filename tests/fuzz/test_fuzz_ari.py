"""ARI: events from the events WebSocket (event_types.decode_event, then the dispatcher's key and type), and
REST answers (AriRest against a raw loopback HTTP server that answers each request with a fuzzed response:
status line, headers, body).

Allowed outcomes: decode_event returns an event (a BadEvent for what is not one) and never raises; a REST
call returns its declared type or raises AriError (AriUnavailable for no usable answer), within its timeout."""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.ari.errors import AriError
from controller.ari.event_types import KNOWN_TYPES, BadEvent, OtherEvent, decode_event, default_key, event_type
from controller.ari.resources import AsteriskInfo, Bridge, Channel, Module, Playback
from controller.ari.rest import AriRest
from tests.fuzz.harness import EXAMPLE_TIMEOUT_S, deep_json, examples, garbled, json_values, leftover_tasks, mutated
from tests.fuzz.harness import time_bound

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "ari-traces"


def _golden() -> tuple[list[dict], list[tuple[int, object]]]:
    events: list[dict] = []
    answers: list[tuple[int, object]] = []
    for path in sorted(TRACES.glob("*.json")):
        for step in json.loads(path.read_text())["steps"]:
            if step["dir"] == "event":
                events.append(step["event"])
            elif step["dir"] == "rest":
                answers.append((step["status"], step["response"]))
    return events, answers


EVENTS, ANSWERS = _golden()
EVENT_KEYS = sorted({key for event in EVENTS for key in event} | {"channel", "peer", "bridge", "playback", "id"})

event_messages = st.one_of(
    st.sampled_from(EVENTS).flatmap(lambda e: mutated(e, EVENT_KEYS)).map(json.dumps).map(str.encode),
    st.sampled_from(EVENTS).map(json.dumps).map(str.encode).flatmap(garbled),
    st.builds(
        lambda t, v: json.dumps({"type": t, **v}).encode(),
        st.sampled_from(sorted(KNOWN_TYPES)) | st.text(max_size=8),
        st.dictionaries(st.sampled_from(EVENT_KEYS), json_values, max_size=4),
    ),  # fmt: skip
    st.binary(max_size=60),
    st.just(b'{"type":"StasisStart","channel":{"id":"c","x":' + deep_json(5000) + b"}}"),
    st.just(b'{"type":"ChannelUserevent","userevent":' + deep_json(5000) + b"}"),
)


@pytest.mark.surface("ari (events)")
@settings(max_examples=examples())
@given(message=event_messages, as_text=st.booleans())
def test_any_event_message_decodes(surface, message, as_text):
    surface.example()
    data: bytes | str = message.decode("utf-8", "replace") if as_text else message
    with time_bound():
        event = decode_event(data)
        kind = event_type(event)  # what the dispatcher does with every event before queueing it
        key = default_key(event) if not isinstance(event, BadEvent) else ""
    assert isinstance(kind, str) and isinstance(key, str)
    if isinstance(event, BadEvent):
        assert event.reason
    elif not isinstance(event, OtherEvent):
        assert kind in KNOWN_TYPES


# --- REST: a raw HTTP server answering each request with what the input says -----------------------------


class RawHttp:
    """Reads one request per connection (headers and Content-Length body), writes `answer`, closes."""

    def __init__(self):
        self.answer = b""
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


STATUSES = st.sampled_from([200, 201, 204, 400, 401, 404, 409, 422, 500, 501, 503, 301, 302, 304, 100, 101, 199, 299,
                            599, 600, 999]) | st.integers(0, 1200)  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/html", "text/plain", "application/json; charset=latin-1", "", "x/y; a"]
)
bodies = st.one_of(
    st.sampled_from(ANSWERS).map(lambda a: json.dumps(a[1]).encode()),
    st.sampled_from([a for a in ANSWERS if a[1] is not None])
    .flatmap(lambda a: mutated(a[1]))
    .map(json.dumps)
    .map(str.encode),  # fmt: skip
    json_values.map(json.dumps).map(str.encode),
    st.sampled_from([b'{"message":"Channel not found"}', b'{"message": 5}', b"", b"null", b"[]", b"<html>x</html>"]),
    st.just(deep_json(5000)),
    st.just(b'{"message":' + deep_json(5000) + b"}"),
    st.binary(max_size=60),
)


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    status = draw(STATUSES)
    body = draw(bodies)
    headers = [f"Content-Type: {draw(CONTENT_TYPES)}".encode(), b"Connection: close"]
    framing = draw(st.sampled_from(["length", "length", "none", "short", "long", "bad", "chunked", "gzip", "deflate"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % max(len(body) - 3, 0))
    elif framing == "long":
        headers.append(b"Content-Length: %d" % (len(body) + 10))  # the server closes first
    elif framing == "bad":
        headers.append(draw(st.sampled_from([b"Content-Length: -1", b"Content-Length: x", b"Content-Length: 1, 2"])))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = draw(st.sampled_from([b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", b"zz\r\n" + body]))
    elif framing in ("gzip", "deflate"):
        headers.append(b"Content-Encoding: " + framing.encode())
        body = draw(st.sampled_from([zlib.compress(body), body]))  # the second is not compressed at all
        headers.append(b"Content-Length: %d" % len(body))
    reason = draw(st.sampled_from([b"OK", b"", b"Whatever \xff"]))
    answer = b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"\r\n".join(headers) + b"\r\n\r\n" + body
    return draw(garbled(answer)) if draw(st.integers(0, 9)) == 0 else answer


# Each REST method the controller uses that reads an answer, with what it must return.
CALLS = {
    "get_channel": (lambda ari: ari.get_channel("c1"), (Channel, type(None))),
    "list_channels": (lambda ari: ari.list_channels(), list),
    "list_bridges": (lambda ari: ari.list_bridges(), list),
    "hangup": (lambda ari: ari.hangup("c1"), bool),
    "get_variable": (lambda ari: ari.get_variable("c1", "AI_CONTEXT"), (str, type(None))),
    "info": (lambda ari: ari.info(), AsteriskInfo),
    "module": (lambda ari: ari.module("chan_websocket.so"), (Module, type(None))),
    "play": (lambda ari: ari.play("c1", "sound:beep"), Playback),
    "create_bridge": (lambda ari: ari.create_bridge("b1"), Bridge),
    "answer": (lambda ari: ari.answer("c1"), type(None)),
    "external_media": (
        lambda ari: ari.external_media(app="a", channel_id="m1", external_host="127.0.0.1:1", format="ulaw"),
        Channel,
    ),
}


@pytest.fixture
def ari(loop):
    server = RawHttp()
    port = loop.run_until_complete(server.start())
    client = AriRest(f"http://127.0.0.1:{port}", "asterisk", "secret", timeout=1.0)
    yield client, server
    loop.run_until_complete(client.close())
    loop.run_until_complete(server.stop())


@pytest.mark.surface("ari (REST answers)")
@settings(max_examples=examples(0.5))  # a connection per input: 5,000 in the fuzz tier
@given(method=st.sampled_from(sorted(CALLS)), answer=answers())
def test_any_rest_answer_is_a_value_or_an_ari_error(surface, loop, ari, method, answer):
    client, server = ari
    surface.example()
    server.answer = answer
    call, returns = CALLS[method]
    before = set(asyncio.all_tasks(loop))

    async def one():
        async with asyncio.timeout(EXAMPLE_TIMEOUT_S):
            try:
                return await call(client)
            except AriError as exc:
                assert "secret" not in str(exc)
                return exc

    result = loop.run_until_complete(one())
    assert isinstance(result, AriError) or isinstance(result, returns), (type(result), result)
    if isinstance(result, list):
        assert all(isinstance(item, (Channel, Bridge)) for item in result)
    loop.run_until_complete(asyncio.sleep(0))
    assert not leftover_tasks(loop, before)
