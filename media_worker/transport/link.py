"""What a call session sees of its media connection, whatever the transport carries it."""

from __future__ import annotations

import asyncio
from typing import Protocol

import msgspec


class LinkStats(msgspec.Struct):
    """Per-link counters; plain attribute increments on the hot path (no locks, no metrics calls per frame)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0  # wire bytes, headers included
    bytes_out: int = 0
    dropped_out: int = 0  # send() refused: socket gone, write buffer over its bound, or nowhere to send yet
    bad_in: int = 0  # malformed input (AudioSocket protocol error, RTP that does not parse)
    dtmf_in: int = 0
    dropped_source: int = 0  # RTP from a host or port other than the latched source
    dropped_ssrc: int = 0  # RTP from the latched source with another SSRC while the latched one flows
    dropped_pt: int = 0  # RTP with another payload type than the link's
    dropped_loop: int = 0  # RTP carrying our own SSRC (our audio looped back)
    relatched: int = 0  # RTP: Asterisk's reported address replaced the source of the first packets
    ssrc_changes: int = 0  # RTP: a new SSRC from the latched source after the old one fell silent


class MediaSink(Protocol):
    """Implemented by the call session. Called on the event loop; must not block.

    on_audio gets one wire frame as received: AudioSocket: slin little-endian at the link's rate; RTP: the
    payload, ulaw bytes or slin *big-endian*; WebSocket: one BINARY message, ulaw or slin little-endian.
    on_hangup is called exactly once per link that had a sink, with "hangup" (0x00 from Asterisk), "closed"
    (EOF or reset), "error" (0xff, a protocol error, a socket error) or "stopped" (the server or endpoint was
    stopped) — and never after the session itself called link.close(). on_format(fmt) is called once if
    the first audio frame's kind differs from the format the session expected (AudioSocket: the frame's kind
    says its format; the other transports carry the one negotiated).
    """

    def on_audio(self, payload: bytes) -> None: ...

    def on_dtmf(self, digit: str) -> None: ...

    def on_hangup(self, reason: str) -> None: ...

    def on_format(self, fmt: str) -> None: ...


class MediaLink(Protocol):
    """Implemented by the transports, one per call."""

    transport: str  # "audiosocket" | "rtp" | "websocket"
    format: str  # "slin" | "slin16" | "slin24" (AudioSocket), "ulaw" | "slin" (RTP), all four (WebSocket)
    rate: int
    frame_bytes: int  # bytes of one 20 ms wire frame (payload only)
    peer: str  # "host:port" of Asterisk's side ("" while an RTP endpoint has not latched)
    stats: LinkStats

    def send(self, payload: bytes | bytearray) -> bool:
        """One wire frame toward Asterisk, written at once, never blocking; False (and counted) if dropped."""
        ...

    def close(self, hangup: bool = True) -> None:
        """AudioSocket: send 0x00 (if hangup) then close; RTP: stop sending and close the socket; WebSocket:
        HANGUP (if hangup) and a close frame."""
        ...

    def flush(self) -> asyncio.Future[int] | None:
        """Barge-in: drop what Asterisk still queues of our audio. The future gets the frames dropped; None
        where Asterisk queues nothing of ours (AudioSocket, RTP: every frame is played as it arrives)."""
        ...

    def summary(self) -> dict[str, int | float]:
        """Transport figures for the call record, once at the end (WebSocket: Asterisk's queue depth)."""
        ...


def frame_bytes(rate: int, bytes_per_sample: int = 2) -> int:
    """Payload bytes of 20 ms at `rate`."""
    return rate // 50 * bytes_per_sample
