"""One call on a media worker: the I/O around `CallState`. It moves the audio between the media link and the
Realtime session, turns what happens into the machine's events, and carries out the actions it returns.

Audio in (every 20 ms, from the transport): gate it (is the caller really speaking, or is that our own voice
coming back?), convert it, queue it for `input_audio_buffer.append`. Audio out: model deltas are converted
to wire frames and queued; the worker's clock ticks every 20 ms and sends exactly one frame per call.
Barge-in is decided here, not by the server (`interrupt_response: false`), so echo cannot cut the agent off:
the worker flushes its queue within one frame and truncates the item to what the caller really heard.
Only edges reach the machine (speech started, an item's first audio, an item played out); the per-frame
path reads its stage and allocates nothing of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from media_worker.audio.duck import DuckSettings, Playback
from media_worker.call_audio import CallAudio, wire_format
from media_worker.call_log import CallLog
from media_worker.call_state import (
    METADATA_KEY,
    Action,
    AddSystemText,
    AddUserText,
    AudioStarted,
    AwaitTurn,
    BargeIn,
    CallState,
    CancelResponse,
    CreateResponse,
    DropItem,
    Event,
    FarewellCancelled,
    FarewellPlayed,
    FarewellRequested,
    FarewellStarted,
    GreetingGuardPassed,
    GreetingTimedOut,
    Hangup,
    ItemPlayed,
    KeypadDigit,
    ListenFirst,
    Note,
    Purpose,
    ReportAudioless,
    RequestLost,
    ResponseCreated,
    ResponseDone,
    ResponseRefused,
    ResumeListened,
    RunTool,
    SendToolOutput,
    SessionReady,
    SessionReplaced,
    SpeechEnded,
    SpeechStarted,
    Stage,
    ToolCalled,
    ToolFinished,
    TurnOverdue,
)
from media_worker.call_stats import CallStats, save_record
from media_worker.context import WorkerContext
from media_worker.flood import FLOOD_RATIO, FLOOD_SECONDS, FloodGuard
from media_worker.heard import HeardTranscripts
from media_worker.realtime import events as ev
from media_worker.realtime import protocol as rp
from media_worker.realtime.client import Closed, RealtimeClient, RealtimeError, Reconnected
from shared.tasks import TaskSet
from media_worker.tool_calls import FarewellSignals, ToolRunner
from media_worker.transport.link import MediaLink
from media_worker.uplink import Uplink
from media_worker.usage import CallUsage
from shared.config.ga_session import build_session, ga_turn_detection
from shared.logs import CallLogger, bind_call
from shared.messages import MOVED, WORKER_HANGUP_FIELD, Assignment
from shared.redis_conn import UNAVAILABLE
from shared.metrics import (
    AUDIOLESS,
    CALL_COST,
    COST,
    GATE_CLOSURES,
    MEDIA_FLOODS,
    OUTPUT_LATENCY,
    PADDED,
    RATE_LIMIT_LIMIT,
    RATE_LIMIT_REMAINING,
    TAKEOVER_GAP,
    TOKENS,
    TRUNCATIONS,
    UNDERRUNS,
    UPLINK_DROPPED,
)
from shared.metrics import WORKER_CALLS as SESSIONS
from shared.tool_schemas import realtime_tools
from shared.usage_limits import SpendBook

log = logging.getLogger("session")

FRAME_MS = 20
FLUSH_COUNT_TIMEOUT = 0.25  # a barge-in waits this long for Asterisk's count of the frames it flushed
REQUEST_TIMEOUT_S = 10.0  # a response.create with neither response.created nor a refusal by then is given up
CLOSE_TIMEOUT_S = 8.0  # the end of a call (Realtime close, log flush, figures) never takes longer
HANGUP_NOTE_TIMEOUT_S = 0.5  # the call record's "this worker hangs up" note waits this long at most
SPEND_WRITE_TIMEOUT_S = 2.0  # one response's cost into the usage counters (a Redis away: logged, not retried)
MEDIA_TO_HANG_UP_S = 3.0  # a call that failed during its setup waits this long, at most, until it can be hung up
RESUME_LISTEN_S = 0.3  # a moved call's caller is heard this long (from the media) before the agent may speak
TURN_GRACE_S = 1.0  # beyond the server's end-of-turn wait: its response to the caller's turn should have begun
SEMANTIC_TURN_WAIT_S = {"low": 8.0, "medium": 4.0, "high": 2.0, "auto": 4.0}  # semantic_vad's longest waits


class CallSession:
    def __init__(self, ctx: WorkerContext, assignment: Assignment):
        self.ctx = ctx
        self.assignment = assignment
        plan = self.plan = assignment.plan
        self.call_id = plan.call_id
        self.logger = CallLogger(log, self.call_id)  # the clock task logs barge-ins: not the call's context
        settings = ctx.config.media_worker
        duck = DuckSettings(settings.bargein_duck_db, settings.bargein_fade_ms, settings.bargein_confirm_ms)
        self.audio = CallAudio(
            wire_format(plan.transport, plan.format), plan.provider_format, ctx.config.vad.webrtc_aggressiveness, duck
        )
        self.resumed = assignment.moves > 0  # moved here from a worker that lost the call: no new greeting
        self.state = CallState(plan.greeting, resumed=self.resumed)
        # A moved call's takeover gap ends with its first frame of agent audio (TAKEOVER_GAP).
        self._gap_from_ms = assignment.lost_at_ms if self.resumed else 0
        self.log = CallLog(ctx.redis, ctx.keys, self.call_id)
        self.heard = HeardTranscripts(self.log)
        self.tools = ToolRunner(ctx, plan, self.log, self)
        self.usage = CallUsage(ctx.config.providers.openai_realtime.pricing)
        self.spend = SpendBook(ctx.redis, ctx.keys, ctx.config.limits)  # the cluster's usage counters
        self._spend_writes: set[asyncio.Task[None]] = set()  # awaited by _close, so none is lost at the end
        self.stats = CallStats()
        self.tasks = TaskSet(f"call {self.call_id}", on_death=self._task_died)
        self.link: MediaLink | None = None
        self.client: RealtimeClient | None = None
        self.linked = asyncio.Event()
        self.finished = asyncio.Event()
        self.end_reason = ""
        self._guard_ms = settings.greeting_guard_ms
        self._task: asyncio.Task[None] | None = None
        # Set by _run's first step. A task cancelled before its first step never runs its body, not even its
        # `finally`: such a session would never close, be counted, or set `finished`. So stop() cancels the
        # task only once it runs; before that, _run sees `_stopping` as it begins and goes straight to its close.
        self._running = False
        self._stopping = False
        self._timers: dict[str, asyncio.TimerHandle] = {}  # media, greeting, request, turn: one of each at most
        self._farewell = FarewellSignals()
        self._agent_idle = asyncio.Event()  # CallState.agent_idle, for the tools that wait on it
        self._items: dict[str, bool] = {}  # output item -> whether its audio plays
        self._last_playing: str | None = None
        self.uplink = Uplink(len(self.audio.provider_silence) / FRAME_MS)  # caller audio for the model
        self._dropped_published = 0  # of uplink.dropped, what the metric has been given
        self.flood = FloodGuard()
        self._first_delta_t: dict[str, float] = {}  # item -> when its first audio arrived, until it plays
        self._caller_turns = 0  # the caller's committed turns: request_transcript's read-back waits for one

    # --- lifecycle -------------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

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
        self._running = True
        bind_call(self.call_id)
        media_timeout = self.ctx.config.media_worker.media_timeout_ms / 1000
        self._arm("media", media_timeout, self._no_media)
        try:
            if self._stopping:
                return  # stopped before this task began (the end came in the same inbox read as the assignment)
            self.client = RealtimeClient(
                self.ctx.realtime,
                self.session_config(),
                history=self.log.history,
                connection_source=self.ctx.pool.take,
                on_key_failure=self.ctx.pool.key_failed,
            )
            ready = await self.client.start(replay=self.resumed)
            if self.resumed:
                self.logger.info(
                    "Realtime session %s ready for call %s, resumed (move %d): %d items replayed",
                    ready.session_id,
                    self.call_id,
                    self.assignment.moves,
                    self.client.replayed,
                )
            else:
                self.logger.info("Realtime session %s ready for call %s", ready.session_id, self.call_id)
            self.tasks.spawn(
                self.uplink.run(self.client.append, self.client.append_now), f"append-{self.call_id}", essential=True
            )
            self._feed(SessionReady())
            await self._events_forever()
        except RealtimeError as exc:
            self.end_reason = self.end_reason or "realtime_failed"
            self.logger.error("Realtime session failed: %s", exc)
        except asyncio.CancelledError:
            # stop(): the call ends here. The cancellation is taken back so that the timeouts of the close
            # below work as they would anywhere else.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception:
            self.end_reason = self.end_reason or "session_error"
            self.logger.exception("call session failed")
        finally:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._close()
            except TimeoutError:
                self.logger.error(
                    "the end of call %s took over %.0f s; it was cut short", self.call_id, CLOSE_TIMEOUT_S
                )
            finally:
                SESSIONS.dec()
                self.finished.set()

    def every_second(self, now: float) -> None:
        """The worker's 1 s tick: publish what the frame path counted in plain ints, and end the call if its
        media peer floods us (FloodGuard)."""
        self._publish_drops()
        audio = self.audio
        if not self.linked.is_set() or self._stopping:
            return
        if self.flood.check(audio.bytes_in, audio.conv.wire_frame_bytes / FRAME_MS, now):
            MEDIA_FLOODS.inc()
            self.logger.warning(
                "the media peer %s sent audio faster than %g× real time for %d s (peak %.1f×): ending the call",
                self.link.peer if self.link is not None else "?",
                FLOOD_RATIO,
                FLOOD_SECONDS,
                self.flood.peak_ratio,
            )
            self.stop("media_flood")

    def _publish_drops(self) -> None:
        dropped = self.uplink.dropped
        if dropped != self._dropped_published:
            UPLINK_DROPPED.inc(dropped - self._dropped_published)
            self._dropped_published = dropped

    def _task_died(self, why: str) -> None:
        self.stop("session_error")  # a call whose uplink is dead would go on deaf

    def _no_media(self) -> None:
        if not self.linked.is_set():
            timeout = self.ctx.config.media_worker.media_timeout_ms / 1000
            self.logger.warning("no media connection within %.0f s: dropping the call", timeout)
            self.stop("media_timeout")

    def stop(self, reason: str) -> None:
        """End the call from outside (media hangup, controller's end, worker shutdown). Idempotent."""
        if not self.end_reason:
            self.end_reason = reason
        if self._stopping:
            return  # a second reason (the controller's end after the media hangup) must not cut the cleanup
        self._stopping = True
        self._feed(Hangup(reason))
        if self._running and self._task is not None and not self._task.done():
            self._task.cancel()

    async def _close(self) -> None:
        if not self._stopping:  # the call failed on our side: it is ours to hang up
            await self._wait_until_it_can_be_hung_up()
        self._feed(Hangup(self.end_reason or "done"))
        self.ctx.clock.remove(self.call_id)
        for timer in self._timers.values():
            timer.cancel()
        await self.tasks.close()
        if self._spend_writes:
            await asyncio.wait(self._spend_writes, timeout=SPEND_WRITE_TIMEOUT_S)
        if self.link is not None:
            # We end the media leg ourselves only when the conversation broke (Asterisk then ends the leg and
            # the controller sends the caller to the fallback); when the caller left it is already gone, and a
            # moved call's leg was hung up by the controller. Before hanging up, the call record says so: the
            # controller then knows the leg did not end because this worker died (it would move the call).
            hangup = self.end_reason not in ("caller_hangup", "media_closed", MOVED)
            if hangup:
                await self._say_hanging_up()
            self.link.close(hangup=hangup)
        if self.client is not None:
            await self.client.close()
        self.heard.log_heard(self.audio.playout, final=True)
        await self.log.close()
        if self.end_reason == MOVED or await self._moved_away():
            self.logger.info("call %s moved to another worker: its session here stopped", self.call_id)
            return  # the figures are the new worker's to write
        await self._save_stats()
        self.logger.info(
            "call %s ended on the worker (%s): %d turns, %d barge-ins, %d gate closures",
            self.call_id,
            self.end_reason or "done",
            len(self.stats.turn_ms),
            len(self.stats.bargein_ms),
            self.audio.gate_closures,
        )

    async def _moved_away(self) -> bool:
        """The call record names another epoch: the call was moved while this session was not looking (a wedged
        worker that woke to its media connection closed, before it read the `end` of the move)."""
        try:
            async with asyncio.timeout(HANGUP_NOTE_TIMEOUT_S):
                epoch = await self.ctx.redis.hget(self.ctx.keys.call(self.call_id), "epoch")
        except (TimeoutError, *UNAVAILABLE):
            return False
        return epoch is not None and int(epoch) != self.assignment.epoch

    async def _wait_until_it_can_be_hung_up(self) -> None:
        """The session failed on our side, maybe during the call's setup (a refused OpenAI key fails in
        milliseconds; Asterisk's media connection comes some 50 ms after the assignment, and the controller
        marks the call active after that). Hung up too early, the leg is lost: no link yet, the connection is
        held for an assignment that never comes, and its end is taken for a lost worker (the call is moved to
        each worker in turn before the fallback); or the leg ends while the controller is still setting up, and
        the caller waits in silence. So: wait for the media link, then for the record to say the call is active
        at our epoch; then the hang-up sends the caller to the fallback at once. Bounded; marked stopping first,
        so a stop() meanwhile does not cancel this cleanup."""
        self._stopping = True
        limit = min(self.ctx.config.media_worker.media_timeout_ms / 1000, MEDIA_TO_HANG_UP_S)
        record = self.ctx.keys.call(self.call_id)
        try:
            async with asyncio.timeout(limit):
                if self.link is None:
                    await self.linked.wait()
                while True:
                    state, epoch = await self.ctx.redis.hmget(record, ["state", "epoch"])
                    if _text(state) == "active" and _text(epoch) == str(self.assignment.epoch):
                        return
                    await asyncio.sleep(0.05)
        except (TimeoutError, *UNAVAILABLE):
            pass

    async def _say_hanging_up(self) -> None:
        try:
            async with asyncio.timeout(HANGUP_NOTE_TIMEOUT_S):
                await self.ctx.redis.hset(
                    self.ctx.keys.call(self.call_id), WORKER_HANGUP_FIELD, str(self.assignment.epoch)
                )
        except (TimeoutError, *UNAVAILABLE) as exc:
            self.logger.warning(
                "could not note the hang-up in the call record (%s): the controller may move the call", exc
            )

    async def _save_stats(self) -> None:
        audio, usage = self.audio, self.usage
        # Counted per tick by the queue and the clock; added to the metrics once per call, off the frame path.
        self._publish_drops()
        UNDERRUNS.inc(audio.underruns)
        PADDED.inc(audio.padded_frames)
        GATE_CLOSURES.inc(audio.gate_closures)
        if usage.responses:
            CALL_COST.observe(usage.cost)
        fields = self.stats.record()
        fields.update(
            {
                "gate_closures": audio.gate_closures,
                "bargein_ducks": audio.ducks[0],
                "bargein_restores": audio.ducks[1],
                "underruns": audio.underruns,
                "padded_frames": audio.padded_frames,
                "uplink_dropped": self.uplink.dropped,
                "worker_end_reason": self.end_reason or "done",
                "cost_usd": f"{usage.cost:.6f}",
            }
        )
        fields.update({f"tokens_{kind}": n for kind, n in usage.totals.items()})
        if self.link is not None:
            fields.update(self.link.summary())
        await save_record(self.ctx.redis, self.ctx.keys.call(self.call_id), fields)

    def _arm(self, name: str, delay: float, callback: Callable[..., object], *args: object) -> None:
        previous = self._timers.pop(name, None)
        if previous is not None:
            previous.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(delay, callback, *args)

    # --- the machine -----------------------------------------------------------------------------------
    def _feed(self, event: Event) -> None:
        """Give the machine an event and carry out what it says, in order."""
        for action in self.state.handle(event):
            self._act(action)
        state = self.state
        if state.agent_idle:
            self._agent_idle.set()
        else:
            self._agent_idle.clear()
        if self.client is not None:
            self.client.set_idle(state.quiet)

    def _act(self, action: Action) -> None:
        client = self.client
        match action:
            case CreateResponse(key=key, params=params):
                assert client is not None
                client.create_response(event_id=key, **params)
                self._arm("request", REQUEST_TIMEOUT_S, self._feed, RequestLost(key))
                if action.purpose is Purpose.GREETING:
                    self.stats.awaiting_first_frame = True
            case SendToolOutput(call_id=call_id, output=output):
                assert client is not None
                try:
                    client.function_output(call_id, output)
                except KeyError:
                    self.logger.warning("tool output for %s not sent: the Realtime session was replaced", call_id)
            case AddSystemText(text=text):
                assert client is not None
                client.add_system_text(text)
            case AddUserText(text=text):
                assert client is not None
                client.add_user_text(text)
            case RunTool(call=call):
                self.tasks.spawn(self._run_tool(call), f"tool-{call.name}")
            case CancelResponse():
                assert client is not None
                client.cancel_response()
            case BargeIn():
                self._barge_in()
            case DropItem(item_id=item_id):
                self._items[item_id] = False
                self.heard.skip(item_id)  # never played: its transcript is not what the caller heard
            case ReportAudioless(response_id=response_id, text=text, message_items=items):
                AUDIOLESS.inc()
                self.stats.audioless_responses += 1
                self.logger.warning("response %s finished without audio (transcript %r)", response_id, text[:80])
                for item_id in items:
                    self.heard.skip(item_id)
            case ListenFirst() | AwaitTurn():
                self._moved_call_opening(action)
            case FarewellStarted() | FarewellPlayed():
                (self._farewell.started if isinstance(action, FarewellStarted) else self._farewell.played).set()

    def _moved_call_opening(self, action: ListenFirst | AwaitTurn) -> None:
        if isinstance(action, ListenFirst):
            self.tasks.spawn(self._listen_first(), f"listen-first-{self.call_id}")
        else:
            self._arm("turn", self._turn_wait_s(), self._feed, TurnOverdue())

    async def _listen_first(self) -> None:
        """A moved call: hear the caller for a moment (from the media's start) before the agent speaks."""
        media_timeout = self.ctx.config.media_worker.media_timeout_ms / 1000
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(media_timeout):  # no media by then: the call ends anyway
                await self.linked.wait()
        await asyncio.sleep(RESUME_LISTEN_S)
        self._feed(ResumeListened())

    def _turn_wait_s(self) -> float:
        """How long after the caller stops the server's response to their turn should have begun."""
        provider = self.ctx.config.providers.openai_realtime
        td = ga_turn_detection(provider)
        if td is None or not td["create_response"]:
            return TURN_GRACE_S  # the server answers no turn by itself
        if td["type"] == "server_vad":
            return td["silence_duration_ms"] / 1000 + TURN_GRACE_S
        return SEMANTIC_TURN_WAIT_S.get(td.get("eagerness", "auto"), 4.0) + TURN_GRACE_S

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
        self.stats.linked_at = time.monotonic()
        timer = self._timers.pop("media", None)
        if timer is not None:
            timer.cancel()
        if not self.state.hears_caller:  # the greeting's guard holds: it ends with the greeting, or at the latest…
            greeting_timeout = self.ctx.config.media_worker.greeting_timeout_ms / 1000
            self._arm("greeting", greeting_timeout, self._feed, GreetingTimedOut())
        self.ctx.clock.add(self.call_id, self._tick)
        self._arm_time_limit()
        self.linked.set()
        assert self.link is not None
        self.logger.info("media connected: %s %s from %s", self.link.transport, self.plan.format, self.link.peer or "?")

    def _arm_time_limit(self) -> None:
        """`limits.max_call_duration_s`, counted from the call's creation (a moved call keeps its start)."""
        limit_s = self.ctx.config.limits.max_call_duration_s
        if limit_s is not None:
            elapsed_s = max(time.time() - self.plan.created_ms / 1000, 0.0)
            self._arm("time_limit", max(limit_s - elapsed_s, 0.0), self._time_limit_reached)

    def _time_limit_reached(self) -> None:
        if self._stopping:
            return
        limits = self.ctx.config.limits
        farewell = self.tools.end_at_time_limit(limits.duration_farewell)
        if farewell is None:
            return  # the agent is hanging up already
        log.info(
            "call %s reached limits.max_call_duration_s (%d s): farewell, then hang-up",
            self.call_id,
            limits.max_call_duration_s,
        )
        self.tasks.spawn(farewell, f"time-limit-{self.call_id}")

    def on_format(self, fmt: str) -> None:
        """Asterisk sends another AudioSocket format than the call asked for: follow it both ways."""
        wire = wire_format(self.plan.transport, fmt)
        self.logger.warning("the media format is %s, not %s: converting to and from %s", fmt, self.audio.wire, wire)
        self.audio.reformat(wire)

    def on_audio(self, payload: bytes) -> None:
        if not self.linked.is_set():
            self._go_live()
        audio, state = self.audio, self.state
        audio.frames_in += 1
        audio.bytes_in += len(payload)
        self.uplink.sample(audio.frames_in)
        gate = audio.gate
        speaking = gate.incoming(audio.gate_view(payload))
        if gate.heard_caller and not speaking and audio.agent_audible and state.stage is not Stage.GREETING:
            audio.ducker.onset()  # the first sign: duck now, the gate confirms (stop) or not (restore)
        if speaking != state.caller_speaking:  # an edge: the machine decides about barge-in
            self._feed(SpeechStarted(audio.agent_audible) if speaking else SpeechEnded())
        # Echo guard: while the agent talks and the gate hears no real speech, the server gets silence, so it
        # never takes our own voice for a caller turn. Within the greeting's guard the caller is not heard.
        if not state.hears_caller or (not speaking and audio.agent_audible):
            self.uplink.put(audio.provider_silence)
        else:
            self.uplink.put(audio.conv.to_provider(payload))

    def on_dtmf(self, digit: str) -> None:
        if self.ctx.config.media_worker.dtmf_to_model and self.client is not None:
            self.log.utterance("user", f"[keypad {digit}]")
            self._feed(KeypadDigit(f"(The caller pressed {digit} on the keypad.)"))

    def on_hangup(self, reason: str) -> None:
        self.stop({"hangup": "caller_hangup", "closed": "media_closed"}.get(reason, f"media_{reason}"))

    # --- the 20 ms tick (PlayoutClock) -----------------------------------------------------------------
    def _tick(self) -> None:
        link = self.link
        if link is None:
            return
        audio, stats = self.audio, self.stats
        playout = audio.playout
        frame, real = playout.tick()
        ducker = audio.ducker
        out = frame if ducker.state is Playback.PLAYING else ducker.apply(frame, real)  # full level: no call
        link.send(out)
        # The clock is read only for the rare frames that are measured (after the send, as the caller hears it):
        # not once per call per tick.
        if real:
            if self._first_delta_t:
                started = self._first_delta_t.pop(playout.playing_item or "", None)
                if started is not None:
                    OUTPUT_LATENCY.observe(time.monotonic() - started)
            audio.gate.outgoing(audio.gate_view(out))  # what the caller hears (ducked) is what echoes back
            if self._gap_from_ms:  # once per moved call: its first agent frame
                gap_ms = max(time.time() * 1000 - self._gap_from_ms, 0)
                TAKEOVER_GAP.observe(gap_ms / 1000)
                self.logger.info(
                    "call %s: takeover gap %.0f ms (the lost worker last heard from, to our first agent frame)",
                    self.call_id,
                    gap_ms,
                )
                self._gap_from_ms = 0
            if stats.awaiting_first_frame:
                greeting = self.state.greeting_item
                stats.first_frame(time.monotonic(), greeting is not None and playout.playing_item == greeting)
        if stats.bargein_at is not None:
            stats.barge_in_over(time.monotonic())
        playing = playout.playing_item
        if playing != self._last_playing:
            finished, self._last_playing = self._last_playing, playing
            if finished is not None:
                self.heard.log_heard(playout)
                self._feed(ItemPlayed(finished))
        state = self.state
        if state.stage is Stage.GREETING and state.greeting_item is not None:
            if playout.played_ms(state.greeting_item) >= self._guard_ms:
                self._feed(GreetingGuardPassed())
        # Asterisk sends nothing while a Local/VAD-suppressing caller is silent; the server's clock must not
        # stall, so gaps become silence (jitter below INPUT_SLACK_FRAMES is left alone).
        if audio.caller_frame_missing():
            self.uplink.put(audio.provider_silence, at_once=False)  # sent after the tick, not inside the clock's loop
            if not audio.gate.absent() and state.caller_speaking:
                self._feed(SpeechEnded())  # so the caller's next words are a new start (a barge-in)

    # --- barge-in --------------------------------------------------------------------------------------
    def _barge_in(self) -> None:
        audio, stats = self.audio, self.stats
        stats.bargein_at = time.monotonic()
        # The next frame fades out (bargein_fade_ms) instead of stopping on a step; the rest is dropped.
        audio.ducker.stop()
        item = audio.playout.flush(keep_frames=1)
        # A transport that queues on Asterisk's side (WebSocket media) drops that queue too; its future
        # tells how many frames never played, so the truncation below is exact.
        flushed = self.link.flush() if self.link is not None else None
        audio.conv.reset_wire()
        self._first_delta_t.clear()
        client = self.client
        if client is None:
            return
        client.cancel_response()
        if item is None:
            return
        played = audio.playout.played_ms(item) + audio.playout.queued_ms  # the fade frame still plays
        TRUNCATIONS.inc()
        stats.truncations += 1
        self.logger.info("barge-in: %s cut at %d ms of %d ms received", item, played, audio.playout.received_ms(item))
        self.heard.log_heard(audio.playout, item_cut=item)
        if flushed is None:
            client.truncate(item, played)
        else:
            self.tasks.spawn(self._truncate_after_flush(item, played, flushed), f"truncate-{item}")

    async def _truncate_after_flush(self, item: str, played_ms: int, flushed: asyncio.Future[int]) -> None:
        try:
            async with asyncio.timeout(FLUSH_COUNT_TIMEOUT):
                dropped = await flushed
        except TimeoutError:
            dropped = 0  # no STATUS in time: truncate at what we sent (at most a frame or two late)
        if self.client is not None:
            self.client.truncate(item, max(played_ms - dropped * FRAME_MS, 0))

    # --- Realtime --------------------------------------------------------------------------------------
    async def _events_forever(self) -> None:
        assert self.client is not None
        queue = self.client.events
        while True:
            item = await queue.get()
            if type(item) is rp.AudioChunk:  # the hot path first
                self._on_audio_chunk(item)
            elif type(item) is Closed:
                self.end_reason = self.end_reason or "realtime_closed"
                self.logger.error("Realtime session closed: %s", item.reason)
                return
            else:
                handler = _EVENT_HANDLERS.get(type(item))
                if handler is not None:
                    handler(self, item)

    def _on_audio_chunk(self, chunk: rp.AudioChunk) -> None:
        plays = self._items.get(chunk.item_id)
        if plays is None:
            if not chunk.data:
                return
            self._items[chunk.item_id] = True
            self._feed(AudioStarted(chunk.response_id, chunk.item_id))  # DropItem may turn it off
            plays = self._items[chunk.item_id]
            if plays and self.linked.is_set() and len(self._first_delta_t) < 8:
                self._first_delta_t[chunk.item_id] = time.monotonic()
        if plays:
            self.audio.playout.push(chunk.item_id, self.audio.conv.to_wire(chunk.data))

    def _on_audio_done(self, event: ev.AudioDone) -> None:
        if self._items.get(event.item_id):
            audio = self.audio
            tail = audio.conv.drain_wire()
            if tail:
                audio.playout.push(event.item_id, tail)
            audio.playout.end_item(event.item_id)

    def _on_transcript(self, event: ev.TranscriptDone) -> None:
        self.heard.add(event.item_id, event.transcript, self.audio.playout)

    def _on_input_transcript(self, event: ev.InputTranscript) -> None:
        self.log.utterance("user", event.transcript, event.item_id)

    def _on_committed(self, event: ev.Committed) -> None:
        self._caller_turns += 1

    def _on_speech_stopped(self, event: ev.SpeechStopped) -> None:
        self.stats.turn_ended_at = time.monotonic()
        self.stats.awaiting_first_frame = True

    def _on_response_created(self, event: ev.ResponseCreated) -> None:
        key = (event.response.metadata or {}).get(METADATA_KEY)
        self._feed(ResponseCreated(event.response.id, key if isinstance(key, str) else None))

    def _on_response_refused(self, event: rp.ResponseRefused) -> None:
        self._feed(ResponseRefused(event.event_id))

    def _on_response_done(self, event: ev.ResponseDone) -> None:
        response = event.response
        spent, cost = self.usage.add(response.usage)
        for token_kind, n in spent.items():
            if n:
                TOKENS.labels(token_kind).inc(n)
        COST.inc(cost)
        if cost > 0:  # into the cluster's counters now, not at the end: a long call counts while it runs
            self._spend_later(cost)
        messages = tuple(str(o.get("id", "")) for o in response.output if o.get("type") == "message")
        self._feed(ResponseDone(response.id, response.status, messages, _message_text(response.output)))

    def _spend_later(self, usd: float) -> None:
        task = asyncio.create_task(self._record_spend(usd), name=f"spend-{self.call_id}")
        self._spend_writes.add(task)
        task.add_done_callback(self._spend_writes.discard)

    async def _record_spend(self, usd: float) -> None:
        try:
            async with asyncio.timeout(SPEND_WRITE_TIMEOUT_S):
                await self.spend.record_spend(self.plan.context, usd)
        except (TimeoutError, OSError, RedisError) as exc:
            log.warning("a response's cost (%.6f USD) is missing from the usage counters: %s", usd, exc)

    def _on_function_call(self, call: rp.FunctionCall) -> None:
        self._feed(ToolCalled(call.response_id, call.call_id, call.name, call.arguments))

    def _on_reconnected(self, event: Reconnected) -> None:
        kind = "rotation" if event.rotation else "reconnect"
        self.logger.info("Realtime session replaced (%s): %d items replayed", kind, event.replayed)
        self._feed(SessionReplaced())

    def _on_rate_limits(self, event: ev.RateLimits) -> None:
        _record_rate_limits(event.rate_limits)

    # --- tools (ToolHost) ------------------------------------------------------------------------------
    async def _run_tool(self, call: ToolCalled) -> None:
        outcome = await self.tools.run(call)
        self._feed(ToolFinished(call.call_id, outcome.output, outcome.respond))
        if outcome.then is not None:
            self.tasks.spawn(outcome.then(), f"tool-{call.name}-then")

    def set_end_reason(self, reason: str) -> None:
        self.end_reason = self.end_reason or reason

    def begin_farewell(self, instructions: str) -> FarewellSignals:
        self._feed(FarewellRequested(instructions))
        return self._farewell

    def cancel_farewell(self) -> None:
        self._farewell = FarewellSignals()
        self._feed(FarewellCancelled())

    def tell_model(self, text: str) -> None:
        self._feed(Note(text))

    async def agent_finished(self) -> None:
        await self._agent_idle.wait()

    def caller_turns(self) -> int:
        return self._caller_turns


_EVENT_HANDLERS: dict[type, Callable[[CallSession, Any], None]] = {
    ev.AudioDone: CallSession._on_audio_done,
    ev.TranscriptDone: CallSession._on_transcript,
    ev.InputTranscript: CallSession._on_input_transcript,
    ev.SpeechStopped: CallSession._on_speech_stopped,
    ev.Committed: CallSession._on_committed,
    ev.ResponseCreated: CallSession._on_response_created,
    ev.ResponseDone: CallSession._on_response_done,
    ev.RateLimits: CallSession._on_rate_limits,
    rp.ResponseRefused: CallSession._on_response_refused,
    rp.FunctionCall: CallSession._on_function_call,
    Reconnected: CallSession._on_reconnected,
}


def _record_rate_limits(limits: list[dict[str, Any]]) -> None:
    for entry in limits:
        name = entry.get("name")
        if name not in ("requests", "tokens"):
            continue  # the gauges' label stays a closed set
        for gauge, field in ((RATE_LIMIT_REMAINING, "remaining"), (RATE_LIMIT_LIMIT, "limit")):
            value = entry.get(field)
            if isinstance(value, (int, float)) and abs(value) < 1e15:  # a JSON int beyond a float cannot be a gauge
                gauge.labels(name).set(value)


def _message_text(output: list[dict[str, Any]]) -> str:
    parts = []
    for item in output:
        contents = item.get("content") if isinstance(item, dict) else None
        for content in contents if isinstance(contents, list) else ():
            if isinstance(content, dict):
                text = content.get("transcript") or content.get("text")
                if isinstance(text, str):
                    parts.append(text)
    return " ".join(p for p in parts if p)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
