"""Media worker transports: AudioSocket and RTP codecs on plain bytes, the server and endpoint on loopback sockets.

The raw clients here play Asterisk by writing the bytes chan_audiosocket / chan_rtp write (as recorded from
Asterisk 22.10.1 in tests/fixtures/ari-traces 01 and 03); the last tests drive the product with the simulator's legs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import tracemalloc
import uuid

import pytest

from media_worker.transport import audiosocket_codec as codec
from media_worker.transport import rtp_codec
from media_worker.transport.allowlist import HostAllowList, resolve_allow_list
from media_worker.transport.audiosocket_server import AudioSocketServer
from media_worker.transport.rtp_endpoint import RtpEndpoint

pytestmark = pytest.mark.timeout(10)
CALL_UUID = "3f2a6c1e-8b4d-4e7a-9c1f-0d2b5e6a7c81"
UUID_FRAME = bytes.fromhex("010010") + uuid.UUID(CALL_UUID).bytes  # what Asterisk sends first (trace 03)


def frame(kind: int, payload: bytes = b"") -> bytes:
    """The test's own encoder, written from the spec, so the codec is not checked against itself."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


async def until(predicate, timeout: float = 2.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.005)


# ================================================================ AudioSocket codec (plain bytes)


def test_encode_is_kind_length_payload():
    assert codec.encode(codec.KIND_SLIN24, b"\x01\x02" * 480) == b"\x13\x03\xc0" + b"\x01\x02" * 480
    assert codec.encode(codec.KIND_HANGUP) == codec.HANGUP_FRAME == b"\x00\x00\x00"
    assert codec.ERROR_FRAME == b"\xff\x00\x00"
    assert codec.FORMAT_BY_KIND == {0x10: "slin", 0x12: "slin16", 0x13: "slin24"}
    with pytest.raises(struct.error):
        codec.encode(0x10, bytes(65536))


def test_parser_reassembles_a_stream_split_byte_by_byte():
    audio = bytes(range(256)) * 3 + b"\x07" * 192
    wire = UUID_FRAME + frame(0x13, audio) + frame(0x03, b"1") + frame(0x03, b"#") + frame(0x00)
    parser = codec.AudioSocketParser()
    got = [f for i in range(len(wire)) for f in parser.feed(wire[i : i + 1])]
    assert got == [(0x01, uuid.UUID(CALL_UUID).bytes), (0x13, audio), (0x03, b"1"), (0x03, b"#"), (0x00, b"")]
    assert parser.pending == 0


def test_parser_splits_merged_frames_and_keeps_the_partial_tail():
    parser = codec.AudioSocketParser()
    wire = frame(0x10, b"\x01\x02" * 160) + frame(0x03, b"#") + frame(0x10, bytes(320))
    assert parser.feed(wire[:-100]) == [(0x10, b"\x01\x02" * 160), (0x03, b"#")]
    assert parser.pending == 3 + 220
    assert parser.feed(wire[-100:-1]) == []
    assert parser.feed(wire[-1:]) == [(0x10, bytes(320))]
    assert parser.pending == 0
    assert parser.feed(b"\x00\x00\x00") == [(0x00, b"")]  # the 3-byte hangup


def test_oversize_length_is_refused_on_its_header_alone():
    parser = codec.AudioSocketParser(max_payload=1000)
    assert parser.feed(frame(0x13, bytes(1000))) == [(0x13, bytes(1000))]
    with pytest.raises(codec.ProtocolError, match="1001"):
        parser.feed(b"\x13\x03\xe9")  # no payload sent yet: nothing is buffered for it
    with pytest.raises(codec.ProtocolError):
        codec.AudioSocketParser().feed(struct.pack(">BH", 0x10, 8193))  # default limit 8 KiB


@pytest.mark.parametrize("kind", [0x02, 0x04, 0x0F, 0x19, 0x42, 0xFE])
def test_unknown_kinds_are_protocol_errors(kind):
    with pytest.raises(codec.ProtocolError, match=f"0x{kind:02x}"):
        codec.AudioSocketParser().feed(UUID_FRAME + bytes([kind, 0, 0]))


def test_other_slin_kinds_are_known_wire():
    # 0x11 slin12 .. 0x18 slin192 parse (the server refuses them with a precise error, not "garbage")
    assert codec.AudioSocketParser().feed(frame(0x11, bytes(480)) + frame(0x18, bytes(20))) == [
        (0x11, bytes(480)),
        (0x18, bytes(20)),
    ]


