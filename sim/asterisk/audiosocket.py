"""AudioSocket as chan_audiosocket speaks it: Asterisk is the TCP client of the media worker.

Wire: kind(1) | length(2, big-endian) | payload; audio is little-endian slin at the kind's rate
(as a real Asterisk 22.10.1 sends it). Asterisk does not re-time AudioSocket: what either side writes is
forwarded at once, so the sender owns the 20 ms clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import uuid as uuid_module
from collections.abc import Callable

from sim.asterisk.audio import StreamResampler, stream_resampler, samples_per_frame

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_ERROR = 0xFF
KIND_BY_FORMAT = {
    "slin": 0x10,
    "slin12": 0x11,
    "slin16": 0x12,
    "slin24": 0x13,
    "slin32": 0x14,
    "slin44": 0x15,
    "slin48": 0x16,
    "slin96": 0x17,
    "slin192": 0x18,
}
RATE_BY_FORMAT = {
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin44": 44100,
    "slin48": 48000,
    "slin96": 96000,
    "slin192": 192000,
}
AUDIO_KINDS = frozenset(KIND_BY_FORMAT.values())
DTMF_DIGITS = frozenset("0123456789*#ABCD")
HEADER = struct.Struct(">BH")
# The length field allows 64 KiB; a worker frame beyond this is a bug, not audio (20 ms of slin24 is 960 B).
MAX_PAYLOAD = 16384
# Bytes queued toward a worker that does not read: beyond this, frames are dropped rather than buffered.
MAX_WRITE_BUFFER = 1 << 20


class ProtocolError(Exception):
    pass


class AudioSocketConnectError(Exception):
    """Asterisk could not set the AudioSocket channel up (the ARI POST answers 500)."""


def encode(kind: int, payload: bytes = b"") -> bytes:
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"kind {kind} is not one byte")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit the 16-bit length")
    return HEADER.pack(kind, len(payload)) + payload


class FrameParser:
    """Sans-I/O reader: feed(bytes) -> complete (kind, payload) frames; a partial frame waits for more."""

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > self.max_payload:
                raise ProtocolError(f"frame kind 0x{kind:02x} declares {length} bytes (limit {self.max_payload})")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames


class AudioSocketLeg:
    """The Asterisk end of one AudioSocket channel.

    Worker -> Asterisk: audio of the leg's kind goes to on_audio(pcm, rate) as sent (any frame size);
    0x00 ends with on_hangup("hangup"), 0xff with on_hangup("error"), EOF with on_hangup("closed"); a malformed
    frame, another audio kind, or any other kind is an error (on_hangup("error") and the socket is closed),
    as chan_audiosocket hangs up on a frame it cannot read. on_hangup is called at most once, and not after
    close() (Asterisk hung up itself then).
    """

    def __init__(
        self,
        host: str,
        port: int,
        uuid: str,
        fmt: str,
        *,
        on_audio: Callable[[bytes, int], None],
        on_hangup: Callable[[str], None],
        connect_timeout: float = 2.0,
    ):
        if fmt not in KIND_BY_FORMAT:
            raise ValueError(f"unknown AudioSocket format {fmt!r}")
        self.host, self.port, self.uuid, self.fmt = host, port, uuid, fmt
        self.kind = KIND_BY_FORMAT[fmt]
        self.rate = RATE_BY_FORMAT[fmt]
        self.frame_bytes = 2 * samples_per_frame(self.rate)
        self.on_audio, self.on_hangup = on_audio, on_hangup
        self.connect_timeout = connect_timeout
        self.connected_t: float | None = None
        self.local_port: int | None = None
        self.bytes_in = self.bytes_out = 0
        self.frames_in = self.frames_out = 0
        self.dropped_out = 0
        self.hangup_reason: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = bytearray()  # resampled audio short of a whole frame
        self._closed = False
        self._raw_uuid = b""

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        await self.open()
        self.identify()

    async def open(self) -> None:
        """The TCP connection alone: chan_audiosocket makes it while the channel is requested."""
        try:
            self._raw_uuid = uuid_module.UUID(self.uuid).bytes
        except (ValueError, TypeError, AttributeError) as exc:
            raise AudioSocketConnectError(f"data {self.uuid!r} is not a UUID") from exc
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise AudioSocketConnectError(f"AudioSocket server {self.host}:{self.port}: {exc!r}") from exc
        self.connected_t = time.monotonic()
        self.local_port = writer.get_extra_info("sockname")[1]
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader), name="audiosocket-read")

    def identify(self) -> None:
        """The UUID frame: chan_audiosocket sends it when the channel is called (audiosocket_call), which for
        externalMedia is in the dial thread after the ARI response."""
        if self._writer is None:
            raise AudioSocketConnectError("the UUID frame before the connection is open")
        self._write(self._writer, encode(KIND_UUID, self._raw_uuid))

    def deliver(self, pcm: bytes, rate: int) -> None:
        """Bridge audio toward the worker, in 20 ms frames written at once; dropped if the socket is gone."""
        if not pcm:
            return
        if rate == self.rate and not self._pending:
            data = pcm  # pass-through, like a 2-party bridge: a short frame stays short
        else:
            resampler = stream_resampler(self._resamplers, rate, self.rate)
            self._pending += resampler.process(pcm)
            whole = len(self._pending) - len(self._pending) % self.frame_bytes
            data, self._pending[:whole] = bytes(self._pending[:whole]), b""
        for start in range(0, len(data), self.frame_bytes):
            self._send(self.kind, data[start : start + self.frame_bytes])

    def send_dtmf(self, digit: str) -> None:
        if digit not in DTMF_DIGITS or len(digit) != 1:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self._send(KIND_DTMF, digit.encode("ascii"))

    async def close(self) -> None:
        """Asterisk hung the channel up: close TCP (no on_hangup follows)."""
        self._closed = True
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_socket()

    def _send(self, kind: int, payload: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.dropped_out += 1
            return
        self.frames_out += 1
        self._write(writer, encode(kind, payload))

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.bytes_out += len(data)

    async def _close_socket(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    def _hangup(self, reason: str) -> None:
        if self.hangup_reason is None and not self._closed:
            self.hangup_reason = reason
            self.on_hangup(reason)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = FrameParser()
        reason: str | None = None
        try:
            while reason is None:
                data = await reader.read(65536)
                if not data:
                    reason = "closed"
                    break
                self.bytes_in += len(data)
                for kind, payload in parser.feed(data):
                    reason = self._handle(kind, payload)
                    if reason is not None:
                        break
        except ProtocolError:
            reason = "error"
        except (OSError, ConnectionError):
            reason = "closed"
        self._reader_task = None
        await self._close_socket()
        self._hangup(reason)

    def _handle(self, kind: int, payload: bytes) -> str | None:
        """Act on one frame from the worker; the hangup reason if it ends the call."""
        if kind == KIND_HANGUP:
            return "hangup"
        if kind != self.kind or not payload:
            return "error"  # 0xff, another kind, or an empty audio frame
        self.frames_in += 1
        if len(payload) % 2:
            payload = payload[:-1]  # Asterisk counts len/2 samples: a stray odd byte is never played
        self.on_audio(payload, self.rate)
        return None
