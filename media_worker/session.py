"""One call's conversation on a media worker: the media link to Asterisk, the Realtime session, and the rules
between them (greeting, turn-taking, barge-in with truncation, echo guard, silence padding, transcripts).

Audio in (every 20 ms, from the transport): gate it (is the caller really speaking, or is that our own voice
coming back?), convert it, queue it for `input_audio_buffer.append`. Audio out: model deltas are converted
to wire frames and queued; the worker's clock ticks every 20 ms and sends exactly one frame per call.
Barge-in is decided here, not by the server (`interrupt_response: false`), so echo cannot cut the agent off:
the worker flushes its queue within one frame and truncates the item to what the caller really heard.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from media_worker.audio.convert import Converter, silence
from media_worker.audio.g711 import ulaw_decode
from media_worker.audio.gate import SpeechGate
from media_worker.audio.playout import PlayoutClock, PlayoutQueue
from media_worker.call_log import CallLog
from media_worker.realtime import events as ev
from media_worker.realtime.client import ClientSettings, Closed, RealtimeClient, RealtimeError, Reconnected
from media_worker.realtime.pool import SessionPool
from media_worker.realtime.protocol import AudioChunk, FunctionCall
from media_worker.tool_calls import ToolRunner
from media_worker.transport.link import MediaLink
from media_worker.usage import CallUsage
from shared.config.ga_session import build_session
from shared.config.schema import Config
from shared.keys import Keys
from shared.logs import bind_call
from shared.messages import Assignment
from shared.metrics import (
    AUDIOLESS,
    BARGEIN_SECONDS,
    CALL_COST,
    COST,
    GATE_CLOSURES,
    GREETING_SECONDS,
    INPUT_LATENCY,
    OUTPUT_LATENCY,
    PADDED,
    RATE_LIMIT_LIMIT,
    RATE_LIMIT_REMAINING,
    TOKENS,
    TRUNCATIONS,
    TURN_SECONDS,
    UNDERRUNS,
)
from shared.metrics import WORKER_CALLS as SESSIONS
from shared.tool_schemas import realtime_tools

log = logging.getLogger("session")

PROBE_EVERY = 25  # input latency is sampled one frame in this many: the per-frame path stays free of histograms

INPUT_SLACK_FRAMES = 3  # caller audio this late (60 ms) is a gap, padded with silence; jitter below is not
AUDIOLESS_RETRIES = 1
FRAME_MS = 20
FLUSH_COUNT_TIMEOUT = 0.25  # a barge-in waits this long for Asterisk's count of the frames it flushed


@dataclass
class WorkerContext:
    """What every call on a worker shares."""

    config: Config
    redis: aioredis.Redis
    keys: Keys
    worker_id: str
    clock: PlayoutClock
    pool: SessionPool
    realtime: ClientSettings


def wire_format(transport: str, fmt: str) -> str:
    """The converter's name for what travels between Asterisk and us (RTP slin is big-endian)."""
    return "slin_be" if transport == "rtp" and fmt == "slin" else fmt