def test_garbage_keeps_memory_bounded():
    parser = codec.AudioSocketParser()
    with pytest.raises(codec.ProtocolError):
        for _ in range(1000):
            parser.feed(b"\x10\xff")  # a valid kind, then 0xff10 = 65296 declared bytes
    assert parser.pending < 3


# ================================================================ AudioSocket server (loopback TCP)


class Sink:
    def __init__(self, link=None):
        self.link = link
        self.audio: list[bytes] = []
        self.dtmf: list[str] = []
        self.hangups: list[str] = []
        self.formats: list[str] = []

    def on_audio(self, payload: bytes) -> None:
        self.audio.append(payload)

    def on_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)

    def on_hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def on_format(self, fmt: str) -> None:
        self.formats.append(fmt)


class Calls:
    """The call table bind() consults: known UUIDs get a sink; each bind call is recorded."""

    def __init__(self, expect: str | None = "slin24"):
        self.expect = expect
        self.known = {CALL_UUID}
        self.binds: list[tuple[str, str, object]] = []
        self.sinks: dict[str, Sink] = {}

    def bind(self, call_uuid: str, peer_host: str, link):
        self.binds.append((call_uuid, peer_host, link))
        if call_uuid not in self.known:
            return None
        if self.expect:
            link.expect(self.expect)
        sink = self.sinks[call_uuid] = Sink(link)
        return sink


@pytest.fixture
async def calls():
    return Calls()


@pytest.fixture
async def server(calls):
    srv = AudioSocketServer("127.0.0.1", 0, bind=calls.bind, uuid_timeout=0.3)
    await srv.start()
    yield srv
    await srv.stop()


