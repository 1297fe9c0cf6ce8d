"""Whose RTP an endpoint hears (issue 16: RTP stream takeover).

Only the address and port Asterisk reported for the call's channel, and from there only the first SSRC;
nothing before that report (unless the controller says it learnt no address: then the first packet, until a
late report); nothing ever re-latches to another source.
Datagrams are fed to `RtpEndpoint._received` with the addresses they would come from (the socket is open,
but unused), and the endpoint's clock is a fake; one test at the end goes over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from media_worker.transport import rtp_codec, rtp_endpoint
from media_worker.transport.rtp_endpoint import RtpEndpoint
from media_worker.transport.refusals import RefusalLog
from shared.metrics import RTP_DROPPED

pytestmark = pytest.mark.timeout(10)

ASTERISK = ("127.0.0.1", 40002)  # the address externalMedia reported (UNICASTRTP_LOCAL_ADDRESS/PORT)
FOREIGN = ("127.0.0.1", 40000)  # the same host (loopback), another port: the allow-list cannot tell them apart
CALLER_SSRC = 0x5151


class Sink:
    def __init__(self, link):
        self.link = link
        self.audio: list[bytes] = []

    def on_audio(self, payload: bytes) -> None:
        self.audio.append(payload)

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_hangup(self, reason: str) -> None:
        pass

    def on_format(self, fmt: str) -> None:
        pass


class Clock:
    """Stands in for the `time` module the endpoint reads."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Wire:
    """Records what the endpoint sends instead of sending it."""

    def __init__(self, real):
        self.real = real
        self.sent: list[tuple[bytes, tuple]] = []

    def get_extra_info(self, name, default=None):
        return self.real.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def sendto(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.real.close()


def rtp(payload: bytes, *, ssrc: int = CALLER_SSRC, seq: int = 1, pt: int = 0) -> bytes:
    return struct.pack(">BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(rtp_endpoint, "time", fake)
    return fake


@pytest.fixture
async def ep(clock):
    sinks: list[Sink] = []
    endpoint = RtpEndpoint(
        "127.0.0.1", 0, "ulaw", lambda link: sinks.append(Sink(link)) or sinks[-1], allowed_hosts=["127.0.0.1"]
    )
    await endpoint.open()
    endpoint.wire = Wire(endpoint._udp)
    endpoint._udp = endpoint.wire
    endpoint.sink = sinks[0]
    yield endpoint
    endpoint.close()


def dropped(reason: str) -> float:
    return RTP_DROPPED.labels(reason)._value.get()


def test_a_foreign_sender_that_speaks_first_is_not_heard_and_gets_nothing(ep, clock):
    """Measured in the issue: a sender that spoke first got 303 packets of the agent's audio, and its tone
    went to the model. Before Asterisk's address is reported nothing is heard or sent; then only it."""
    before = dropped("early")
    ep._received(rtp(b"\x01" * 160, ssrc=0x666), FOREIGN)
    assert ep.sink.audio == [] and ep.latched is None and dropped("early") - before == 1
    assert ep.send(b"\x7f" * 160) is False and ep.wire.sent == []  # the greeting waits for the report
    assert ep.set_peer(*ASTERISK)
    assert ep.latched == ASTERISK and ep.peer == "127.0.0.1:40002"
    before = dropped("source")
    for seq in range(2, 12):
        clock.now += 0.02
        ep._received(rtp(b"\x02" * 160, ssrc=0x666, seq=seq), FOREIGN)
    assert ep.sink.audio == []  # nothing of the foreign tone reaches the session
    assert ep.stats.dropped_source == 11 and dropped("source") - before == 10
    assert ep.send(b"\x7f" * 160)
    assert [addr for _, addr in ep.wire.sent] == [ASTERISK]  # the agent's audio goes to Asterisk only
    ep._received(rtp(b"\x03" * 160), ASTERISK)  # Asterisk's own stream, whatever its SSRC, is heard
    assert ep.sink.audio == [b"\x03" * 160]


def test_a_late_report_replaces_a_first_packet_latch(ep, clock):
    """The controller said it learnt no address (the worker latched to a first packet), and the address
    comes after all: the reported address wins, and the first packet's source is a stranger from then on."""
    ep.peer_unknown()
    ep._received(rtp(b"\x01" * 160, ssrc=0x666), FOREIGN)
    assert ep.sink.audio == [b"\x01" * 160] and ep.latched == FOREIGN
    assert ep.set_peer(*ASTERISK)
    assert ep.latched == ASTERISK and ep.stats.relatched == 1
    ep._received(rtp(b"\x02" * 160, ssrc=0x666, seq=2), FOREIGN)
    ep._received(rtp(b"\x03" * 160), ASTERISK)
    assert ep.sink.audio == [b"\x01" * 160, b"\x03" * 160]
    ep.send(b"\x7f" * 160)
    assert [addr for _, addr in ep.wire.sent] == [ASTERISK]


def test_a_foreign_sender_never_takes_over_after_a_silence(ep, clock):
    """Measured in the issue: one that spoke after 2.7 s of silence got 176 packets. Nothing re-latches."""
    assert ep.set_peer(*ASTERISK)
    ep._received(rtp(b"\x01" * 160), ASTERISK)
    clock.now += 2.7  # the caller is silent: Asterisk sends nothing
    for seq in range(1, 6):
        ep._received(rtp(b"\x02" * 160, ssrc=0x666, seq=seq), FOREIGN)
        clock.now += 0.02
    clock.now += 60.0
    ep._received(rtp(b"\x02" * 160, ssrc=0x666, seq=7), FOREIGN)
    assert ep.sink.audio == [b"\x01" * 160] and ep.latched == ASTERISK
    assert ep.stats.dropped_source == 6 and ep.stats.relatched == 0
    ep.send(b"\x7f" * 160)
    assert [addr for _, addr in ep.wire.sent] == [ASTERISK]


def test_without_a_report_the_first_source_keeps_the_call(ep, clock):
    """A controller that learnt no address: the first source keeps the latch; another one after any silence
    is still a stranger."""
    ep.peer_unknown()
    ep._received(rtp(b"\x01" * 160), ASTERISK)
    clock.now += 2.7
    ep._received(rtp(b"\x02" * 160, ssrc=0x666), FOREIGN)
    assert ep.sink.audio == [b"\x01" * 160] and ep.latched == ASTERISK
    assert ep.set_peer(*ASTERISK)  # a report that confirms the first source: its stream goes on
    ep._received(rtp(b"\x03" * 160, seq=2), ASTERISK)
    assert ep.sink.audio == [b"\x01" * 160, b"\x03" * 160] and ep.stats.relatched == 0
    assert not ep.set_peer(*FOREIGN)  # once reported, never moved


def test_a_new_ssrc_from_asterisks_address_waits_for_the_old_one_to_fall_silent(ep, clock):
    """Asterisk may start a new SSRC on the same address (a bridge change): taken once the old stream has
    been silent SSRC_CHANGE_AFTER, never while it flows (a packet forged with Asterisk's address)."""
    assert ep.set_peer(*ASTERISK)
    ep._received(rtp(b"\x01" * 160, seq=1), ASTERISK)
    clock.now += 0.02
    before = dropped("ssrc")
    ep._received(rtp(b"\x09" * 160, ssrc=0x777, seq=900), ASTERISK)
    assert ep.sink.audio == [b"\x01" * 160] and ep.stats.dropped_ssrc == 1 and dropped("ssrc") - before == 1
    clock.now += 0.02
    ep._received(rtp(b"\x02" * 160, seq=2), ASTERISK)  # the old stream goes on
    clock.now += rtp_endpoint.SSRC_CHANGE_AFTER
    ep._received(rtp(b"\x03" * 160, ssrc=0x777, seq=901), ASTERISK)
    assert ep.sink.audio == [b"\x01" * 160, b"\x02" * 160, b"\x03" * 160] and ep.stats.ssrc_changes == 1
    clock.now += 0.02
    ep._received(rtp(b"\x04" * 160, seq=3), ASTERISK)  # now the old SSRC is the stranger
    assert ep.sink.audio[-1] == b"\x03" * 160 and ep.stats.dropped_ssrc == 2


def test_a_host_outside_the_allow_list_is_never_heard_nor_taken_as_the_peer(ep, clock):
    before = dropped("host")
    ep._received(rtp(b"\x01" * 160), ("192.0.2.7", 40002))
    assert ep.latched is None and ep.sink.audio == [] and dropped("host") - before == 1
    ep.peer_unknown()  # not even as the first packet
    ep._received(rtp(b"\x01" * 160), ("192.0.2.7", 40002))
    assert ep.latched is None and ep.sink.audio == [] and dropped("host") - before == 2
    assert not ep.set_peer("192.0.2.7", 40002)  # nor is a reported address outside the list taken
    assert ep.send(b"\x7f" * 160) is False and ep.wire.sent == []


def test_our_own_ssrc_never_latches_nor_counts_as_a_stream(ep, clock):
    assert ep.set_peer(*ASTERISK)
    ep._received(rtp(b"\x01" * 160, ssrc=ep.sender.ssrc), ASTERISK)
    clock.now += 5.0
    ep._received(rtp(b"\x01" * 160, ssrc=ep.sender.ssrc), ASTERISK)
    assert ep.sink.audio == [] and ep.stats.dropped_loop == 2


def test_refusals_are_logged_once_per_source_not_per_packet(ep, clock, caplog, monkeypatch):
    monkeypatch.setattr(rtp_endpoint, "_refusals", RefusalLog(rtp_endpoint.log, "RTP"))
    assert ep.set_peer(*ASTERISK)
    with caplog.at_level(logging.WARNING, logger="media.rtp"):
        for seq in range(100):
            ep._received(rtp(b"\x02" * 160, ssrc=0x666, seq=seq), FOREIGN)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0].getMessage() and ep.stats.dropped_source == 100


async def test_over_loopback_a_foreign_sender_gets_nothing_and_is_not_heard():
    """Real sockets: the stranger speaks first, Asterisk's address is then reported; the agent's audio
    reaches Asterisk only, and the stranger's audio after the report reaches no one."""
    loop = asyncio.get_running_loop()
    received: dict[str, list[bytes]] = {"asterisk": [], "foreign": []}

    class Peer(asyncio.DatagramProtocol):
        def __init__(self, name: str):
            self.name = name

        def datagram_received(self, data, addr):
            received[self.name].append(data)

    asterisk, _ = await loop.create_datagram_endpoint(lambda: Peer("asterisk"), local_addr=("127.0.0.1", 0))
    foreign, _ = await loop.create_datagram_endpoint(lambda: Peer("foreign"), local_addr=("127.0.0.1", 0))
    sinks: list[Sink] = []
    ep = RtpEndpoint(
        "127.0.0.1", 0, "ulaw", lambda link: sinks.append(Sink(link)) or sinks[-1], allowed_hosts=["127.0.0.1"]
    )
    await ep.open()
    to_ep = ("127.0.0.1", ep.local_port)
    try:
        foreign.sendto(rtp(b"\x01" * 160, ssrc=0x666), to_ep)
        for _ in range(200):
            if ep.stats.dropped_source:
                break
            await asyncio.sleep(0.005)
        assert ep.set_peer("127.0.0.1", asterisk.get_extra_info("sockname")[1])
        for seq in range(2, 22):
            foreign.sendto(rtp(b"\x02" * 160, ssrc=0x666, seq=seq), to_ep)
            assert ep.send(b"\x7f" * 160)
        asterisk.sendto(rtp(b"\x05" * 160), to_ep)
        for _ in range(400):
            if len(received["asterisk"]) == 20 and ep.stats.frames_in == 1 and ep.stats.dropped_source == 21:
                break
            await asyncio.sleep(0.005)
        assert len(received["asterisk"]) == 20 and received["foreign"] == []
        assert {rtp_codec.parse(p).payload for p in received["asterisk"]} == {b"\x7f" * 160}
        assert sinks[0].audio == [b"\x05" * 160] and ep.stats.dropped_source == 21
    finally:
        ep.close()
        asterisk.close()
        foreign.close()


def test_the_refusal_log_reports_the_count_when_the_interval_has_passed(monkeypatch, caplog):
    import shared.logs

    fake = Clock()
    monkeypatch.setattr(shared.logs, "time", fake)
    book = RefusalLog(logging.getLogger("test.refusals"), "RTP", interval=60.0)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        assert book.refused("192.0.2.7", "host", "port %d", 41800)
        assert not any(book.refused("192.0.2.7", "host", "port %d", 41800) for _ in range(9))
        assert book.refused("192.0.2.8", "host")  # another source has its own line
        fake.now += 60.0
        assert book.refused("192.0.2.7", "host", "port %d", 41800)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "port 41800" in lines[0] and "9 more like this" in lines[2]
