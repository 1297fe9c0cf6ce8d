"""The Asterisk simulator's media side: AudioSocket and RTP on real loopback sockets, codecs on plain bytes."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import uuid

import numpy as np
import pytest

from sim.asterisk import audiosocket as asock
from sim.asterisk import rtp
from sim.asterisk.control import ControlApi
from sim.asterisk.frame_clock import FrameClock
from sim.asterisk.audio import (
    VOICED_DBFS,
    CallerAudio,
    CallerEndpoint,
    Recorder,
    is_voiced,
    read_wav,
    resample,
    rms_dbfs,
    silence_pcm,
    tone_pcm,
    write_wav,
)

pytestmark = pytest.mark.timeout(20)
CALL_UUID = "3f2a6c1e-8b4d-4e7a-9c1f-0d2b5e6a7c81"


def samples(pcm: bytes, dtype: str = "<i2") -> np.ndarray:
    return np.frombuffer(pcm, dtype).astype(np.float64)


def dominant_hz(pcm: bytes, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples(pcm)))
    return float(np.fft.rfftfreq(len(pcm) // 2, 1 / rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------- AudioSocket framing (plain bytes)


def test_parser_reassembles_frames_split_byte_by_byte():
    wire = asock.encode(0x01, uuid.UUID(CALL_UUID).bytes) + asock.encode(0x13, bytes(range(256)) * 3 + b"\x01" * 192)
    parser = asock.FrameParser()
    frames = [frame for i in range(len(wire)) for frame in parser.feed(wire[i : i + 1])]
    assert frames == [(0x01, uuid.UUID(CALL_UUID).bytes), (0x13, bytes(range(256)) * 3 + b"\x01" * 192)]
    assert parser.pending == 0


def test_parser_splits_merged_frames_and_keeps_a_partial_one():
    wire = asock.encode(0x10, b"\x01\x02" * 160) + asock.encode(0x03, b"#") + asock.encode(0x00)
    parser = asock.FrameParser()
    assert parser.feed(wire + b"\x10\x01") == [(0x10, b"\x01\x02" * 160), (0x03, b"#"), (0x00, b"")]
    assert parser.pending == 2
    assert parser.feed(b"\x40" + b"\x00" * 319) == []
    assert parser.feed(b"\x00") == [(0x10, bytes(320))]


def test_zero_length_hangup_is_three_bytes():
    assert asock.encode(asock.KIND_HANGUP) == b"\x00\x00\x00"
    assert asock.FrameParser().feed(b"\x00\x00\x00") == [(0x00, b"")]


def test_oversize_length_is_rejected_before_its_payload_arrives():
    parser = asock.FrameParser(max_payload=1000)
    assert parser.feed(asock.encode(0x13, bytes(1000))) == [(0x13, bytes(1000))]
    with pytest.raises(asock.ProtocolError):
        parser.feed(struct.pack(">BH", 0x13, 1001))
    with pytest.raises(asock.ProtocolError):
        asock.FrameParser().feed(struct.pack(">BH", 0x10, asock.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        asock.encode(0x10, bytes(65536))


def test_uuid_frame_and_kind_tables():
    assert asock.encode(0x01, uuid.UUID(CALL_UUID).bytes)[:3] == bytes.fromhex("010010")  # as in the trace
    assert (asock.KIND_BY_FORMAT["slin"], asock.KIND_BY_FORMAT["slin16"], asock.KIND_BY_FORMAT["slin24"]) == (
        0x10,
        0x12,
        0x13,
    )
    assert asock.KIND_BY_FORMAT["slin12"] == 0x11 and asock.RATE_BY_FORMAT["slin12"] == 12000


# ---------------------------------------------------------------- AudioSocketLeg against a test server


class Worker:
    """A minimal AudioSocket server: the test reads and writes the raw TCP stream."""

    def __init__(self):
        self.connections: asyncio.Queue = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(lambda r, w: self.connections.put_nowait((r, w)), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def accept(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(self.connections.get(), 2)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = struct.unpack(">BH", await asyncio.wait_for(reader.readexactly(3), 2))
    return kind, await asyncio.wait_for(reader.readexactly(length), 2)


class Calls:
    def __init__(self):
        self.audio: list[tuple[bytes, int]] = []
        self.hangups: list[str] = []
        self.hung_up = asyncio.Event()
        self.got_audio = asyncio.Event()

    def on_audio(self, pcm: bytes, rate: int) -> None:
        self.audio.append((pcm, rate))
        self.got_audio.set()

    def on_hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        self.hung_up.set()


@pytest.fixture
async def worker():
    w = Worker()
    w.port = await w.start()
    yield w
    await w.stop()


async def connected_leg(worker, fmt: str = "slin24", **kwargs):
    calls = Calls()
    leg = asock.AudioSocketLeg(
        "127.0.0.1", worker.port, CALL_UUID, fmt, on_audio=calls.on_audio, on_hangup=calls.on_hangup, **kwargs
    )
    await leg.connect()
    reader, writer = await worker.accept()
    return leg, calls, reader, writer


@pytest.mark.parametrize("fmt,kind,size", [("slin", 0x10, 320), ("slin16", 0x12, 640), ("slin24", 0x13, 960)])
async def test_uuid_first_then_20ms_frames_of_the_format(worker, fmt, kind, size):
    leg, calls, reader, writer = await connected_leg(worker, fmt)
    assert await read_frame(reader) == (0x01, uuid.UUID(CALL_UUID).bytes)
    assert leg.connected_t is not None and leg.local_port == writer.get_extra_info("peername")[1]
    rate = asock.RATE_BY_FORMAT[fmt]
    leg.deliver(tone_pcm(440, 60, rate), rate)
    frames = [await read_frame(reader) for _ in range(3)]
    assert [(k, len(p)) for k, p in frames] == [(kind, size)] * 3
    assert b"".join(p for _, p in frames) == tone_pcm(440, 60, rate)  # little-endian, untouched
    assert leg.bytes_out == 19 + 3 * (3 + size)
    await leg.close()


async def test_audio_at_another_rate_is_resampled_to_the_leg_rate(worker):
    leg, calls, reader, writer = await connected_leg(worker, "slin24")
    await read_frame(reader)
    for i in range(25):  # 500 ms of 8 kHz caller audio, frame by frame
        leg.deliver(tone_pcm(440, 500, 8000)[i * 320 : (i + 1) * 320], 8000)
    got = [await read_frame(reader) for _ in range(24)]
    assert {(k, len(p)) for k, p in got} == {(0x13, 960)}
    pcm = b"".join(p for _, p in got)
    assert abs(dominant_hz(pcm[9600:], 24000) - 440) < 5
    assert abs(rms_dbfs(pcm[9600:]) - rms_dbfs(tone_pcm(440, 200, 8000))) < 0.5
    await leg.close()


async def test_delivered_audio_is_written_at_once_not_re_timed(worker):
    leg, calls, reader, writer = await connected_leg(worker, "slin24")
    await read_frame(reader)
    t0 = time.monotonic()
    leg.deliver(tone_pcm(440, 1000, 24000), 24000)  # one second of audio in one call
    frames = [await read_frame(reader) for _ in range(50)]
    assert time.monotonic() - t0 < 0.3  # paced delivery would take ~1 s
    assert {len(p) for _, p in frames} == {960}
    await leg.close()


async def test_a_short_frame_stays_short(worker):
    leg, calls, reader, writer = await connected_leg(worker, "slin")
    await read_frame(reader)
    leg.deliver(bytes(320 + 24), 8000)  # like the 12-sample tail of a played file
    assert [len((await read_frame(reader))[1]) for _ in range(2)] == [320, 24]
    await leg.close()


async def test_worker_audio_reaches_on_audio_as_sent(worker):
    leg, calls, reader, writer = await connected_leg(worker, "slin16")
    await read_frame(reader)
    sizes = [640, 100, 2000, 640]
    for i, size in enumerate(sizes):
        writer.write(asock.encode(0x12, bytes([i]) * size))
    await writer.drain()
    for _ in range(100):
        if len(calls.audio) == len(sizes):
            break
        await asyncio.sleep(0.01)
    assert [(len(p), rate) for p, rate in calls.audio] == [(s, 16000) for s in sizes]
    assert [p[0] for p, _ in calls.audio] == [0, 1, 2, 3]
    assert leg.bytes_in == sum(3 + s for s in sizes) and calls.hangups == []
    await leg.close()


async def test_worker_hangup_frame_ends_the_call_and_asterisk_closes_tcp(worker):
    leg, calls, reader, writer = await connected_leg(worker)
    await read_frame(reader)
    writer.write(b"\x00\x00\x00")
    await asyncio.wait_for(calls.hung_up.wait(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""  # EOF: the TCP connection was closed by Asterisk
    await asyncio.sleep(0.05)
    assert calls.hangups == ["hangup"] and not leg.connected
    leg.deliver(bytes(960), 24000)  # too late: dropped, never raises
    assert leg.dropped_out == 1
    await leg.close()
    assert calls.hangups == ["hangup"]


@pytest.mark.parametrize(
    "wire,reason",
    [
        (b"\xff\x00\x00", "error"),  # the worker reports an error
        (asock.encode(0x10, bytes(320)), "error"),  # slin 8 kHz on a slin24 leg
        (asock.encode(0x03, b"1"), "error"),  # not a kind Asterisk reads
        (asock.encode(0x13, b""), "error"),  # empty audio
        (struct.pack(">BH", 0x13, 60000), "error"),  # absurd length
        (None, "closed"),  # the worker closes the socket
    ],
)
async def test_how_the_worker_ends_a_call(worker, wire, reason):
    leg, calls, reader, writer = await connected_leg(worker)
    await read_frame(reader)
    if wire is None:
        writer.close()
    else:
        writer.write(wire)
    await asyncio.wait_for(calls.hung_up.wait(), 2)
    await asyncio.sleep(0.05)
    assert calls.hangups == [reason] and calls.audio == []
    if wire is not None:
        assert await asyncio.wait_for(reader.read(), 2) == b""
    await leg.close()


async def test_close_by_asterisk_gives_eof_and_no_on_hangup(worker):
    leg, calls, reader, writer = await connected_leg(worker)
    await read_frame(reader)
    await leg.close()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    await asyncio.sleep(0.05)
    assert calls.hangups == []


async def test_refused_port_and_bad_uuid_raise_connect_error(worker):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    calls = Calls()
    leg = asock.AudioSocketLeg(
        "127.0.0.1", free, CALL_UUID, "slin24", on_audio=calls.on_audio, on_hangup=calls.on_hangup
    )
    with pytest.raises(asock.AudioSocketConnectError):
        await leg.connect()
    bad = asock.AudioSocketLeg(
        "127.0.0.1", worker.port, "not-a-uuid", "slin24", on_audio=calls.on_audio, on_hangup=calls.on_hangup
    )
    with pytest.raises(asock.AudioSocketConnectError):
        await bad.connect()
    assert worker.connections.empty() and calls.hangups == []


async def test_connect_timeout_raises_connect_error(monkeypatch):
    async def never(*args, **kwargs):
        await asyncio.sleep(10)

    monkeypatch.setattr(asyncio, "open_connection", never)
    leg = asock.AudioSocketLeg("127.0.0.1", 9, CALL_UUID, "slin", on_audio=print, on_hangup=print, connect_timeout=0.1)
    with pytest.raises(asock.AudioSocketConnectError):
        await leg.connect()


async def test_dtmf_frames(worker):
    leg, calls, reader, writer = await connected_leg(worker)
    await read_frame(reader)
    leg.send_dtmf("1")
    leg.send_dtmf("#")
    assert [await read_frame(reader) for _ in range(2)] == [(0x03, b"1"), (0x03, b"#")]
    with pytest.raises(ValueError):
        leg.send_dtmf("x")
    await leg.close()


# ---------------------------------------------------------------- RTP (plain bytes)


def test_packet_build_and_parse():
    wire = rtp.build_packet(0, 37188, 160, 0x40AC0A0A, b"\xff" * 160)
    assert wire[:2] == b"\x80\x00" and len(wire) == 172
    packet = rtp.parse_packet(wire)
    assert (packet.version, packet.marker, packet.pt, packet.seq, packet.ts, packet.ssrc) == (
        2,
        False,
        0,
        37188,
        160,
        0x40AC0A0A,
    )
    assert packet.payload == b"\xff" * 160
    # CSRCs, an extension and padding are skipped to reach the payload
    first = 0x80 | 0x20 | 0x10 | 1
    wire = (
        struct.pack(">BBHII", first, 10, 1, 2, 3)
        + struct.pack(">I", 7)
        + struct.pack(">HH", 0xBEDE, 1)
        + b"\x00" * 4
        + b"\x12\x34"
        + b"\x00\x00\x03"
    )
    packet = rtp.parse_packet(wire)
    assert packet.csrcs == (7,) and packet.payload == b"\x12\x34"


@pytest.mark.parametrize(
    "data", [b"", b"\x80\x00" * 5, b"\x40" + bytes(20), b"\x8f" + bytes(20), b"\xa0\x00" + bytes(10) + b"\x00"]
)
def test_garbage_is_not_a_packet(data):
    assert rtp.parse_packet(data) is None


def test_slin_payload_is_big_endian():
    pcm = np.array([1, 256, -2], "<i2").tobytes()
    assert rtp.encode_payload(pcm, "slin") == b"\x00\x01\x01\x00\xff\xfe"
    assert rtp.decode_payload(b"\x00\x01\x01\x00\xff\xfe", "slin") == pcm
    assert rtp.decode_payload(b"\x00\x01\x01", "slin") is None


# ---------------------------------------------------------------- RtpLeg against a UDP test socket


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self):
        self.packets: asyncio.Queue = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.packets.put_nowait((data, addr))

    async def get(self) -> tuple[bytes, tuple]:
        return await asyncio.wait_for(self.packets.get(), 2)


async def udp_peer(host: str = "127.0.0.1") -> tuple[UdpPeer, int]:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(host, 0))
    return peer, peer.transport.get_extra_info("sockname")[1]


async def rtp_leg(fmt: str, host: str = "127.0.0.1"):
    peer, port = await udp_peer()
    calls = Calls()
    leg = rtp.RtpLeg(host, port, fmt, on_audio=calls.on_audio, port_range=(20000, 20999))
    await leg.open()
    return leg, calls, peer


async def wait_until(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        await asyncio.sleep(0.01)


async def test_rtp_header_fields_as_asterisk_sends_them():
    leg, calls, peer = await rtp_leg("ulaw")
    assert leg.local_address == "127.0.0.1" and 20000 <= leg.local_port <= 20999 and leg.local_port % 2 == 0
    leg.deliver(tone_pcm(440, 60, 8000), 8000)
    got = [await peer.get() for _ in range(3)]
    packets = [rtp.parse_packet(data) for data, _ in got]
    assert {addr for _, addr in got} == {("127.0.0.1", leg.local_port)}
    assert [(p.version, p.pt, p.marker, len(p.payload)) for p in packets] == [(2, 0, False, 160)] * 3
    assert [p.ts for p in packets] == [160, 320, 480]
    assert [(p.seq - packets[0].seq) % 65536 for p in packets] == [0, 1, 2]
    assert len({p.ssrc for p in packets}) == 1 and len(got[0][0]) == 172
    leg.deliver(bytes(24), 8000)  # a 12-sample tail: ts advances by its own samples, as Asterisk's did
    tail = rtp.parse_packet((await peer.get())[0])
    assert (tail.ts, len(tail.payload)) == (492, 12)
    assert leg.stats.packets_out == 4
    await leg.close()


async def test_two_legs_have_their_own_ssrc_and_port():
    (a, _, _), (b, _, _) = await rtp_leg("ulaw"), await rtp_leg("ulaw")
    assert a.local_port != b.local_port and a.ssrc != b.ssrc
    await a.close()
    await b.close()


async def test_ulaw_round_trip_of_a_tone():
    leg, calls, peer = await rtp_leg("ulaw")
    tone = tone_pcm(1000, 200, 8000)
    leg.deliver(tone, 8000)
    received = [await peer.get() for _ in range(10)]
    for i, (data, addr) in enumerate(received):  # the worker echoes every payload back, as PT 0
        payload = rtp.parse_packet(data).payload
        peer.transport.sendto(rtp.build_packet(0, 1000 + i, 160 * (i + 1), 1234, payload), addr)
    await wait_until(lambda: len(calls.audio) == 10)
    back = b"".join(p for p, _ in calls.audio)
    assert {rate for _, rate in calls.audio} == {8000} and len(back) == len(tone)
    error = samples(back) - samples(tone)
    snr = 10 * np.log10(np.mean(samples(tone) ** 2) / np.mean(error**2))
    assert snr > 30  # μ-law's ~38 dB, not noise
    assert leg.stats.packets_in == 10
    await leg.close()


async def test_slin_is_big_endian_both_ways():
    leg, calls, peer = await rtp_leg("slin")
    pcm = np.arange(-80, 80, dtype="<i2").tobytes()
    leg.deliver(pcm, 8000)
    data, addr = await peer.get()
    packet = rtp.parse_packet(data)
    assert packet.pt == 10 and packet.payload == np.arange(-80, 80, dtype=">i2").tobytes()
    peer.transport.sendto(rtp.build_packet(10, 1, 160, 99, packet.payload), addr)
    await wait_until(lambda: calls.audio)
    assert calls.audio == [(pcm, 8000)]
    await leg.close()


async def test_audio_from_any_port_of_the_external_host_is_accepted():
    leg, calls, peer = await rtp_leg("ulaw")
    other, _ = await udp_peer()
    for i, sender in enumerate((peer, other)):
        sender.transport.sendto(rtp.build_packet(0, i, 160, 5, b"\xff" * 160), ("127.0.0.1", leg.local_port))
    await wait_until(lambda: len(calls.audio) == 2)
    assert leg.stats.packets_in == 2 and leg.stats.dropped_source == 0
    other.transport.close()
    await leg.close()


async def test_packets_from_another_host_are_dropped_and_counted():
    leg, calls, peer = await rtp_leg("ulaw", host="127.0.0.2")  # the worker "is" 127.0.0.2; we send from .1
    peer.transport.sendto(rtp.build_packet(0, 1, 160, 5, b"\xff" * 160), ("127.0.0.1", leg.local_port))
    await wait_until(lambda: leg.stats.dropped_source == 1)
    assert calls.audio == [] and leg.stats.packets_in == 0
    await leg.close()


async def test_pt_118_and_garbage_are_dropped_and_counted():
    leg, calls, peer = await rtp_leg("ulaw")
    target = ("127.0.0.1", leg.local_port)
    peer.transport.sendto(rtp.build_packet(118, 1, 320, 5, bytes(640)), target)
    peer.transport.sendto(rtp.build_packet(8, 2, 160, 5, bytes(160)), target)  # alaw on a ulaw channel
    peer.transport.sendto(b"\x80\x00\x00", target)
    peer.transport.sendto(b"\x40" + bytes(171), target)  # RTP version 1
    peer.transport.sendto(rtp.build_packet(0, 3, 160, 5, b"\xff" * 160), target)
    await wait_until(lambda: leg.stats.packets_in == 1)
    await asyncio.sleep(0.05)
    assert (leg.stats.dropped_pt, leg.stats.dropped_malformed) == (2, 2) and len(calls.audio) == 1
    await leg.close()


async def test_slin16_is_one_way_like_a_real_asterisk():
    leg, calls, peer = await rtp_leg("slin16")
    leg.deliver(tone_pcm(440, 20, 16000), 16000)
    data, addr = await peer.get()
    packet = rtp.parse_packet(data)
    assert (packet.pt, packet.ts, len(packet.payload)) == (118, 320, 640)
    peer.transport.sendto(rtp.build_packet(118, 1, 320, 5, packet.payload), addr)
    await wait_until(lambda: leg.stats.dropped_pt == 1)
    assert calls.audio == [] and leg.stats.packets_in == 0
    await leg.close()


async def test_rtp_deliver_before_open_or_after_close_is_dropped():
    leg = rtp.RtpLeg("127.0.0.1", 9, "ulaw", on_audio=print)
    leg.deliver(bytes(320), 8000)
    await leg.open()
    await leg.close()
    leg.deliver(bytes(320), 8000)
    assert leg.stats.dropped_out == 2 and leg.stats.packets_out == 0


# ---------------------------------------------------------------- caller audio, recorder, caller phone


def test_resample_identity_and_8k_to_24k_length():
    pcm = tone_pcm(440, 100, 8000)
    assert resample(pcm, 8000, 8000) == pcm
    up = resample(pcm, 8000, 24000)
    assert len(up) == 3 * len(pcm) and abs(dominant_hz(up, 24000) - 440) < 15
    assert abs(rms_dbfs(up[960:-960]) - rms_dbfs(pcm)) < 0.3


def test_tone_level_and_silence():
    assert abs(rms_dbfs(tone_pcm(1000, 200, 8000, dbfs=-12)) - (-12 - 3.01)) < 0.05
    assert silence_pcm(20, 24000) == bytes(960) and rms_dbfs(bytes(10)) == float("-inf")


def test_caller_audio_frames_segments_and_rates():
    script = CallerAudio.tone(440, 50).then(CallerAudio.silence(40)).then(CallerAudio.from_pcm(bytes(320), 8000))
    assert script.duration_ms == 110
    frames = []
    while (frame := script.frame(8000)) is not None:
        frames.append(frame)
    assert [len(p) for p, _ in frames] == [320] * 6  # 110 ms -> 6 frames, the last padded
    assert [speech for _, speech in frames] == [True, True, True, False, True, True]  # frame 3 spans 40..60 ms
    assert frames[3][0] == bytes(320)
    again = CallerAudio.tone(440, 40, rate=8000)
    pcm, speech = again.frame(24000)  # resampled once, 960 bytes a frame
    assert len(pcm) == 960 and speech and again.frame(24000)[1] and again.frame(24000) is None


def test_caller_audio_from_wav(tmp_path):
    write_wav(tmp_path / "hello.wav", tone_pcm(300, 100, 16000), 16000)
    script = CallerAudio.from_wav(tmp_path / "hello.wav")
    assert script.duration_ms == 100
    assert script.frame(16000) == (tone_pcm(300, 100, 16000)[:640], True)


def test_recorder_timeline_and_wav_round_trip(tmp_path):
    rec = Recorder()
    rec.append(tone_pcm(440, 20, 8000), 8000, t=10.0)
    rec.append(tone_pcm(440, 40, 8000)[320:], 8000, t=10.02)
    rec.append(bytes(960), 24000, t=10.5)
    assert rec.timeline() == [(10.0, 160, 8000), (10.02, 160, 8000), (10.5, 480, 24000)]
    assert rec.duration_ms == pytest.approx(60)
    assert rec.pcm(8000) == tone_pcm(440, 40, 8000) + bytes(320)
    assert len(rec.pcm(24000)) == 3 * 960
    rec.save_wav(tmp_path / "heard.wav")
    assert read_wav(tmp_path / "heard.wav") == (rec.pcm(8000), 8000)
    assert rec.rms_dbfs() < rms_dbfs(tone_pcm(440, 40, 8000))


def test_is_voiced_agrees_with_the_level_threshold():
    for dbfs in np.linspace(-60, -30, 301):  # across VOICED_DBFS (-45) in 0.1 dB steps
        pcm = tone_pcm(440, 20, 8000, dbfs=float(dbfs))
        assert is_voiced(pcm) == (rms_dbfs(pcm) > VOICED_DBFS), dbfs
    assert not is_voiced(b"") and not is_voiced(bytes(960))


def test_fresh_copies_read_from_the_start_and_share_the_cut_frames():
    script = CallerAudio.tone(440, 60, rate=8000).then(CallerAudio.silence(40))
    first = script.frame(24000)
    copy = script.fresh()
    assert copy.position_ms == 0 and copy.frame(24000) == first
    assert copy._frames is script._frames  # cut once for every caller of the file
    assert [copy.frame(24000)[1] for _ in range(4)] == [True, True, False, False] and copy.frame(24000) is None


def test_control_api_reads_a_wav_again_when_it_changed(tmp_path):
    api = ControlApi.__new__(ControlApi)  # its WAV cache alone: no simulator behind it
    api._wavs = {}
    path = tmp_path / "caller.wav"
    write_wav(path, tone_pcm(440, 100, 8000), 8000)
    assert api.caller_audio(str(path)).duration_ms == 100
    assert api.caller_audio(str(path)).frame(8000) == (tone_pcm(440, 100, 8000)[:320], True)  # a fresh read
    write_wav(path, tone_pcm(300, 200, 8000), 8000)
    assert api.caller_audio(str(path)).duration_ms == 200


async def test_one_phone_failing_does_not_stop_the_others():
    got: list[str] = []

    def broken(pcm: bytes, rate: int) -> None:
        got.append("broken")
        raise RuntimeError("a bug in one caller's sink")

    good = CallerEndpoint(None, 8000, on_audio=lambda pcm, rate: got.append("good"))
    bad = CallerEndpoint(None, 8000, on_audio=broken)
    good.start()
    bad.start()
    await wait_until(lambda: got.count("good") >= 5)
    good.stop()
    assert got.count("broken") == 1 and not bad.running and not good.running


async def test_a_stopped_phone_restarted_runs_one_clock_not_two():
    phone = CallerEndpoint(None, 8000)
    phone.start()
    phone.stop()
    phone.start()  # the first ticket is still queued on the clock: it must stay dead
    await wait_until(lambda: phone.frames_sent >= 3)
    queued = FrameClock.of(asyncio.get_running_loop())._due
    assert [(ticket.tick, ticket.active) for _, _, ticket in queued] == [(phone._tick, True)]  # the old one left
    phone.stop()


async def test_caller_frames_come_every_20ms():
    stamps: dict[int, list[float]] = {8000: [], 24000: []}
    sizes: dict[int, set[int]] = {8000: set(), 24000: set()}

    def on_audio_for(rate):
        def on_audio(pcm, got_rate):
            assert got_rate == rate
            stamps[rate].append(time.monotonic())
            sizes[rate].add(len(pcm))

        return on_audio

    phones = [
        CallerEndpoint(CallerAudio.tone(440, 1000, rate=8000), rate, on_audio=on_audio_for(rate))
        for rate in (8000, 24000)
    ]
    for phone in phones:
        phone.start()
    await asyncio.sleep(1.0)
    for phone in phones:
        phone.stop()
    for rate, want in ((8000, 320), (24000, 960)):
        times = stamps[rate]
        assert 45 <= len(times) <= 52
        mean_ms = 1000 * (times[-1] - times[0]) / (len(times) - 1)
        assert 19.0 < mean_ms < 21.0, mean_ms
        assert sizes[rate] == {want}


async def test_send_silence_false_skips_silent_segments():
    script = lambda: CallerAudio.tone(440, 100).then(CallerAudio.silence(200)).then(CallerAudio.tone(440, 100))  # noqa
    local = CallerEndpoint(script(), send_silence=False)
    trunk = CallerEndpoint(script(), send_silence=True)
    local.start()
    trunk.start()
    await asyncio.wait_for(asyncio.gather(local.finished.wait(), trunk.finished.wait()), 2)
    await asyncio.sleep(0.1)
    local.stop()
    trunk.stop()
    assert local.frames_sent == 10  # speech only; nothing after the script either
    times = [t for t, _, _ in local.sent.timeline()]
    gaps = np.diff(times)
    assert 0.18 < gaps.max() < 0.26 and int(np.argmax(gaps)) == 4
    assert trunk.frames_sent >= 20 + 4  # silence is sent, and goes on after the script


async def test_line_echo_at_minus_20_db():
    sent: list[bytes] = []
    phone = CallerEndpoint(None, 8000, echo_db=-20.0, on_audio=lambda pcm, rate: sent.append(pcm))
    phone.start()
    agent = tone_pcm(700, 400, 24000, dbfs=-6)
    for i in range(20):  # the agent speaks at 24 kHz, 20 ms at a time
        phone.deliver(agent[i * 960 : (i + 1) * 960], 24000)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.06)
    phone.stop()
    assert phone.heard.pcm(24000) == agent and phone.finished.is_set()
    with_echo = [pcm for pcm in sent if rms_dbfs(pcm) > -60]
    assert 18 <= len(with_echo) <= 21
    level = rms_dbfs(b"".join(with_echo[2:-2]))
    assert abs(level - (rms_dbfs(agent) - 20)) < 1.0, level
    assert abs(dominant_hz(b"".join(with_echo[2:-2]), 8000) - 700) < 20


async def test_no_echo_without_echo_db():
    sent: list[bytes] = []
    phone = CallerEndpoint(None, 8000, on_audio=lambda pcm, rate: sent.append(pcm))
    phone.start()
    for _ in range(5):
        phone.deliver(tone_pcm(700, 20, 8000), 8000)
        await asyncio.sleep(0.02)
    phone.stop()
    assert sent and all(pcm == bytes(320) for pcm in sent)


async def test_caller_through_audiosocket_to_an_echoing_worker(worker):
    """The pieces together: phone (8 kHz) -> slin24 leg -> a worker that sends every frame back -> phone."""
    phone = CallerEndpoint(CallerAudio.tone(500, 300, rate=8000), 8000)
    calls = Calls()
    leg = asock.AudioSocketLeg(
        "127.0.0.1",
        worker.port,
        CALL_UUID,
        "slin24",
        on_audio=lambda pcm, rate: phone.deliver(pcm, rate),
        on_hangup=calls.on_hangup,
    )
    phone.on_audio = leg.deliver
    await leg.connect()
    reader, writer = await worker.accept()
    assert (await read_frame(reader))[0] == 0x01
    phone.start()
    for _ in range(14):
        kind, payload = await read_frame(reader)
        writer.write(asock.encode(kind, payload))
    await wait_until(lambda: phone.heard.duration_ms >= 280)
    phone.stop()
    heard = phone.heard.pcm(8000)
    assert {rate for _, _, rate in phone.heard.timeline()} == {24000}
    assert abs(dominant_hz(heard[800:], 8000) - 500) < 20
    assert abs(rms_dbfs(heard[800:]) - rms_dbfs(tone_pcm(500, 100, 8000))) < 1.0
    await leg.close()