async def asterisk(server, local_host: str | None = None, rcvbuf: int | None = None):
    """A raw TCP client where Asterisk would be (chan_audiosocket connects to the worker)."""
    if rcvbuf is None and local_host is None:
        return await asyncio.open_connection("127.0.0.1", server.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: it sets the window
    sock.bind((local_host or "127.0.0.1", 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    return await asyncio.open_connection(sock=sock)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = struct.unpack(">BH", await asyncio.wait_for(reader.readexactly(3), 2))
    return kind, await asyncio.wait_for(reader.readexactly(length), 2)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except ConnectionResetError:
        return True


async def bound(server, calls, **kwargs):
    reader, writer = await asterisk(server, **kwargs)
    writer.write(UUID_FRAME)
    await until(lambda: CALL_UUID in calls.sinks)
    return reader, writer, calls.sinks[CALL_UUID]


async def test_a_call_as_asterisk_plays_it(server, calls):
    reader, writer = await asterisk(server)
    await until(lambda: server.connections == 1)
    writer.write(UUID_FRAME)
    await until(lambda: calls.binds)
    ((call_uuid, peer_host, link),) = calls.binds
    sink = calls.sinks[CALL_UUID]
    assert (call_uuid, peer_host) == (CALL_UUID, "127.0.0.1")
    assert link.peer == f"127.0.0.1:{writer.get_extra_info('sockname')[1]}" and link.call_uuid == CALL_UUID
    assert (link.transport, link.format, link.rate, link.frame_bytes) == ("audiosocket", "slin24", 24000, 960)
    frames = [bytes([i]) * 960 for i in range(6)]
    wire = b"".join(frame(0x13, f) for f in frames[:3])
    writer.write(wire)  # three frames in one segment
    writer.write(frame(0x13, frames[3])[:500])  # one split across segments
    await writer.drain()
    await asyncio.sleep(0.02)
    writer.write(frame(0x13, frames[3])[500:] + frame(0x03, b"1") + frame(0x13, frames[4]) + frame(0x03, b"#"))
    writer.write(frame(0x13, frames[5][:72]))  # the short tail of a played file (trace 03)
    writer.write(frame(0x00))
    assert await at_eof(reader)  # Asterisk's 0x00: we close, no CLOSE-WAIT left
    await until(lambda: server.connections == 0)
    assert sink.audio == frames[:5] + [frames[5][:72]]
    assert sink.dtmf == ["1", "#"] and sink.hangups == ["hangup"]
    assert link.stats.frames_in == 6 and link.stats.dtmf_in == 2 and link.stats.bad_in == 0
    assert link.stats.bytes_in == len(UUID_FRAME) + 5 * 963 + 75 + 2 * 4 + 3
    assert link.send(bytes(960)) is False and link.stats.dropped_out == 1
    writer.close()


async def test_reading_frames_allocates_no_large_buffer(server, calls):
    """Each read goes into the link's own buffer. A plain asyncio.Protocol gets a 256 KiB bytes object per read,
    shrunk to the ~1 KB received: at 50 reads a second per call glibc's heap grew by ~1 MB/s at 60 calls (the soak)."""
    reader, writer, sink = await bound(server, calls)
    frames = [bytes([i]) * 960 for i in range(20)]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for i, payload in enumerate(frames):  # one read per frame, as Asterisk paces them
            writer.write(frame(0x13, payload))
            await until(lambda i=i: len(sink.audio) > i)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} B traced at the peak: a read allocated a large buffer"
    assert sink.audio == frames and all(type(a) is bytes for a in sink.audio)  # copies, not views of the buffer
    writer.close()


async def test_the_first_audio_kind_sets_the_format(server, calls):
    calls.expect = "slin16"  # the controller asked for slin16 but Asterisk sends slin24
    reader, writer, sink = await bound(server, calls)
    link = sink.link
    assert (link.format, link.frame_bytes) == ("slin16", 640)
    assert link.send(bytes(640)) and await read_frame(reader) == (0x12, bytes(640))
    writer.write(frame(0x13, bytes(960)))
    await until(lambda: sink.audio)
    assert (link.format, link.rate, link.frame_bytes, sink.formats) == ("slin24", 24000, 960, ["slin24"])
    assert link.send(bytes(960)) and await read_frame(reader) == (0x13, bytes(960))
    writer.write(frame(0x12, bytes(640)))  # a later frame of another kind
    assert await read_frame(reader) == (0xFF, b"")
    assert await at_eof(reader)
    await until(lambda: sink.hangups)
    assert sink.hangups == ["error"] and len(sink.audio) == 1 and link.stats.bad_in == 1


async def test_without_expect_the_link_waits_for_audio_to_send(server, calls):
    calls.expect = None
    reader, writer, sink = await bound(server, calls)
    link = sink.link
    assert link.format == "" and link.send(bytes(320)) is False and link.stats.dropped_out == 1
    writer.write(frame(0x10, bytes(320)))
    await until(lambda: sink.audio)
    assert (link.format, link.frame_bytes, sink.formats) == ("slin", 320, [])
    assert link.send(b"\x01" * 320) and await read_frame(reader) == (0x10, b"\x01" * 320)
    with pytest.raises(ValueError):
        link.expect("slin12")
    writer.close()


async def test_an_unknown_uuid_gets_0xff_and_is_closed(server, calls):
    calls.known = set()
    reader, writer = await asterisk(server)
    writer.write(UUID_FRAME + frame(0x13, bytes(960)))
    assert await read_frame(reader) == (0xFF, b"")
    assert await at_eof(reader)
    assert [b[:2] for b in calls.binds] == [(CALL_UUID, "127.0.0.1")] and server.refused == 1
    await until(lambda: server.connections == 0)


async def test_no_uuid_within_the_timeout_is_closed(server, calls):
    reader, writer = await asterisk(server)
    t0 = asyncio.get_running_loop().time()
    assert await at_eof(reader)
    assert 0.25 < asyncio.get_running_loop().time() - t0 < 1.5  # uuid_timeout=0.3
    assert calls.binds == [] and server.refused == 1 and server.connections == 0


@pytest.mark.parametrize("first", [frame(0x13, bytes(960)), frame(0x01, bytes(15)), b"\x42\x00\x00"])
async def test_anything_but_a_uuid_first_is_refused(server, calls, first):
    reader, writer = await asterisk(server)
    writer.write(first)
    assert await read_frame(reader) == (0xFF, b"")
    assert await at_eof(reader)
    assert calls.binds == [] and server.refused == 1


async def test_refusals_are_counted_by_reason_and_logged_once_per_host(server, calls, caplog):
    """A scan or a flood of unknown calls must not write a WARNING per connection (issue 16)."""
    from shared.metrics import AUDIOSOCKET_REFUSED

    before = AUDIOSOCKET_REFUSED.labels("unknown_call")._value.get()
    stranger = bytes.fromhex("010010") + uuid.UUID(int=7).bytes
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            reader, writer = await asterisk(server)
            writer.write(stranger)
            assert await read_frame(reader) == (0xFF, b"")
            writer.close()
    assert server.refused == 20 and AUDIOSOCKET_REFUSED.labels("unknown_call")._value.get() - before == 20
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "unknown_call" in lines[0], lines


async def test_a_disallowed_source_host_is_closed_before_reading(calls):
    srv = AudioSocketServer("127.0.0.1", 0, bind=calls.bind, allowed_hosts=["127.0.0.1"])
    await srv.start()
    try:
        try:
            reader, writer = await asterisk(srv, local_host="127.0.0.2")
        except OSError as exc:
            pytest.skip(f"cannot bind 127.0.0.2 here: {exc}")
        writer.write(UUID_FRAME)
        assert await at_eof(reader)
        assert calls.binds == [] and srv.refused == 1
        reader, writer, sink = await bound(srv, calls)  # 127.0.0.1 itself is allowed
        assert calls.binds[0][1] == "127.0.0.1"
        writer.close()
    finally:
        await srv.stop()


async def test_allow_list_addresses_networks_and_names():
    assert HostAllowList().allows("203.0.113.9")  # empty = any
    allow = await resolve_allow_list(["10.1.0.0/16", "192.0.2.7", " ", "localhost"])
    assert ipaddress.ip_network("127.0.0.1/32") in allow.networks
    assert allow.allows("10.1.200.3") and allow.allows("192.0.2.7") and allow.allows("127.0.0.1")
    assert allow.allows("::ffff:10.1.0.1")  # an IPv4 peer on a dual-stack socket
    assert not allow.allows("10.2.0.1") and not allow.allows("192.0.2.8") and not allow.allows("not-an-ip")
    with pytest.raises(ValueError, match="no-such-host.invalid"):
        await resolve_allow_list(["no-such-host.invalid"])


async def test_send_writes_whole_frames_in_order(server, calls):
    reader, writer, sink = await bound(server, calls)
    link = sink.link
    frames = [i.to_bytes(2, "little") * 480 for i in range(100)]
    assert all(link.send(f) for f in frames)  # a burst, no await in between
    assert [await read_frame(reader) for _ in frames] == [(0x13, f) for f in frames]
    assert (link.stats.frames_out, link.stats.bytes_out, link.stats.dropped_out) == (100, 100 * 963, 0)
    sock = link._raw_transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    writer.close()


async def test_a_peer_that_stops_reading_gets_drops_not_memory(server, calls):
    reader, writer, sink = await bound(server, calls, rcvbuf=4096)
    link = sink.link
    frame_payload = bytes(960)
    sent = 0
    for _ in range(100_000):  # the kernel buffers fill first, then asyncio's, up to the bound
        if not link.send(frame_payload):
            break
        sent += 1
    else:
        pytest.fail("send never reported the stuck peer")
    buffered = link._raw_transport.get_write_buffer_size()
    assert link.max_write_buffer < buffered <= link.max_write_buffer + 963
    assert all(not link.send(frame_payload) for _ in range(1000))
    assert link._raw_transport.get_write_buffer_size() == buffered  # memory stays where it was
    assert link.stats.dropped_out == 1001 and link.stats.frames_out == sent
    # The peer reads again: what was accepted arrives whole and in order, then sending resumes.
    got = [await read_frame(reader) for _ in range(sent)]
    assert {(k, len(p)) for k, p in got} == {(0x13, 960)}
    await until(lambda: link._raw_transport.get_write_buffer_size() == 0)
    assert link.send(frame_payload)
    writer.close()


async def test_eof_is_closed_exactly_once(server, calls):
    reader, writer, sink = await bound(server, calls)
    writer.write(frame(0x13, bytes(960)))
    writer.write_eof()
    assert await at_eof(reader)  # our side closes too
    await until(lambda: server.connections == 0)
    await asyncio.sleep(0.05)
    assert sink.hangups == ["closed"] and len(sink.audio) == 1
    sink.link.close()
    assert sink.hangups == ["closed"]
    writer.close()


async def test_a_reset_is_closed(server, calls):
    reader, writer, sink = await bound(server, calls)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await until(lambda: sink.hangups)
    assert sink.hangups == ["closed"] and server.connections == 0


@pytest.mark.parametrize(
    "bad", [b"\x42\x00\x01\x00", b"\x13\x40\x00", frame(0x11, bytes(480)), frame(0x01, uuid.UUID(CALL_UUID).bytes)]
)
async def test_a_malformed_frame_is_error(server, calls, bad):
    reader, writer, sink = await bound(server, calls)
    writer.write(frame(0x13, bytes(960)) + bad + frame(0x13, bytes(960)))
    assert await read_frame(reader) == (0xFF, b"")
    assert await at_eof(reader)
    await until(lambda: sink.hangups)
    assert sink.hangups == ["error"] and len(sink.audio) == 1 and sink.link.stats.bad_in == 1


async def test_an_error_frame_from_asterisk_is_error(server, calls):
    reader, writer, sink = await bound(server, calls)
    writer.write(frame(0xFF, b"\x02"))
    assert await at_eof(reader)
    await until(lambda: sink.hangups)
    assert sink.hangups == ["error"]


async def test_close_sends_hangup_and_no_callback_follows(server, calls):
    reader, writer, sink = await bound(server, calls)
    link = sink.link
    assert link.send(bytes(960))
    link.close()
    assert await read_frame(reader) == (0x13, bytes(960))  # what was written still goes out, then 0x00
    assert await read_frame(reader) == (0x00, b"")
    assert await at_eof(reader)
    await until(lambda: server.connections == 0)
    assert sink.hangups == [] and link.send(bytes(960)) is False


async def test_close_without_hangup_just_closes(server, calls):
    reader, writer, sink = await bound(server, calls)
    sink.link.close(hangup=False)
    assert await at_eof(reader)
    assert sink.hangups == []


async def test_a_sink_closing_the_link_stops_delivery(server, calls):
    reader, writer, sink = await bound(server, calls)

    def on_audio(payload: bytes) -> None:
        sink.audio.append(payload)
        sink.link.close()

    sink.on_audio = on_audio
    writer.write(b"".join(frame(0x13, bytes([i]) * 960) for i in range(5)) + frame(0x03, b"5"))
    assert await read_frame(reader) == (0x00, b"")
    assert len(sink.audio) == 1 and sink.dtmf == [] and sink.hangups == []


async def test_stop_ends_every_link_with_stopped(calls):
    srv = AudioSocketServer("127.0.0.1", 0, bind=calls.bind)
    await srv.start()
    port = srv.port
    reader, writer, sink = await bound(srv, calls)
    idle_reader, idle_writer = await asterisk(srv)  # connected, no UUID yet
    await until(lambda: srv.connections == 2)
    await srv.stop()
    assert sink.hangups == ["stopped"] and srv.connections == 0
    assert await read_frame(reader) == (0x00, b"") and await at_eof(reader)
    assert await read_frame(idle_reader) == (0x00, b"") and await at_eof(idle_reader)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_busy_port_is_named():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await AudioSocketServer("127.0.0.1", port, bind=lambda *a: None).start()
    finally:
        holder.close()


async def test_many_calls_at_once(server, calls):
    uuids = [str(uuid.uuid4()) for _ in range(50)]
    calls.known.update(uuids)
    peers = [await asterisk(server) for _ in uuids]
    for (_, writer), u in zip(peers, uuids, strict=True):
        writer.write(frame(0x01, uuid.UUID(u).bytes) + frame(0x13, u.encode().ljust(960, b"\0")))
    await until(lambda: all(calls.sinks.get(u) and calls.sinks[u].audio for u in uuids))
    assert all(calls.sinks[u].audio == [u.encode().ljust(960, b"\0")] for u in uuids)
    assert server.connections == 50
    for _, writer in peers:
        writer.close()
    await until(lambda: server.connections == 0)
    assert all(calls.sinks[u].hangups == ["closed"] for u in uuids)


# ================================================================ RTP codec (plain bytes)


def test_sender_header_fields_and_arithmetic():
    sender = rtp_codec.RtpSender(rtp_codec.PT_ULAW, 160, ssrc=0xDEADBEEF, seq=0xFFFE, ts=0xFFFFFF00)
    first = sender.packet(b"\x7f" * 160)
    assert first == struct.pack(">BBHII", 0x80, 0, 0xFFFE, 0xFFFFFF00, 0xDEADBEEF) + b"\x7f" * 160
    packets = [rtp_codec.parse(sender.packet(b"\xff" * n)) for n in (160, 160, 12, 160)]
    assert [p.seq for p in packets] == [0xFFFF, 0, 1, 2]  # wraps at 16 bits
    assert [p.ts for p in packets] == [0xFFFFFFA0, 0x40, 0xE0, 0xEC]  # wraps at 32 bits
    assert all(p.marker is False and p.pt == 0 and p.ssrc == 0xDEADBEEF for p in packets)
    slin = rtp_codec.RtpSender(rtp_codec.PT_SLIN, 160, ssrc=1, seq=7, ts=0)
    assert slin.frame_bytes == 320 and sender.frame_bytes == 160
    slin.packet(bytes(320))
    assert (slin.seq, slin.ts) == (8, 160)  # ts counts samples: 2 bytes each for slin
    with pytest.raises(ValueError):
        rtp_codec.RtpSender(128, 160)


def test_sender_defaults_are_random():
    a, b = rtp_codec.RtpSender(0, 160), rtp_codec.RtpSender(0, 160)
    assert (a.ssrc, a.seq, a.ts) != (b.ssrc, b.seq, b.ts)


def test_parse_an_asterisk_packet():
    # as in trace 01: V=2, PT 0, marker clear, the first timestamp one frame
    wire = bytes.fromhex("80001a2b000000a0cafe0001") + b"\x55" * 160
    assert rtp_codec.parse(wire) == rtp_codec.RtpPacket(0, 0x1A2B, 160, 0xCAFE0001, False, b"\x55" * 160)


def test_parse_skips_csrcs_extension_and_padding():
    csrcs = struct.pack(">II", 11, 22)
    ext = struct.pack(">HH", 0xBEDE, 2) + bytes(8)
    wire = (
        struct.pack(">BBHII", 0x80 | 0x20 | 0x10 | 2, 0x80 | 10, 5, 6, 7)
        + csrcs
        + ext
        + b"\x01\x02" * 4
        + b"\x00\x00\x03"
    )
    assert rtp_codec.parse(wire) == rtp_codec.RtpPacket(10, 5, 6, 7, True, b"\x01\x02" * 4)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        bytes(11),  # short
        bytes.fromhex("40000001000000a000000001") + bytes(160),  # version 1
        bytes.fromhex("c0000001000000a000000001") + bytes(160),  # version 3
        bytes.fromhex("83000001000000a000000001") + bytes(8),  # 3 CSRCs announced, 2 present
        bytes.fromhex("90000001000000a000000001") + b"\xbe\xde",  # extension header cut
        bytes.fromhex("90000001000000a000000001") + b"\xbe\xde\x00\x05" + bytes(8),  # extension overruns
        bytes.fromhex("a0000001000000a000000001") + bytes(10) + b"\x00",  # padding count 0
        bytes.fromhex("a0000001000000a000000001") + bytes(4) + b"\x40",  # padding beyond the payload
        bytes.fromhex("80c80006") + bytes(24),  # RTCP sender report
    ],
)
def test_parse_garbage_is_none(wire):
    assert rtp_codec.parse(wire) is None


