"""WebSocket media frames: chan_websocket's control messages (websocket_codec), and the link's receive path
(WebSocketMediaLink.data_received: the HTTP upgrade answer, then any frames: TEXT, BINARY, CLOSE, PING, or
bytes that are no frame at all).

Allowed outcomes: parse_event returns an event or raises ControlError; ControlState keeps its bounds; the link
never raises, tells its sink of the end at most once, and delivers audio only once MEDIA_START bound it."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.utils import accept_key

from media_worker.transport import websocket_codec as wc
from media_worker.transport.websocket_media import WebSocketMediaLink
from tests.fuzz.harness import deep_json, examples, garbled, json_values, leftover_tasks, mutated, time_bound

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

NAMES = [*sorted(wc._EVENTS), "MEDIA_FOO", "media_start", "", "MEDIA START"]
KEYS = ["connection_id", "channel", "channel_id", "format", "optimal_frame_size", "ptime", "queue_length",
        "queue_full", "digit", "error_text", "correlation_id", "event"]  # fmt: skip
VALID_JSON = {
    "event": "MEDIA_START",
    "connection_id": "c1",
    "channel": "WebSocket/c1",
    "channel_id": "ch1",
    "format": "ulaw",
    "optimal_frame_size": 160,
    "ptime": 20,
    "channel_variables": {"A": "1"},
}


@st.composite
def plain_messages(draw: st.DrawFn) -> str:
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(KEYS) | st.text(max_size=6), st.text(max_size=8) | st.integers().map(str)),
            max_size=5,
        )
    )
    return " ".join([draw(st.sampled_from(NAMES)), *(f"{k}:{v}" for k, v in pairs)])


def _json_text(value) -> str:
    return json.dumps(value)


control_messages = st.one_of(
    plain_messages(),
    st.text(max_size=40),
    mutated(VALID_JSON, KEYS).map(_json_text),
    st.builds(
        lambda name, v: _json_text({"event": name, **v}),
        st.sampled_from(NAMES),
        st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
    ),  # fmt: skip
    st.sampled_from([deep_json(5000).decode(), '{"event":"STATUS","x":' + deep_json(5000).decode() + "}"]),
)
control_bytes = control_messages.map(str.encode) | st.binary(max_size=40)


@pytest.mark.surface("websocket (control messages)")
@settings(max_examples=examples())
@given(messages=st.lists(control_messages | control_bytes, min_size=1, max_size=6), flushes=st.integers(0, 20))
def test_control_state_reads_any_message(surface, messages, flushes):
    surface.example()
    state = wc.ControlState(max_pending=4)
    for _ in range(flushes):
        state.flush()
    with time_bound():
        for text in messages:
            try:
                event = state.receive(text)
            except wc.ControlError as exc:
                assert str(exc)
                continue
            assert isinstance(event, wc.Event.__args__)
    assert len(state._status_waiters) <= state.max_pending
    assert isinstance(state.frame_size, int) and isinstance(state.format, str)


# --- the link: a real WebSocketMediaLink over an in-memory transport ------------------------------------------


class Transport(asyncio.Transport):
    """What the link writes goes to `written`; closing is recorded."""

    def __init__(self):
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.written += data

    def writelines(self, lines) -> None:
        for line in lines:
            self.written += line

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 8088) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Sink:
    def __init__(self):
        self.hangups: list[str] = []
        self.audio = 0

    def on_audio(self, payload: bytes) -> None:
        assert not self.hangups
        self.audio += 1

    def on_dtmf(self, digit: str) -> None:
        assert len(digit) == 1

    def on_hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def on_format(self, fmt: str) -> None:
        pass


def upgrade(request: bytes, status: str = "101 Switching Protocols", protocol: str = "media") -> bytes:
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request).group(1).decode()
    return (
        f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    ).encode()


START = b"MEDIA_START connection_id:c1 channel:WebSocket/c1 channel_id:ch1 format:ulaw optimal_frame_size:160 ptime:20"


@st.composite
def server_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["text", "start", "binary", "close", "ping", "garbage", "fragment"]))
    if kind == "garbage":
        return draw(st.binary(max_size=20))
    if kind == "start":
        frame = Frame(Opcode.TEXT, START)
    elif kind == "text":
        frame = Frame(Opcode.TEXT, draw(control_bytes))
    elif kind == "binary":
        frame = Frame(Opcode.BINARY, draw(st.binary(max_size=400)))
    elif kind == "close":
        code = draw(st.sampled_from([1000, 1001, 1006, 1009, 1011, 3000, 4999, 999, 5000]))
        data = code.to_bytes(2, "big") + draw(st.binary(max_size=10)) if code != 1006 else b""
        frame = Frame(Opcode.CLOSE, data)
    elif kind == "ping":
        frame = Frame(Opcode.PING, draw(st.binary(max_size=10)))
    else:
        frame = Frame(Opcode.TEXT, b"MEDIA_", fin=False)
    wire = frame.serialize(mask=draw(st.booleans()))  # a masked frame from a server is a protocol error
    return draw(garbled(wire)) if draw(st.integers(0, 9)) == 0 else wire


@pytest.mark.surface("websocket (media link)")
@settings(max_examples=examples())
@given(
    handshake=st.sampled_from(["ok", "ok", "ok", "404 Not Found", "409 Conflict", "101 Switching Protocols/x"]),
    frames=st.lists(server_frames(), max_size=8),
    eof=st.booleans(),
)
def test_link_takes_any_server_frames(surface, loop, handshake, frames, eof):
    surface.example()
    sinks: list[Sink] = []

    def started(link):
        sinks.append(Sink())
        return sinks[-1]

    async def one() -> None:
        link = WebSocketMediaLink("ws://127.0.0.1:8088/media/c1", "ulaw", on_started=started, call_id="c1")
        transport = Transport()
        link.connection_made(transport)
        status, _, protocol = handshake.partition("/")
        link.data_received(upgrade(bytes(transport.written), "101 Switching Protocols" if status == "ok" else status,
                                   protocol or "media"))  # fmt: skip
        for data in frames:
            link.data_received(data)
        if eof:
            link.eof_received()
        link.connection_lost(None)
        await asyncio.sleep(0)

    before = set(asyncio.all_tasks(loop))
    with time_bound():
        loop.run_until_complete(one())
    assert not leftover_tasks(loop, before)
    assert len(sinks) <= 1
    assert all(len(s.hangups) == 1 for s in sinks), [s.hangups for s in sinks]  # connection_lost ends it
