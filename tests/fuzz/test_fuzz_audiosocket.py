"""AudioSocket frames: the sans-I/O parser on any byte stream, and the real server over TCP.

Allowed outcomes: the parser returns whole frames (kind known, payload within the limit, nothing lost or
invented) or raises ProtocolError; the server answers a connection by binding it, refusing it (0xFF) or
closing it, and is left with no link, no task, and still listening."""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media_worker.transport.audiosocket_codec import (
    ERROR_FRAME,
    KNOWN_KINDS,
    MAX_PAYLOAD,
    AudioSocketParser,
    ProtocolError,
    encode,
)
from media_worker.transport.audiosocket_server import CLOSE_LINGER, AudioSocketServer
from tests.fuzz.harness import EXAMPLE_TIMEOUT_S, examples, leftover_tasks, time_bound

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

CALL = uuid.UUID("00000000-0000-4000-8000-000000000001")
KINDS = st.sampled_from(sorted(KNOWN_KINDS | {0x02, 0x04, 0x11, 0x20, 0xFE}))
frames = st.lists(
    st.tuples(KINDS, st.binary(max_size=64)).map(lambda f: encode(*f)) | st.binary(max_size=12), max_size=12
)
# A stream: a UUID frame first (ours, another call's, a short one, or none), then frames and garbage.
streams = st.builds(
    lambda first, rest: first + b"".join(rest),
    st.sampled_from([encode(0x01, CALL.bytes), encode(0x01, uuid.uuid4().bytes), b"", encode(0x01, b"short")]),
    frames,
)


@pytest.mark.surface("audiosocket (parser)")
@settings(max_examples=examples())
@given(stream=streams, cuts=st.lists(st.integers(0, 200), max_size=6))
def test_parser_takes_any_stream(surface, stream, cuts):
    surface.example()
    parser = AudioSocketParser()
    got: list[tuple[int, bytes]] = []
    bounds = sorted(cuts)
    pieces = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    with time_bound():
        try:
            for piece in pieces:
                got += parser.feed(piece)
        except ProtocolError as exc:
            got += exc.frames
            assert str(exc)
        else:
            assert parser.pending < 3 + MAX_PAYLOAD
    # What came out is what was sent, in order: nothing invented, nothing reordered.
    reencoded = b"".join(struct.pack(">BH", k, len(p)) + p for k, p in got)
    assert stream.startswith(reencoded)
    assert all(k in KNOWN_KINDS and len(p) <= MAX_PAYLOAD for k, p in got)


class Sink:
    def __init__(self):
        self.hangups: list[str] = []

    def on_audio(self, payload: bytes) -> None:
        assert not self.hangups, "audio after the hangup"

    def on_dtmf(self, digit: str) -> None:
        assert len(digit) == 1

    def on_hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def on_format(self, fmt: str) -> None:
        pass


@pytest.fixture
def server(loop):
    sinks: list[Sink] = []

    def bind(call_uuid, peer_host, link):
        if call_uuid != str(CALL):
            return None  # not a call of this worker: refused
        link.expect("slin16")
        sinks.append(Sink())
        return sinks[-1]

    srv = AudioSocketServer("127.0.0.1", 0, bind=bind, uuid_timeout=1.0)
    loop.run_until_complete(srv.start())
    yield srv, sinks
    loop.run_until_complete(srv.stop())
    loop.run_until_complete(asyncio.sleep(CLOSE_LINGER + 0.2))  # closed links live until their linger timer


@pytest.mark.surface("audiosocket (TCP server)")
@settings(max_examples=examples(0.2))  # a connection per input: 2,000 in the fuzz tier
@given(stream=streams, ending=st.sampled_from(["hangup", "eof", "reset"]))
def test_server_survives_any_connection(surface, loop, server, stream, ending):
    """One connection per input: the stream, then Asterisk's hangup frame, a half-close or a reset. The server
    closes the connection (having sent nothing, a hangup or an error frame) and forgets it."""
    srv, sinks = server
    surface.example()
    before = set(asyncio.all_tasks(loop))

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        answer = b""
        try:
            writer.write(stream)
            if ending == "reset":
                writer.transport.abort()
            else:
                if ending == "hangup":
                    writer.write(encode(0x00))
                writer.write_eof()  # a desynchronised stream may hide the hangup frame: EOF ends it anyway
                async with asyncio.timeout(EXAMPLE_TIMEOUT_S):
                    answer = await reader.read()  # until the server closes
        finally:
            writer.close()
        async with asyncio.timeout(EXAMPLE_TIMEOUT_S):
            while srv.connections:  # the server forgets the link once the close is done on its side
                await asyncio.sleep(0.001)
        return answer

    answer = loop.run_until_complete(one())
    assert answer in (b"", ERROR_FRAME), answer[:16]
    assert not leftover_tasks(loop, before)
    assert all(len(s.hangups) <= 1 for s in sinks), [s.hangups for s in sinks]
    sinks.clear()