# ================================================================ RTP endpoint (loopback UDP)


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket where Asterisk's UnicastRTP channel would be."""

    def __init__(self):
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> UdpPeer:
        peer = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: peer, local_addr=(host, 0))
        return peer

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    def send(
        self, endpoint: RtpEndpoint, payload: bytes, *, pt: int = 0, seq: int = 1, ssrc: int = 0x5151, ts: int = 160
    ) -> None:
        self.transport.sendto(
            struct.pack(">BBHII", 0x80, pt, seq, ts, ssrc) + payload, ("127.0.0.1", endpoint.local_port)
        )

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
async def endpoint():
    sinks: list[Sink] = []
    ep = RtpEndpoint(
        "127.0.0.1",
        0,
        "ulaw",
        lambda link: sinks.append(Sink(link)) or sinks[-1],
        allowed_hosts=["127.0.0.1"],
    )
    link = await ep.open()
    assert link is ep and len(sinks) == 1 and sinks[0].link is ep
    ep.test_sink = sinks[0]
    yield ep
    ep.close()


async def test_endpoint_latches_to_the_first_good_source_when_no_address_is_reported(endpoint):
    sink = endpoint.test_sink
    endpoint.peer_unknown()
    assert (endpoint.transport, endpoint.format, endpoint.rate, endpoint.frame_bytes) == ("rtp", "ulaw", 8000, 160)
    assert endpoint.send(b"\xff" * 160) is False and endpoint.stats.dropped_out == 1  # no peer known yet
    asterisk_rtp = await UdpPeer.open()
    for i in range(10):
        asterisk_rtp.send(endpoint, bytes([i]) * 160, seq=100 + i, ts=160 * (i + 1))
    await until(lambda: len(sink.audio) == 10)
    assert sink.audio == [bytes([i]) * 160 for i in range(10)]
    assert endpoint.peer == f"127.0.0.1:{asterisk_rtp.port}" and endpoint.stats.frames_in == 10
    for i in range(5):
        assert endpoint.send(bytes([0x80 + i]) * 160)
    await until(lambda: len(asterisk_rtp.received) == 5)
    packets = [rtp_codec.parse(d) for d in asterisk_rtp.received]
    assert [p.payload for p in packets] == [bytes([0x80 + i]) * 160 for i in range(5)]
    assert {(p.pt, p.ssrc, p.marker) for p in packets} == {(0, endpoint.sender.ssrc, False)}
    assert [(p.seq - packets[0].seq) % 65536 for p in packets] == [0, 1, 2, 3, 4]
    assert [(p.ts - packets[0].ts) % 2**32 for p in packets] == [0, 160, 320, 480, 640]
    assert endpoint.stats.frames_out == 5 and endpoint.stats.bytes_out == 5 * 172
    asterisk_rtp.close()


