"""RTP packets: rtp_codec.parse on any datagram, and RtpEndpoint._received on datagrams from any source.

Allowed outcomes: parse returns None or a packet whose payload is a slice of the datagram; the endpoint
delivers to its sink only payloads of its payload type from the source it latched to, and counts every
other datagram (bad, foreign payload type, foreign source, our own SSRC) without raising."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media_worker.transport.rtp_codec import RtpSender, parse
from media_worker.transport.rtp_endpoint import RtpEndpoint
from tests.fuzz.harness import EXAMPLE_TIMEOUT_S, examples, garbled, time_bound

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

SENDER = RtpSender(0, 160, ssrc=0x1234, seq=1, ts=1)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A header with random flags (CSRC count, extension, padding, marker, version), then random bytes, or a
    valid ulaw packet garbled, or any bytes at all."""
    kind = draw(st.sampled_from(["header", "garbled", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=80))
    if kind == "garbled":
        return draw(garbled(SENDER.packet(draw(st.binary(min_size=0, max_size=40)))))
    first = draw(st.integers(0, 255))
    second = draw(st.sampled_from([0, 10, 0x80, 8, 101, 200, 201, 72, 127]) | st.integers(0, 255))
    header = struct.pack(">BBHII", first, second, draw(st.integers(0, 0xFFFF)), 0, draw(st.integers(0, 2**32 - 1)))
    return header + draw(st.binary(max_size=80))


@pytest.mark.surface("rtp (parse)")
@settings(max_examples=examples())
@given(data=packets())
def test_parse_takes_any_datagram(surface, data):
    surface.example()
    with time_bound():
        packet = parse(data)
    if packet is not None:
        assert data[0] >> 6 == 2 and not 72 <= packet.pt <= 76
        assert 0 <= packet.pt <= 127 and packet.payload in data
        assert len(packet.payload) <= len(data) - 12


class Sink:
    def __init__(self):
        self.payloads = 0
        self.hangups: list[str] = []

    def on_audio(self, payload: bytes) -> None:
        self.payloads += 1

    def on_dtmf(self, digit: str) -> None:
        raise AssertionError("RTP carries no DTMF")

    def on_hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def on_format(self, fmt: str) -> None:
        pass


def seen(ep: RtpEndpoint) -> int:
    """Datagrams the endpoint has counted, whatever it did with them."""
    stats = ep.stats
    return stats.frames_in + stats.bad_in + stats.dropped_pt + stats.dropped_source + stats.dropped_loop


SOURCES = st.sampled_from(
    [
        ("127.0.0.1", 4000),
        ("127.0.0.1", 4002),
        ("127.0.0.2", 4000),
        ("10.0.0.1", 4000),
        ("::1", 4000, 0, 0),
        ("::ffff:127.0.0.1", 4000, 0, 0),
        ("fe80::1%lo", 4000, 0, 1),
        ("", 0),
        ("not-an-address", 1),
    ]
)


@pytest.fixture(params=["first_packet", "reported"])
def endpoint(loop, request):
    """A real endpoint on a loopback port that only 127.0.0.0/8 may reach: latching to the first good packet (the
    controller learnt no address), or told Asterisk's address (127.0.0.1:4000, one of the fuzzed sources)."""
    sink = Sink()
    ep = RtpEndpoint("127.0.0.1", 0, "ulaw", lambda link: sink, allowed_hosts=["127.0.0.0/8"], ssrc_change_after=0.0)
    loop.run_until_complete(ep.open())
    if request.param == "reported":
        assert ep.set_peer("127.0.0.1", 4000)
    else:
        ep.peer_unknown()
    yield ep, sink
    ep.stop()
    loop.run_until_complete(asyncio.sleep(0))


@pytest.mark.surface("rtp (endpoint)")
@settings(max_examples=examples())
@given(datagrams=st.lists(st.tuples(packets(), SOURCES), min_size=1, max_size=8))
def test_endpoint_takes_datagrams_from_anywhere(surface, loop, endpoint, datagrams):
    ep, sink = endpoint
    surface.example()
    before, accepted, delivered = seen(ep), ep.stats.frames_in, sink.payloads
    with time_bound():
        for data, addr in datagrams:
            ep._received(data, addr)
    # Every datagram is counted exactly once; the sink got exactly the accepted ones; latched only to allowed hosts.
    assert seen(ep) - before == len(datagrams)
    assert sink.payloads - delivered == ep.stats.frames_in - accepted
    assert ep.latched is None or ep.latched[0].startswith("127.") or ep.latched[0] == "::ffff:127.0.0.1"
    assert not sink.hangups


@pytest.mark.surface("rtp (socket)")
@settings(max_examples=examples(0.1))
@given(datagrams=st.lists(packets(), min_size=1, max_size=4))
def test_endpoint_takes_real_datagrams(surface, loop, endpoint, datagrams):
    """The same through the socket: what the kernel delivers to the endpoint's protocol."""
    ep, sink = endpoint
    surface.example()

    async def one() -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            before = seen(ep)
            for data in datagrams:
                transport.sendto(data, ("127.0.0.1", ep.local_port))
            async with asyncio.timeout(EXAMPLE_TIMEOUT_S):
                # Loopback UDP loses nothing (asyncio's sendto sends no empty datagram).
                while seen(ep) - before < sum(1 for d in datagrams if d):
                    await asyncio.sleep(0.001)
        finally:
            transport.close()

    loop.run_until_complete(one())
    assert not sink.hangups and ep.local_port
