"""Callers on a real Asterisk: each one a Local channel into a dialplan context (the agent's entry point), its
near half held by an ARI app of our own and bridged with an ExternalMedia RTP leg to a UDP socket here, so a
test can speak into the call and hear the agent, frame by frame, with arrival times.

    caller socket (here) <-RTP-> UnicastRTP ─┐
                                             ├ bridge (ours)       Local ;2 → dialplan → Stasis(agent app)
                                  Local ;1 ──┘        ;1 <-> ;2

The near half is made with `POST /channels/create` and dialled only once it sits in our bridge, so nothing
the agent says after the answer is missed. The caller's RTP leg, like every new channel on the real PBX,
enters Stasis after the REST answer: steps wait for its StasisStart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field

from sim.ari_app import AriApp, AriAppError
from sim.asterisk.audio import VOICED_DBFS, CallerAudio, Recorder, rms_dbfs
from sim.asterisk.rtp import build_packet, decode_payload, encode_payload, parse_packet

log = logging.getLogger("pbx-caller")

APP = "va-test-caller"
RATE = 8000  # the caller's leg is a phone: slin at 8 kHz (RTP payload type 10, the static one chan_rtp takes)
FORMAT, PT = "slin", 10
FRAME_SAMPLES = RATE // 50


class CallerError(AriAppError):
    pass


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self, leg: CallerLeg):
        self.leg = leg

    def datagram_received(self, data: bytes, addr) -> None:
        self.leg._rtp_in(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


@dataclass
class CallerLeg:
    """One caller: its Local half (`id`), the half the agent sees (`peer_id`), and what it heard."""

    pbx: PbxCaller
    id: str
    peer_id: str
    context: str
    heard: Recorder = field(default_factory=Recorder)
    voiced: list[float] = field(default_factory=list)  # arrival time of every heard frame that holds speech
    answered_at: float | None = None  # monotonic, when the far end answered (Dial ANSWER)
    dial_status: str = ""
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    _transport: asyncio.DatagramTransport | None = None
    _asterisk_rtp: tuple[str, int] | None = None
    _seq: int = field(default_factory=lambda: random.randrange(1 << 16))
    _ts: int = field(default_factory=lambda: random.randrange(1 << 32))
    _ssrc: int = field(default_factory=lambda: random.randrange(1 << 32))

    @property
    def bridge_id(self) -> str:
        return f"{self.id}-br"

    @property
    def rtp_id(self) -> str:
        return f"{self.id}-rtp"

    def _rtp_in(self, data: bytes, addr) -> None:
        packet = parse_packet(data)
        if packet is None or packet.pt != PT:
            return
        pcm = decode_payload(packet.payload, FORMAT)
        if pcm is not None:
            now = time.monotonic()
            self.heard.append(pcm, RATE, now)
            if rms_dbfs(pcm) > VOICED_DBFS:
                self.voiced.append(now)

    def send_frame(self, pcm: bytes) -> None:
        if self._transport is None or self._asterisk_rtp is None:
            return
        self._transport.sendto(
            build_packet(PT, self._seq, self._ts, self._ssrc, encode_payload(pcm, FORMAT)), self._asterisk_rtp
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + len(pcm) // 2) & 0xFFFFFFFF

    async def say(self, audio: CallerAudio) -> None:
        """Speak `audio` into the call in real time, 20 ms a frame on an absolute clock (no drift)."""
        start = time.monotonic()
        n = 0
        while not self.gone.is_set():
            frame = audio.frame(RATE)
            if frame is None:
                return
            self.send_frame(frame[0])
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    def first_voiced_after(self, t0: float) -> float | None:
        return next((t for t in self.voiced if t >= t0), None)

    def voiced_between(self, t0: float, t1: float) -> int:
        """How many heard frames held speech in [t0, t1)."""
        return sum(1 for t in self.voiced if t0 <= t < t1)

    async def hangup(self) -> None:
        await self.pbx.delete(f"/channels/{self.id}")
        await asyncio.wait_for(self.gone.wait(), 10)

    async def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for path in (f"/channels/{self.rtp_id}", f"/bridges/{self.bridge_id}"):
            await self.pbx.delete(path)


class PbxCaller(AriApp):
    """An ARI client of its own (app `va-test-caller`) that places callers into a real Asterisk."""

    error = CallerError

    def __init__(self, ari_url: str, user: str, password: str, app: str = APP, host: str = "127.0.0.1"):
        super().__init__(ari_url, user, password, app)
        self.host = host
        self.legs: dict[str, CallerLeg] = {}
        self._entered: dict[str, asyncio.Event] = {}
        self._answered: dict[str, asyncio.Future] = {}
        self._run = os.urandom(3).hex()
        self._n = 0

    async def before_close(self) -> None:
        for leg in list(self.legs.values()):
            if not leg.gone.is_set():
                await self.delete(f"/channels/{leg.id}")
            await leg._close()

    # --- events ----------------------------------------------------------------------------------------
    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "StasisStart":
            self._event_for(event["channel"]["id"]).set()
        elif kind == "Dial" and event.get("peer", {}).get("id") in self.legs:
            leg = self.legs[event["peer"]["id"]]
            leg.dial_status = event.get("dialstatus", "")
            if leg.dial_status == "ANSWER" and leg.answered_at is None:
                leg.answered_at = time.monotonic()
            done = self._answered.get(leg.id)
            if done is not None and not done.done() and leg.dial_status not in ("", "RINGING", "PROGRESS"):
                done.set_result(leg.dial_status)
        elif kind in ("StasisEnd", "ChannelDestroyed"):
            ended = self.legs.get(event["channel"]["id"])
            if ended is not None:
                ended.gone.set()
                done = self._answered.get(ended.id)
                if done is not None and not done.done():
                    done.set_result(ended.dial_status or "HANGUP")

    def _event_for(self, channel_id: str) -> asyncio.Event:
        return self._entered.setdefault(channel_id, asyncio.Event())

    async def _in_stasis(self, channel_id: str, timeout: float = 5) -> None:
        try:
            await asyncio.wait_for(self._event_for(channel_id).wait(), timeout)
        except asyncio.TimeoutError:
            raise CallerError(f"{channel_id} did not enter Stasis within {timeout:g}s") from None

    # --- a call ----------------------------------------------------------------------------------------
    async def call(
        self, context: str = "from-ai-agent-openai", variables: dict[str, str] | None = None, answer_timeout: float = 15
    ) -> CallerLeg:
        """Place a caller into `context` and return once the far end answered (or raise)."""
        self._n += 1
        leg_id = f"vacaller-{self._run}-{self._n}"
        leg = CallerLeg(self, leg_id, f"{leg_id}-2", context)
        self.legs[leg_id] = leg
        loop = asyncio.get_running_loop()
        leg._transport, _ = await loop.create_datagram_endpoint(lambda: _Rtp(leg), local_addr=(self.host, 0))
        port = leg._transport.get_extra_info("sockname")[1]
        await self.request(
            "POST",
            "/channels/create",
            {
                "endpoint": f"Local/s@{context}",
                "app": self.app,
                "channelId": leg.id,
                "otherChannelId": leg.peer_id,
                "formats": FORMAT,
            },
            {"variables": variables or {}},
        )
        await self.request("POST", "/bridges", {"type": "mixing", "bridgeId": leg.bridge_id})
        rtp = await self.request(
            "POST",
            "/channels/externalMedia",
            {
                "app": self.app,
                "channelId": leg.rtp_id,
                "external_host": f"{self.host}:{port}",
                "format": FORMAT,
                "encapsulation": "rtp",
                "transport": "udp",
            },
        )
        variables_back = rtp.get("channelvars") or {}
        address = variables_back.get("UNICASTRTP_LOCAL_ADDRESS")
        rtp_port = variables_back.get("UNICASTRTP_LOCAL_PORT")
        if not address or not rtp_port:
            raise CallerError(f"externalMedia gave no UNICASTRTP_LOCAL_ADDRESS/PORT: {variables_back}")
        leg._asterisk_rtp = (address, int(rtp_port))
        await asyncio.gather(self._in_stasis(leg.id), self._in_stasis(leg.rtp_id))
        await self.request("POST", f"/bridges/{leg.bridge_id}/addChannel", {"channel": f"{leg.id},{leg.rtp_id}"})
        answered = self._answered[leg.id] = loop.create_future()
        await self.request("POST", f"/channels/{leg.id}/dial", {"timeout": str(int(answer_timeout))})
        try:
            status = await asyncio.wait_for(answered, answer_timeout + 2)
        except asyncio.TimeoutError:
            raise CallerError(f"{context}: no answer within {answer_timeout:g}s") from None
        if status != "ANSWER":
            raise CallerError(f"{context}: dial status {status}")
        return leg