async def test_endpoint_reads_allocate_no_large_buffer(endpoint):
    """asyncio's default read is a 256 KiB bytes object per datagram, shrunk to the ~200 B received: glibc's heap
    then grew with calls in the soak."""
    sink = endpoint.test_sink
    endpoint.peer_unknown()
    asterisk_rtp = await UdpPeer.open()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for i in range(20):
            asterisk_rtp.send(endpoint, bytes([i]) * 160, seq=100 + i, ts=160 * (i + 1))
            await until(lambda i=i: len(sink.audio) > i)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.audio == [bytes([i]) * 160 for i in range(20)]
    assert peak < 64 * 1024, f"{peak} B traced at the peak: a read allocated a large buffer"
    asterisk_rtp.close()


async def test_endpoint_sends_to_the_address_the_controller_learnt_before_any_packet(endpoint):
    """A silent caller sends no RTP: Asterisk's address from externalMedia lets the greeting out anyway."""
    asterisk_rtp = await UdpPeer.open()
    assert endpoint.set_peer("127.0.0.1", asterisk_rtp.port)
    assert endpoint.send(b"\x11" * 160)
    await until(lambda: len(asterisk_rtp.received) == 1)
    assert rtp_codec.parse(asterisk_rtp.received[0]).payload == b"\x11" * 160
    assert not endpoint.set_peer("127.0.0.1", 9)  # once known, the peer is not moved by another message
    asterisk_rtp.send(endpoint, b"\x01" * 160)  # Asterisk's packets then come from the same address
    await until(lambda: endpoint.test_sink.audio)
    assert endpoint.stats.dropped_source == 0 and endpoint.peer == f"127.0.0.1:{asterisk_rtp.port}"
    asterisk_rtp.close()


