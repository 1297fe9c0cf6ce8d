"""chan_websocket (WebSocket media, Asterisk ≥ 22.6) in server mode, as 22.10.1 behaves (checked against the
real one; see media_worker/transport/websocket_codec.py for the source-level notes).

- `POST /channels/externalMedia` transport=websocket encapsulation=none connection_type=server creates the
  channel Down, *outside* Stasis, with channel variables MEDIA_WEBSOCKET_CONNECTION_ID (a UUID) and
  MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE in the answer's channelvars. `transport_data=f(json)` selects JSON
  control messages. connection_type=client (a websocket_client.conf entry) is not simulated (400, as for an
  unknown client id).
- `GET /media/<connection_id>` on the HTTP server: 404 for an unknown id, 409 while one connection holds it.
  On the upgrade Asterisk sends MEDIA_START, answers the channel (Up), and it enters Stasis then: an
  addChannel before that answers 422.
- BINARY from the peer: cut into optimal_frame_size frames (a remainder is dropped), queued (1000 frames;
  beyond, whole messages are ignored; MEDIA_XOFF at 900, MEDIA_XON under 800) and played one frame per 20 ms
  tick into the bridge. TEXT: the commands (ANSWER, HANGUP, MARK_MEDIA → MEDIA_MARK_PROCESSED when the queue
  reaches the mark, FLUSH_MEDIA drops audio and marks, GET_STATUS → STATUS at once, REPORT_QUEUE_DRAINED,
  PAUSE_MEDIA/CONTINUE_MEDIA, START/STOP_MEDIA_BUFFERING); over 128 bytes or unknown: ignored.
- A message over 65,535 bytes (with its header) closes with 1009 and hangs the channel up; a close from the
  peer hangs the channel up; Asterisk hanging the channel up closes with 1000.
- Bridge audio toward the peer: one BINARY message per 20 ms frame, in the channel's format.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid as uuid_module
from collections.abc import Callable

from aiohttp import WSMsgType, web

from sim.asterisk.audio import StreamResampler, stream_resampler, samples_per_frame
from sim.asterisk.rtp import decode_payload, encode_payload

log = logging.getLogger("sim.asterisk.websocket")

RATE_BY_FORMAT = {
    "ulaw": 8000,
    "alaw": 8000,
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin48": 48000,
}
QUEUE_MAX, XOFF_LEVEL, XON_LEVEL = 1000, 900, 800
MAX_TEXT = 128
MAX_MESSAGE = 65535  # header included
MAX_PAYLOAD = MAX_MESSAGE - 8  # a masked client frame with a 16-bit length has an 8-byte header
OUT_QUEUE = 250  # frames buffered toward a peer that reads slowly (5 s), then dropped
TICK_S = 0.02


def frame_bytes(fmt: str) -> int:
    return samples_per_frame(RATE_BY_FORMAT[fmt]) * (1 if fmt in ("ulaw", "alaw") else 2)


def _json_option(transport_data: str | None) -> bool:
    return transport_data is not None and "f(json)" in transport_data.replace(" ", "")


class WebSocketMediaLeg:
    """The Asterisk end of one chan_websocket channel (server mode).

    on_audio(pcm, rate): a frame dequeued by the 20 ms timer, as little-endian slin, toward the bridge.
    on_connected(): the peer connected (the channel is answered and enters Stasis).
    on_hangup(reason): the peer closed, sent HANGUP, or broke the protocol (at most once; never after close()).
    """

    def __init__(
        self,
        fmt: str,
        channel_id: str,
        channel_name: str,
        *,
        json_control: bool,
        on_audio: Callable[[bytes, int], None],
        on_connected: Callable[[], None],
        on_hangup: Callable[[str], None],
    ):
        if fmt not in RATE_BY_FORMAT:
            raise ValueError(f"format {fmt!r} not simulated for WebSocket media")
        self.fmt = fmt
        self.rate = RATE_BY_FORMAT[fmt]
        self.frame_bytes = frame_bytes(fmt)
        self.connection_id = str(uuid_module.uuid4())
        self.channel_id, self.channel_name = channel_id, channel_name
        self.json = json_control
        self.on_audio, self.on_connected, self.on_hangup = on_audio, on_connected, on_hangup
        self.queue: collections.deque[bytes | str] = collections.deque()  # audio frames and mark events
        self.queue_length = 0  # audio frames only, as chan_websocket counts
        self.queue_full = False
        self.paused = False
        self.bulk = False
        self.report_drained = False
        self.leftover = b""
        self.ws: web.WebSocketResponse | None = None
        self.connected_t: float | None = None
        self.frames_in = self.frames_out = self.dropped_in = self.dropped_out = 0
        self.flushes = 0
        self.commands: list[str] = []  # every command received, in order (tests read it)
        self.hangup_reason: str | None = None
        self._closed = False
        self._closing: asyncio.Task | None = None
        self._out: collections.deque[bytes | str] = collections.deque()
        self._out_ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = bytearray()

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    # --- the HTTP side -------------------------------------------------------------------------------------
    async def serve(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("media",), max_msg_size=MAX_PAYLOAD, autoping=True)
        await ws.prepare(request)
        self.ws = ws
        self.connected_t = asyncio.get_running_loop().time()
        self._event(
            "MEDIA_START",
            connection_id=self.connection_id,
            channel=self.channel_name,
            channel_id=self.channel_id,
            format=self.fmt,
            optimal_frame_size=self.frame_bytes,
            ptime=20,
        )
        self._tasks = [
            asyncio.create_task(self._writer(ws), name="ws-media-write"),
            asyncio.create_task(self._timer(), name="ws-media-timer"),
        ]
        self.on_connected()  # auto-answer (no `n` option): Up, then Stasis
        reason = "closed"
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    self._binary(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    if self._text(msg.data):
                        reason = "hangup"
                        break
                elif msg.type == WSMsgType.ERROR:
                    reason = "error"
                    break
        finally:
            if ws.close_code == 1009:
                reason = "error"  # aiohttp closed it: the message was too big, as res_http_websocket does
            for task in self._tasks:
                task.cancel()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=1000)
            self._hangup(reason)
        return ws

    # --- peer -> Asterisk ----------------------------------------------------------------------------------
    def _binary(self, data: bytes) -> None:
        if self.queue_length >= QUEUE_MAX:
            self.dropped_in += 1
            return
        size = self.frame_bytes
        if self.bulk and self.leftover:
            need = size - len(self.leftover)
            self.leftover += data[:need]
            data = data[need:]
            if len(self.leftover) < size:
                return
            self._queue_frame(self.leftover)
            self.leftover = b""
        whole = len(data) - len(data) % size
        for start in range(0, whole, size):
            self._queue_frame(data[start : start + size])
        if len(data) > whole:
            if self.bulk:
                self.leftover = data[whole:]
            else:
                self.dropped_in += 1  # chan_websocket drops the part short of a frame

    def _queue_frame(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.queue_length += 1
        self.frames_in += 1
        if not self.queue_full and self.queue_length >= XOFF_LEVEL:
            self.queue_full = True
            self._event("MEDIA_XOFF")

    def _text(self, text: str) -> bool:
        """Handle one command; True if it hangs the channel up."""
        if len(text.encode()) > MAX_TEXT or not text.strip():
            return False
        text = text.strip()
        correlation = ""
        if self.json:
            try:
                body = json.loads(text)
                name = body["command"]
                correlation = str(body.get("correlation_id") or "")
            except (ValueError, KeyError, TypeError):
                self._event("ERROR", error_text="Unable to parse JSON command")
                return False
        else:
            name, _, correlation = text.partition(" ")
        self.commands.append(name)
        if name == "HANGUP":
            return True
        if name == "GET_STATUS":
            self._event(
                "STATUS",
                queue_length=self.queue_length,
                xon_level=XON_LEVEL,
                xoff_level=XOFF_LEVEL,
                queue_full=self.queue_full,
                bulk_media=self.bulk,
                media_paused=self.paused,
            )
        elif name == "FLUSH_MEDIA":
            self.queue.clear()  # marks included: a mark behind flushed audio is never acknowledged
            self.queue_length = 0
            self.bulk = False
            self.leftover = b""
            self.flushes += 1
        elif name == "MARK_MEDIA":
            self.queue.append(self._event_text("MEDIA_MARK_PROCESSED", correlation_id=correlation))
        elif name == "REPORT_QUEUE_DRAINED":
            self.report_drained = True
        elif name == "PAUSE_MEDIA":
            self.paused = True
        elif name == "CONTINUE_MEDIA":
            self.paused = False
        elif name == "START_MEDIA_BUFFERING":
            self.bulk = True
        elif name == "STOP_MEDIA_BUFFERING":
            self.bulk = False
            if self.leftover:
                self._queue_frame(self.leftover)
                self.leftover = b""
            self.queue.append(self._event_text("MEDIA_BUFFERING_COMPLETED", correlation_id=correlation))
        # ANSWER: the channel is already up (auto-answer); unknown commands are ignored with a warning
        return False

    async def _timer(self) -> None:
        """chan_websocket's channel timer: one dequeue per 20 ms (drift-free)."""
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += TICK_S
            await asyncio.sleep(max(next_t - loop.time(), 0))
            frame = self._dequeue()
            if frame is not None:
                pcm = decode_payload(frame, self.fmt) if self.fmt in ("ulaw", "alaw") else frame
                if pcm:
                    self.on_audio(pcm, self.rate)

    def _dequeue(self) -> bytes | None:
        if self.paused:
            return None
        if self.queue_full and self.queue_length < XON_LEVEL:
            self.queue_full = False
            self._event("MEDIA_XON")
        queue = self.queue
        while queue and isinstance(queue[0], str):
            self._send(queue.popleft())  # marks before the next frame are reported without using a tick
        if not queue:
            if self.report_drained:
                self.report_drained = False
                self._event("QUEUE_DRAINED")
            return None
        frame = queue.popleft()
        self.queue_length -= 1
        assert isinstance(frame, bytes)
        return frame

    # --- Asterisk -> peer ----------------------------------------------------------------------------------
    def deliver(self, pcm: bytes, rate: int) -> None:
        """Bridge audio toward the peer: one BINARY message per 20 ms frame."""
        if not pcm or not self.connected:
            return
        size = 2 * samples_per_frame(self.rate)
        if rate == self.rate and not self._pending:
            data = pcm
        else:
            resampler = stream_resampler(self._resamplers, rate, self.rate)
            self._pending += resampler.process(pcm)
            whole = len(self._pending) - len(self._pending) % size
            data, self._pending[:whole] = bytes(self._pending[:whole]), b""
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            self._send(encode_payload(chunk, self.fmt) if self.fmt in ("ulaw", "alaw") else chunk)

    def _send(self, message: bytes | str) -> None:
        if len(self._out) >= OUT_QUEUE:
            self.dropped_out += 1
            return
        if isinstance(message, bytes):
            self.frames_out += 1
        self._out.append(message)
        self._out_ready.set()

    async def _writer(self, ws: web.WebSocketResponse) -> None:
        out = self._out
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self._out_ready.wait()
                self._out_ready.clear()
                while out:
                    message = out.popleft()
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    else:
                        await ws.send_str(message)

    def _event_text(self, name: str, **fields) -> str:
        if self.json:
            body = {"event": name, "channel_id": self.channel_id} if name != "MEDIA_START" else {"event": name}
            body.update(fields)
            return json.dumps(body, separators=(",", ":"))
        if name in ("MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"):
            cid = fields.get("correlation_id") or ""
            return f"{name} {cid}" if cid else name
        if name == "MEDIA_START":
            return name + "".join(f" {k}:{v}" for k, v in fields.items())
        if name in ("MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED"):
            return name
        parts = [f"channel_id:{self.channel_id}"]
        for key, value in fields.items():
            parts.append(f"{key}:{str(value).lower() if isinstance(value, bool) else value}")
        return f"{name} " + " ".join(parts)

    def _event(self, name: str, **fields) -> None:
        self._send(self._event_text(name, **fields))

    # --- ends ------------------------------------------------------------------------------------------------
    def _hangup(self, reason: str) -> None:
        if self.hangup_reason is None and not self._closed:
            self.hangup_reason = reason
            self.on_hangup(reason)

    def close(self) -> None:
        """Asterisk hung the channel up: close with 1000 (no on_hangup follows). Not a coroutine: the close
        runs in a task of its own, so the simulator's shutdown (which cancels its tasks) cannot cut it off."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        ws = self.ws
        if ws is not None and not ws.closed:
            self._closing = asyncio.get_running_loop().create_task(self._close_ws(ws), name="ws-media-close")

    @staticmethod
    async def _close_ws(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=1000)


class WebSocketMediaServer:
    """The /media/<connection_id> endpoint: the legs waiting for (or holding) their connection."""

    def __init__(self) -> None:
        self.legs: dict[str, WebSocketMediaLeg] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("GET", "/media/{connection_id}", self.handle)

    def add(self, leg: WebSocketMediaLeg) -> None:
        self.legs[leg.connection_id] = leg

    def remove(self, leg: WebSocketMediaLeg) -> None:
        if self.legs.get(leg.connection_id) is leg:
            del self.legs[leg.connection_id]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        leg = self.legs.get(request.match_info["connection_id"])
        if leg is None:
            return web.Response(status=404, text="WebSocket instance not found")
        if leg.ws is not None:
            return web.Response(status=409, text="Another websocket connection exists for this connection id")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=426, text="Upgrade Required")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        if offered and "media" not in offered:
            return web.Response(status=400, text="no protocols out of the requested ones supported")
        return await leg.serve(request)


async def external_media(
    calls,
    server: WebSocketMediaServer,
    *,
    app: str,
    fmt: str,
    data: str | None,
    channel_id: str | None,
    variables: dict[str, str],
    transport_data: str | None,
) -> dict:
    """externalMedia transport=websocket connection_type=server: the channel, Down and outside Stasis until
    the peer connects to /media/<connection id>."""
    from sim.asterisk import events as ev
    from sim.asterisk.errors import internal
    from sim.asterisk.state import Channel

    pbx = calls.pbx
    if pbx.id_in_use(channel_id) or fmt not in RATE_BY_FORMAT:
        raise internal()
    ch = Channel(id=channel_id or pbx.ids.unique_id(), name=f"WebSocket/INCOMING/{pbx.ids.pointer()}", tech="WebSocket")
    args = data.split(",") if data else []
    stasis_data = app + ("," + data if data else "")

    def connected() -> None:
        if ch.destroyed or ch.hanging_up:
            return
        # auto-answer queues ANSWER; the originate's dial thread then sees it and runs Stasis, after a
        # scheduling delay of its own (as for the other externalMedia legs: Pbx.stasis_delay)
        pbx.set_state(ch, "Up")
        pbx.emit(ev.dial("ANSWER", ch.dialstring or "", pbx.snap(ch)), channels=[ch])
        pbx.run(ch, enter_stasis(), name="external")

    async def enter_stasis() -> None:
        await pbx.ari_thread_start(ch)
        await calls.ari_stasis(ch, app, args, stasis_data, dialplan_event=False)

    def on_hangup(reason: str) -> None:
        pbx.hangup(ch, 16, soft=False)  # chan_websocket queues a hangup: ChannelHangupRequest, cause 16

    leg = WebSocketMediaLeg(
        fmt,
        ch.id,
        ch.name,
        json_control=_json_option(transport_data),
        on_audio=lambda pcm, rate: pbx.read_from(ch, pcm, rate),
        on_connected=connected,
        on_hangup=on_hangup,
    )
    ch.media = leg
    ch.dialstring = "INCOMING" + (f"/{transport_data}" if transport_data else "")
    ch.on_destroy.append(lambda _ch: server.remove(leg))
    pbx.register(ch)
    pbx.set_var(ch, "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE", str(leg.frame_bytes))
    pbx.set_var(ch, "MEDIA_WEBSOCKET_CONNECTION_ID", leg.connection_id)
    ch.ari_created = True
    for key, value in variables.items():
        pbx.set_var(ch, key, value)
    pbx.set_dialplan_app(ch, "AppDial2", "(Outgoing Line)")
    response = ch.snapshot(None, override_vars=dict(reversed(list(ch.variables.items()))))
    pbx.apps.subscribe(app, ch)
    pbx.emit(ev.dial("", ch.dialstring, pbx.snap(ch)), channels=[ch])
    server.add(leg)
    return response