class CallSession:
    def __init__(self, ctx: WorkerContext, assignment: Assignment):
        self.ctx = ctx
        self.assignment = assignment
        plan = assignment.plan
        self.plan = plan
        self.call_id = plan.call_id
        self.wire = wire_format(plan.transport, plan.format)
        self.conv = Converter(self.wire, plan.provider_format)
        self.playout = PlayoutQueue(self.conv.wire_frame_bytes, silence(self.wire))
        self.gate = SpeechGate(self.conv.wire_rate, ctx.config.vad.webrtc_aggressiveness)
        self._provider_silence = silence(plan.provider_format)
        self.log = CallLog(ctx.redis, ctx.keys, self.call_id)
        self.tools = ToolRunner(self)
        self.usage = CallUsage(ctx.config.providers.openai_realtime.pricing)
        # a scripted utterance (the farewell) and its progress
        self._say_pending = False
        self._say_response: str | None = None
        self._say_started = asyncio.Event()
        self._say_finished = False
        self._say_played = asyncio.Event()
        self.link: MediaLink | None = None
        self.client: RealtimeClient | None = None
        self.linked = asyncio.Event()
        self.finished = asyncio.Event()
        self.end_reason = ""
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._sender: asyncio.Task | None = None
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._outgoing_ready = asyncio.Event()
        # conversation state
        self._greeting_pending = False
        self._greeting_response: str | None = None
        self._greeting_item: str | None = None
        self._greeting_mode = bool(plan.greeting)
        self._greeting_deadline = 0.0
        self._caller_speaking = False
        self._response_audio: dict[str, int] = {}  # response id -> audio bytes received
        self._item_response: dict[str, str] = {}
        self._transcripts: dict[str, str] = {}  # assistant item -> transcript, logged once heard
        self._logged_items: set[str] = set()
        self._last_playing: str | None = None
        self._audioless_retries = 0
        # timing
        self._linked_t = 0.0
        self._turn_end_t: float | None = None
        self._awaiting_first_frame = False
        self._bargein_t: float | None = None
        self._ticks = 0
        self._frames_in = 0
        self._queued_total = 0
        self._sent_total = 0
        self._probe_t: float | None = None
        self._probe_seq = 0
        self._first_delta_t: dict[str, float] = {}  # item -> when its first audio arrived, until it plays
        self.stats = {
            "greeting_ms": "",
            "turn_ms": [],
            "bargein_ms": [],
            "truncations": 0,
            "audioless_responses": 0,
            "padded_frames": 0,
        }

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"session-{self.call_id}")
        SESSIONS.inc()

    def session_config(self) -> dict[str, Any]:
        config, plan = self.ctx.config, self.plan
        provider = config.providers.openai_realtime
        session = build_session(
            provider,
            instructions=plan.instructions,
            tools=realtime_tools(config, plan.tools),
            voice=plan.voice,
            input_format=plan.provider_format,
            output_format=plan.provider_format,
        )
        td = session["audio"]["input"].get("turn_detection")
        if td is not None and provider.turn_detection.interrupt_response is None:
            td["interrupt_response"] = False  # the worker decides barge-in (echo-aware), not the server
        return session

    async def _run(self) -> None:
        bind_call(self.call_id)
        timeout = self.ctx.config.media_worker.media_timeout_ms / 1000
        try:
            self.client = RealtimeClient(
                self.ctx.realtime,
                self.session_config(),
                history=self.log.history,
                is_quiet=lambda: self.playout.idle and not self._caller_speaking,
                connection_source=self.ctx.pool.take,
            )
            ready = await self.client.start()
            log.info("Realtime session %s ready for call %s", ready.session_id, self.call_id)
            self._sender = asyncio.create_task(self._send_forever(), name=f"append-{self.call_id}")
            if self.plan.greeting:
                await self._greet()
            events = asyncio.create_task(self._events_forever(), name=f"events-{self.call_id}")
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow stop()'s cancel on 3.11
                    await self.linked.wait()
            except TimeoutError:
                self.end_reason = self.end_reason or "media_timeout"
                log.warning("no media connection within %.0f s: dropping the call", timeout)
                events.cancel()
                return
            await events
        except RealtimeError as exc:
            self.end_reason = self.end_reason or "realtime_failed"
            log.error("Realtime session failed: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            self.end_reason = self.end_reason or "session_error"
            log.exception("call session failed")
        finally:
            await self._close()

    def stop(self, reason: str) -> None:
        """End the call from outside (media hangup, controller's end, worker shutdown)."""
        if not self.end_reason:
            self.end_reason = reason
        if self._stopping:
            return  # a second reason (the controller's end after the media hangup) must not cut the cleanup
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _close(self) -> None:
        if self.finished.is_set():
            return
        self.ctx.clock.remove(self.call_id)
        for task in (self._sender,):
            if task is not None:
                task.cancel()
        if self.link is not None:
            # We end the media leg ourselves only when the conversation broke (Asterisk then ends the leg and
            # the controller sends the caller to the fallback); when the caller left it is already gone.
            self.link.close(hangup=self.end_reason not in ("caller_hangup", "media_closed"))
        if self.client is not None:
            await self.client.close()
        self._log_heard(final=True)
        await self.log.flush()
        await self._save_stats()
        SESSIONS.dec()
        log.info(
            "call %s ended on the worker (%s): %d turns, %d barge-ins, %d gate closures",
            self.call_id,
            self.end_reason or "done",
            len(self.stats["turn_ms"]),
            len(self.stats["bargein_ms"]),
            self.gate.closures,
        )
        self.finished.set()

    async def _save_stats(self) -> None:
        s = self.stats
        # Counted per tick by the queue and the clock; added to the metrics once per call, off the frame path.
        UNDERRUNS.inc(self.playout.underruns)
        PADDED.inc(s["padded_frames"])
        GATE_CLOSURES.inc(self.gate.closures)
        usage = self.usage
        if usage.responses:
            CALL_COST.observe(usage.cost)
        fields = {
            "greeting_ms": s["greeting_ms"],
            "turn_ms": ",".join(str(v) for v in s["turn_ms"]),
            "bargein_ms": ",".join(str(v) for v in s["bargein_ms"]),
            "gate_closures": self.gate.closures,
            "truncations": s["truncations"],
            "audioless_responses": s["audioless_responses"],
            "underruns": self.playout.underruns,
            "padded_frames": s["padded_frames"],
            "worker_end_reason": self.end_reason or "done",
            "cost_usd": f"{usage.cost:.6f}",
            **{f"tokens_{kind}": n for kind, n in usage.totals.items()},
        }
        summary = getattr(self.link, "summary", None)  # transport figures (WebSocket: Asterisk's queue depth)
        if summary is not None:
            fields.update(summary())
        try:
            await self.ctx.redis.hset(self.ctx.keys.call(self.call_id), mapping=fields)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("could not save the call's figures: %s", exc)

    # --- the media link (MediaSink) --------------------------------------------------------------------
    def attach(self, link: MediaLink, live: bool = True) -> None:
        """Bind the media connection. `live=False` (RTP): we cannot send before Asterisk's first packet tells
        us where to, so the clock starts with the first caller frame."""
        self.link = link
        if live:
            self._go_live()

    def media_ready(self) -> None:
        """The link knows where to send (RTP: Asterisk's address from the controller): start the clock."""
        if self.link is not None and not self.linked.is_set():
            self._go_live()

    def _go_live(self) -> None:
        self._linked_t = time.monotonic()
        self._greeting_deadline = self._linked_t + self.ctx.config.media_worker.greeting_timeout_ms / 1000
        self.ctx.clock.add(self.call_id, self._tick)
        self.linked.set()
        assert self.link is not None
        log.info("media connected: %s %s from %s", self.link.transport, self.plan.format, self.link.peer or "?")

    def on_audio(self, payload: bytes) -> None:
        if not self.linked.is_set():
            self._go_live()
        self._frames_in += 1
        if self._frames_in % PROBE_EVERY == 0 and self._probe_t is None:
            self._probe_t = time.monotonic()
            self._probe_seq = self._queued_total  # the append this frame becomes
        speaking = self.gate.incoming(self._gate_view(payload))
        audible, interruptible = self._agent_audible(), self._interruptible()
        if speaking and not self._caller_speaking:
            self._caller_speaking = True
            if audible and interruptible:
                self._barge_in()
                audible = False  # flushed: the caller's words go to the server from this frame on
        elif not speaking:
            self._caller_speaking = False
        # Echo guard: while the agent talks and the gate hears no real speech, the server gets silence, so it
        # never takes our own voice for a caller turn. During the greeting the caller is heard only once the
        # guard allows an interruption.
        if (audible and not speaking) or (self._greeting_mode and not interruptible):
            self._queue_append(self._provider_silence)
        else:
            self._queue_append(self.conv.to_provider(payload))

    def on_dtmf(self, digit: str) -> None:
        if self.ctx.config.media_worker.dtmf_to_model and self.client is not None:
            self.log.utterance("user", f"[keypad {digit}]")
            asyncio.create_task(self.client.add_user_text(f"(The caller pressed {digit} on the keypad.)"))

    def on_hangup(self, reason: str) -> None:
        self.stop({"hangup": "caller_hangup", "closed": "media_closed"}.get(reason, f"media_{reason}"))

    def _gate_view(self, wire: bytes) -> bytes:
        if self.wire == "ulaw":
            return ulaw_decode(wire)
        if self.wire == "slin_be":
            return _swap16(wire)
        return wire

    # --- the 20 ms tick (PlayoutClock) -----------------------------------------------------------------
    def _tick(self) -> None:
        link = self.link
        if link is None:
            return
        frame, real = self.playout.tick()
        link.send(frame)
        now = time.monotonic()
        if real:
            if self._first_delta_t:
                started = self._first_delta_t.pop(self.playout.playing_item, None)
                if started is not None:
                    OUTPUT_LATENCY.observe(now - started)
            self.gate.outgoing(self._gate_view(frame))
            if self._awaiting_first_frame:
                self._first_frame(now)
        if self._bargein_t is not None:
            ms = (now - self._bargein_t) * 1000
            self.stats["bargein_ms"].append(round(ms, 1))
            BARGEIN_SECONDS.observe(ms / 1000)
            self._bargein_t = None
        playing = self.playout.playing_item
        if playing != self._last_playing:
            if self._last_playing is not None:
                self._log_heard()
                if self._last_playing == self._greeting_item:
                    self._greeting_mode = False
            self._last_playing = playing
        if self._say_finished and self.playout.idle and self.playout.playing_item is None:
            self._say_finished = False
            self._say_played.set()
        if self._greeting_mode and now > self._greeting_deadline:
            self._greeting_mode = False  # its end was never seen: normal turn-taking returns (the guide's 5 s)
        # Asterisk sends nothing while a Local/VAD-suppressing caller is silent; the server's clock must not
        # stall, so gaps become silence (jitter below INPUT_SLACK_FRAMES is left alone).
        self._ticks += 1
        if self._frames_in < self._ticks - INPUT_SLACK_FRAMES:
            self._frames_in += 1
            self.stats["padded_frames"] += 1
            self._queue_append(self._provider_silence)
            if not self.gate.absent():
                self._caller_speaking = False  # so the caller's next words are a new start (a barge-in)

    def _first_frame(self, now: float) -> None:
        self._awaiting_first_frame = False
        item = self.playout.playing_item
        if item is not None and item == self._greeting_item and not self.stats["greeting_ms"]:
            ms = (now - self._linked_t) * 1000
            self.stats["greeting_ms"] = str(round(ms, 1))
            GREETING_SECONDS.observe(ms / 1000)
        elif self._turn_end_t is not None:
            ms = (now - self._turn_end_t) * 1000
            self.stats["turn_ms"].append(round(ms, 1))
            TURN_SECONDS.observe(ms / 1000)
            self._turn_end_t = None

    def _agent_audible(self) -> bool:
        return self.playout.playing_item is not None or not self.playout.idle

    def _interruptible(self) -> bool:
        if not self._greeting_mode:
            return True
        guard = self.ctx.config.media_worker.greeting_guard_ms
        item = self._greeting_item
        return item is not None and self.playout.played_ms(item) >= guard

    # --- barge-in --------------------------------------------------------------------------------------
    def _barge_in(self) -> None:
        self._bargein_t = time.monotonic()
        item = self.playout.flush()
        # A transport that queues on Asterisk's side (WebSocket media) drops that queue too; its future
        # tells how many frames never played, so the truncation below is exact.
        flush = getattr(self.link, "flush", None)
        flushed = flush() if flush is not None else None
        self.conv.reset_wire()
        self._first_delta_t.clear()
        self._greeting_mode = False
        if item is None or self.client is None:
            return
        played = self.playout.played_ms(item)
        TRUNCATIONS.inc()
        self.stats["truncations"] += 1
        log.info("barge-in: %s cut at %d ms of %d ms received", item, played, self.playout.received_ms(item))
        self._log_heard(item_cut=item)
        asyncio.create_task(self._interrupt(item, played, flushed))

    async def _interrupt(self, item: str, played_ms: int, flushed: asyncio.Future[int] | None = None) -> None:
        assert self.client is not None
        await self.client.cancel_response()
        if flushed is not None:
            try:
                dropped = await asyncio.wait_for(flushed, FLUSH_COUNT_TIMEOUT)
            except asyncio.TimeoutError:
                dropped = 0  # no STATUS in time: truncate at what we sent (at most a frame or two late)
            played_ms = max(played_ms - dropped * FRAME_MS, 0)
        await self.client.truncate(item, played_ms)

    # --- transcripts -----------------------------------------------------------------------------------
    def _log_heard(self, item_cut: str | None = None, final: bool = False) -> None:
        """Log assistant items once their audio is over, cut to what the caller heard."""
        for item, text in list(self._transcripts.items()):
            if item in self._logged_items:
                continue
            played = self.playout.played_ms(item)
            received = self.playout.received_ms(item)
            if item != item_cut and not final and (item == self.playout.playing_item or played < received):
                continue
            if received and played < received:
                text = _cut(text, played / received)
            self._logged_items.add(item)
            del self._transcripts[item]
            if played > 0 or not received:
                self.log.utterance("assistant", text, item)

    # --- Realtime --------------------------------------------------------------------------------------
    async def _greet(self) -> None:
        assert self.client is not None
        instructions = f"Greet the caller now by saying exactly this, and nothing else: {self.plan.greeting}"
        self._awaiting_first_frame = True
        self._greeting_pending = True
        await self.client.create_response(instructions=instructions)

    def _queue_append(self, pcm: bytes) -> None:
        self._outgoing.append(pcm)
        self._queued_total += 1
        self._outgoing_ready.set()

    async def _send_forever(self) -> None:
        assert self.client is not None
        out = self._outgoing
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            while out:
                await self.client.append(out.popleft())
                self._sent_total += 1
                if self._probe_t is not None and self._sent_total > self._probe_seq:
                    INPUT_LATENCY.observe(time.monotonic() - self._probe_t)
                    self._probe_t = None

    async def _events_forever(self) -> None:
        assert self.client is not None
        queue = self.client.events
        while True:
            item = await queue.get()
            kind = type(item)
            if kind is AudioChunk:
                self._on_audio_chunk(item)
            elif kind is ev.AudioDone:
                tail = self.conv.drain_wire()
                if tail:
                    self.playout.push(item.item_id, tail)
                self.playout.end_item(item.item_id)
            elif kind is ev.TranscriptDone:
                if item.item_id not in self._logged_items:
                    self._transcripts[item.item_id] = item.transcript
                    self._log_heard()
            elif kind is ev.InputTranscript:
                self.log.utterance("user", item.transcript, item.item_id)
            elif kind is ev.SpeechStopped:
                self._turn_end_t = time.monotonic()
                self._awaiting_first_frame = True
            elif kind is ev.ResponseCreated:
                if self._greeting_pending and self._greeting_response is None:
                    self._greeting_response = item.response.id
                    self._greeting_pending = False
                elif self._say_pending:
                    self._say_response, self._say_pending = item.response.id, False
                self._response_audio.setdefault(item.response.id, 0)
            elif kind is ev.ResponseDone:
                await self._on_response_done(item.response)
            elif kind is ev.RateLimits:
                _record_rate_limits(item.rate_limits)
            elif kind is FunctionCall:
                asyncio.create_task(self.tools.run(item), name=f"tool-{item.name}")
            elif kind is Closed:
                self.end_reason = self.end_reason or "realtime_closed"
                log.error("Realtime session closed: %s", item.reason)
                return
            elif kind is Reconnected:
                log.info(
                    "Realtime session replaced (%s): %d items replayed",
                    "rotation" if item.rotation else "reconnect",
                    item.replayed,
                )

    def _on_audio_chunk(self, chunk: AudioChunk) -> None:
        if chunk.response_id == self._say_response and not self._say_started.is_set():
            self._say_started.set()
        self._response_audio[chunk.response_id] = self._response_audio.get(chunk.response_id, 0) + len(chunk.data)
        if chunk.item_id not in self._item_response:
            self._item_response[chunk.item_id] = chunk.response_id
            if self.linked.is_set() and len(self._first_delta_t) < 8:
                self._first_delta_t[chunk.item_id] = time.monotonic()
            if chunk.response_id == self._greeting_response:
                self._greeting_item = chunk.item_id
        self.playout.push(chunk.item_id, self.conv.to_wire(chunk.data))

    async def _on_response_done(self, response: ev.ResponseInfo) -> None:
        assert self.client is not None
        if response.id == self._say_response:
            self._say_finished = True
        audio = self._response_audio.pop(response.id, 0)
        spent, cost = self.usage.add(response.usage)
        for token_kind, n in spent.items():
            if n:
                TOKENS.labels(token_kind).inc(n)
        COST.inc(cost)
        spoke = any(o.get("type") == "message" for o in response.output)
        if response.status == "completed" and spoke and audio == 0:
            # The guide's "modalities bug": a reply with a transcript but no audio leaves the caller in silence.
            AUDIOLESS.inc()
            self.stats["audioless_responses"] += 1
            text = _message_text(response.output)
            log.warning("response %s finished without audio (transcript %r)", response.id, text[:80])
            for out in response.output:
                if out.get("type") == "message" and out.get("id"):
                    self._logged_items.add(out["id"])
                    self._transcripts.pop(out["id"], None)
            if self._audioless_retries < AUDIOLESS_RETRIES:
                self._audioless_retries += 1
                say = f"Say this to the caller out loud: {text}" if text else "Please answer the caller out loud."
                await self.client.create_response(output_modalities=["audio"], instructions=say)
        elif audio:
            self._audioless_retries = 0

    # --- what tools need from the conversation ---------------------------------------------------------
    async def _no_active_response(self, timeout: float) -> None:
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while self.client.protocol.active_response is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def tell_model(self, text: str) -> None:
        """Tell the model what happened outside the conversation, and let it speak about it."""
        if self.client is None:
            return
        await self._no_active_response(5.0)
        await self.client.add_system_text(text)

    async def say_and_wait(self, instructions: str, *, start_timeout: float, play_timeout: float) -> bool:
        """A scripted reply with no tool calls (the farewell); True once its audio has been played out, False if
        no audio started within `start_timeout`."""
        assert self.client is not None
        await self._no_active_response(2.0)
        self._say_pending, self._say_response, self._say_finished = True, None, False
        self._say_started.clear()
        self._say_played.clear()
        await self.client.create_response(tool_choice="none", instructions=instructions)
        try:
            await asyncio.wait_for(self._say_started.wait(), start_timeout)
        except asyncio.TimeoutError:
            return False
        try:
            await asyncio.wait_for(self._say_played.wait(), play_timeout)
        except asyncio.TimeoutError:
            log.warning("the scripted reply was still playing after %.0f s", play_timeout)
        return True

    async def wait_quiet(self, *, start_timeout: float, play_timeout: float) -> None:
        """Wait for the reply under way (or about to start) to be played out."""
        assert self.client is not None
        deadline = time.monotonic() + start_timeout
        while self.client.protocol.active_response is None and self.playout.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + play_timeout
        while (
            self.client.protocol.active_response is not None
            or not self.playout.idle
            or self.playout.playing_item is not None
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


def _record_rate_limits(limits: list[dict[str, Any]]) -> None:
    for entry in limits:
        name = entry.get("name")
        if name not in ("requests", "tokens"):
            continue  # the gauges' label stays a closed set
        for gauge, field in ((RATE_LIMIT_REMAINING, "remaining"), (RATE_LIMIT_LIMIT, "limit")):
            value = entry.get(field)
            if isinstance(value, (int, float)):
                gauge.labels(name).set(value)


def _swap16(data: bytes) -> bytes:
    b = bytearray(data)
    b[0::2], b[1::2] = data[1::2], data[0::2]
    return bytes(b)


def _cut(text: str, fraction: float) -> str:
    """The part of a transcript the caller heard, to the last whole word, with an ellipsis."""
    if fraction >= 1:
        return text
    end = int(len(text) * max(fraction, 0.0))
    head = text[:end]
    if end < len(text) and " " in head:
        head = head[: head.rfind(" ")]
    return (head.rstrip(" ,.;:") + "…") if head else ""


def _message_text(output: list[dict[str, Any]]) -> str:
    parts = []
    for item in output:
        for content in item.get("content") or []:
            parts.append(content.get("transcript") or content.get("text") or "")
    return " ".join(p for p in parts if p)