async def test_endpoint_refuses_a_peer_outside_the_allow_list(endpoint):
    assert not endpoint.set_peer("127.0.0.2", 4000)
    assert endpoint.latched is None


async def test_endpoint_drops_what_is_not_the_call(endpoint):
    sink = endpoint.test_sink
    endpoint.peer_unknown()
    asterisk_rtp, stranger = await UdpPeer.open(), await UdpPeer.open()
    asterisk_rtp.transport.sendto(b"garbage", ("127.0.0.1", endpoint.local_port))  # shorter than a header
    asterisk_rtp.transport.sendto(b"\x40" * 20, ("127.0.0.1", endpoint.local_port))  # version 1
    asterisk_rtp.send(endpoint, bytes(640), pt=118)  # slin16's dynamic PT: does not latch
    asterisk_rtp.send(endpoint, bytes(160), ssrc=endpoint.sender.ssrc)  # our own audio back
    await until(lambda: endpoint.stats.bad_in + endpoint.stats.dropped_pt + endpoint.stats.dropped_loop == 4)
    assert endpoint.latched is None and sink.audio == []
    asterisk_rtp.send(endpoint, b"\x01" * 160, seq=1)  # latches
    await until(lambda: sink.audio)
    stranger.send(endpoint, b"\x02" * 160, seq=1, ssrc=0x777)  # another port of the same host
    asterisk_rtp.send(endpoint, b"\x03" * 160, seq=2, pt=8)  # alaw on a ulaw link
    asterisk_rtp.send(endpoint, b"\x04" * 160, seq=3, pt=101)  # telephone-event
    asterisk_rtp.send(endpoint, b"\x05" * 160, seq=4, ssrc=endpoint.sender.ssrc)
    asterisk_rtp.send(endpoint, b"\x06" * 160, seq=5)
    await until(lambda: len(sink.audio) == 2)
    assert sink.audio == [b"\x01" * 160, b"\x06" * 160]
    s = endpoint.stats
    assert (s.dropped_source, s.dropped_pt, s.dropped_loop, s.bad_in, s.frames_in) == (1, 3, 2, 2, 2)
    assert endpoint.peer == f"127.0.0.1:{asterisk_rtp.port}"
    asterisk_rtp.close()
    stranger.close()


