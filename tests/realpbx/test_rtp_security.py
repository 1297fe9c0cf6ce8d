"""A stranger sending RTP to the call's worker port, on the real Asterisk (issue 16: RTP stream takeover).

On loopback the stranger is 127.0.0.1 like Asterisk, so the allow-list cannot tell them apart: the port and
SSRC Asterisk reported for the call's channel must. The stranger sends a loud tone to the port the call will
get before the call is placed, through the greeting and through the silence after it; the caller, silent
throughout, must still hear the greeting, the stranger must receive nothing, and no audio of its tone may
reach the Realtime session. Before the fix the stranger took the call over (303 packets of the agent's audio
when it spoke first, 176 after 2.7 s of silence).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct

import numpy as np

from sim.cluster import http_get
from sim.realtime import Reply, Script, g711
from tests.media_harness import until
from tests.realpbx.pbx_harness import (  # noqa: F401  (fixtures)
    PROFILES,
    _rtp_range,
    aredis,
    call_of,
    emulator,
    keys,
    nothing_of_the_call_left,
    pbx,
    pbx_cluster,
)

GREETING_MS = 1500
SILENCE_AFTER_S = 3.0  # longer than the 2 s after which the endpoint used to re-latch to another source
TONE = g711.encode((np.sin(2 * math.pi * 1000 * np.arange(160) / 8000) * 16000).astype("<i2"), "audio/pcmu")


class Stranger(asyncio.DatagramProtocol):
    """Sends a 1 kHz tone every 20 ms to each target port of 127.0.0.1; keeps whatever comes back."""

    def __init__(self) -> None:
        self.targets: set[int] = set()
        self.received: list[bytes] = []
        self.sent = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)

    async def run(self, stop: asyncio.Event) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            packet = struct.pack(">BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x0BADBEEF) + TONE
            for port in list(self.targets):
                self.transport.sendto(packet, ("127.0.0.1", port))
                self.sent += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.02)
            except TimeoutError:
                pass


def metric(text: str, name: str, reason: str) -> float:
    found = re.search(rf'^{name}{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def loudest_input(emu) -> int:
    """The loudest sample of all caller audio the worker appended to the Realtime sessions (u-law)."""
    peak = 0
    for session in emu.sessions:
        for event in session.received:
            if event["type"] == "input_audio_buffer.append":
                pcm = g711.decode(base64.b64decode(event["audio"]), "audio/pcmu")
                peak = max(peak, int(np.abs(pcm.astype(np.int32)).max(initial=0)))
    return peak


async def test_a_stranger_on_the_worker_port_is_neither_heard_nor_answered(pbx_cluster, pbx, emulator, aredis, keys):
    emu = await emulator(Script(greeting=Reply(text="Hello, thanks for calling.", audio_ms=GREETING_MS)), speed=4.0)
    cluster = await pbx_cluster(emu, PROFILES["rtp-ulaw"])
    worker = next(p for p in cluster.processes if p.role == "media-worker")
    low = int(_rtp_range(1, 0).split("-")[0])  # the admission script gives the first call the range's first port
    loop = asyncio.get_running_loop()
    transport, stranger = await loop.create_datagram_endpoint(Stranger, local_addr=("127.0.0.1", 0))
    stranger.targets.add(low)
    stop = asyncio.Event()
    spraying = asyncio.create_task(stranger.run(stop))
    try:
        await asyncio.sleep(0.2)  # the stranger speaks first
        leg = await pbx.call()
        call_id = await call_of(aredis, keys, leg.peer_id)
        stranger.targets.add(int(await aredis.hget(keys.call(call_id), "rtp_port")))
        await until(lambda: leg.first_voiced_after(leg.answered_at), timeout=5)  # the silent caller hears it
        await asyncio.sleep(GREETING_MS / 1000 + SILENCE_AFTER_S)  # the greeting, then a long silence
        assert leg.voiced_between(leg.answered_at, leg.answered_at + 10) >= GREETING_MS // 20 // 2
        stop.set()
        await spraying
        assert stranger.received == [], f"the stranger got {len(stranger.received)} packets of the agent's audio"
        assert loudest_input(emu) < 1000, "the stranger's tone reached the Realtime session"
        status, body = await asyncio.to_thread(http_get, worker.health_url + "/metrics")
        assert status == 200
        metrics = body.decode()
        dropped = {r: metric(metrics, "va_rtp_dropped_total", r) for r in ("early", "source", "ssrc")}
        assert sum(dropped.values()) > 50, dropped  # the tone did reach the port, and was dropped there
        await leg.hangup()
        await nothing_of_the_call_left(aredis, keys, call_id)
    finally:
        stop.set()
        await asyncio.gather(spraying, return_exceptions=True)
        transport.close()