async def test_endpoint_ignores_disallowed_hosts(endpoint):
    try:
        outsider = await UdpPeer.open("127.0.0.2")
    except OSError as exc:
        pytest.skip(f"cannot bind 127.0.0.2 here: {exc}")
    outsider.send(endpoint, bytes(160))
    await until(lambda: endpoint.stats.dropped_source == 1)
    assert endpoint.latched is None and endpoint.test_sink.audio == []
    outsider.close()


async def test_endpoint_close_and_stop():
    sinks: list[Sink] = []
    ep = RtpEndpoint("127.0.0.1", 0, "slin", lambda link: sinks.append(Sink(link)) or sinks[-1])
    await ep.open()
    ep.peer_unknown()
    assert (ep.pt, ep.frame_bytes) == (10, 320)
    peer = await UdpPeer.open()
    peer.send(ep, b"\x12\x34" * 160, pt=10)  # slin goes to the sink big-endian, as it came
    await until(lambda: sinks[0].audio)
    assert sinks[0].audio == [b"\x12\x34" * 160]
    ep.stop()
    assert sinks[0].hangups == ["stopped"] and ep.send(bytes(320)) is False
    ep.stop()
    ep.close()
    assert sinks[0].hangups == ["stopped"]
    peer.close()


async def test_endpoint_errors_name_the_port_and_format():
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await RtpEndpoint("127.0.0.1", port, "ulaw", Sink).open()
    finally:
        holder.close()
    with pytest.raises(ValueError, match="one-way"):
        RtpEndpoint("127.0.0.1", 0, "slin16", Sink)


# ================================================================ the simulator's legs meet the product on the wire


async def test_simulator_audiosocket_leg_against_the_server(server, calls):
    from sim.asterisk.audio import tone_pcm
    from sim.asterisk.audiosocket import AudioSocketLeg

    heard: list[bytes] = []
    hangups: list[str] = []
    leg = AudioSocketLeg(
        "127.0.0.1",
        server.port,
        CALL_UUID,
        "slin24",
        on_audio=lambda pcm, rate: heard.append(pcm),
        on_hangup=hangups.append,
    )
    await leg.connect()
    await until(lambda: CALL_UUID in calls.sinks)
    sink = calls.sinks[CALL_UUID]
    caller = tone_pcm(440, 100, 24000)
    leg.deliver(caller, 24000)
    leg.send_dtmf("#")
    await until(lambda: sink.dtmf)
    assert sink.audio == [caller[i : i + 960] for i in range(0, len(caller), 960)] and sink.dtmf == ["#"]
    agent = tone_pcm(660, 60, 24000)
    assert all(sink.link.send(agent[i : i + 960]) for i in range(0, len(agent), 960))
    await until(lambda: len(heard) == 3)
    assert b"".join(heard) == agent
    sink.link.close()
    await until(lambda: hangups)
    assert hangups == ["hangup"] and sink.hangups == []


async def test_simulator_rtp_leg_against_the_endpoint():
    from sim.asterisk.audio import tone_pcm
    from sim.asterisk.rtp import RtpLeg
    from sim.realtime import g711
    import numpy as np

    sinks: list[Sink] = []
    ep = RtpEndpoint(
        "127.0.0.1", 0, "ulaw", lambda link: sinks.append(Sink(link)) or sinks[-1], allowed_hosts=["127.0.0.1"]
    )
    await ep.open()
    ep.peer_unknown()
    heard: list[bytes] = []
    leg = RtpLeg("127.0.0.1", ep.local_port, "ulaw", on_audio=lambda pcm, rate: heard.append(pcm))
    await leg.open()
    try:
        caller = tone_pcm(440, 100, 8000)
        leg.deliver(caller, 8000)
        await until(lambda: len(sinks[0].audio) == 5)
        assert {len(p) for p in sinks[0].audio} == {160} and ep.peer == f"127.0.0.1:{leg.local_port}"
        assert b"".join(sinks[0].audio) == g711.encode(np.frombuffer(caller, "<i2"), "audio/pcmu")
        agent = g711.encode(np.frombuffer(tone_pcm(660, 60, 8000), "<i2"), "audio/pcmu")
        assert all(ep.send(agent[i : i + 160]) for i in range(0, len(agent), 160))
        await until(lambda: len(heard) == 3)
        assert leg.stats.packets_in == 3 and leg.stats.dropped_malformed == 0 and leg.stats.dropped_pt == 0
        assert b"".join(heard) == g711.decode(agent, "audio/pcmu").astype("<i2").tobytes()
    finally:
        await leg.close()
        ep.close()
