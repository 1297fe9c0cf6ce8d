"""The load test's callers on a real Asterisk: `sim.pbx_caller` legs (a Local channel into the shipped dialplan,
bridged with an ExternalMedia RTP leg to a socket here), so each caller speaks the demo plan into the call and
records what it hears, as on the simulator. The load test's loop is synchronous: the callers run on an asyncio
loop in a thread of their own, and this target hands calls to it and reads their state back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sim.asterisk.audio import CallerAudio, read_wav, spans
from sim.pbx_caller import CallerError, CallerLeg, PbxCaller

OPEN_TIMEOUT_S = 10.0
HANGUP_TIMEOUT_S = 15.0  # each caller's hangup (DELETE, wait for its end, remove its RTP leg and bridge)
CLOSE_TIMEOUT_S = 30.0


@dataclass
class PbxCall:
    state: str = "Ring"  # Ring -> Up -> ended (what the load test's Driver reads)
    leg: CallerLeg | None = None
    said_at: float | None = None  # monotonic, when the caller started speaking its WAV
    error: str = ""


def error_kind(exc: Exception) -> str:
    """A short, countable kind of a caller's failure ('caller:no_answer', 'caller:ari_422', …)."""
    text = str(exc)
    if "no answer" in text:
        return "caller:no_answer"
    if "dial status" in text:
        return "caller:dial_" + text.rsplit(" ", 1)[-1].lower()
    if text.startswith("ARI "):
        return "caller:ari_" + text.split("->", 1)[-1].split(":", 1)[0].strip()
    if "Stasis" in text:
        return "caller:no_stasis_start"
    return "caller:" + type(exc).__name__


class PbxTarget:
    """Calls into a real Asterisk's `context`; each caller says `caller_wav` (8 kHz) from its answer on."""

    kind = "real-asterisk"

    def __init__(self, ari_url: str, user: str, password: str, caller_wav: Path, context: str):
        pcm, rate = read_wav(caller_wav)
        self.pcm, self.rate = pcm, rate
        self.context = context
        self.ari_url, self.user, self.password = ari_url, user, password
        self.errors: Counter = Counter()
        self.calls: dict[str, PbxCall] = {}
        self._callers: list[Future] = []  # each caller's life; what is still running at close() is cancelled
        self._hangups: list[Future] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="pbx-callers")
        self._thread.start()
        self.pbx = PbxCaller(ari_url, user, password)
        try:
            self._run(self.pbx.__aenter__(), OPEN_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def place(self, index: int) -> str:
        """Start caller `index` (non-blocking: the ramp must not wait for answers); its key for states()."""
        key = f"caller-{index}"
        self.calls[key] = PbxCall()
        self._callers.append(asyncio.run_coroutine_threadsafe(self._call(self.calls[key]), self._loop))
        return key

    async def _call(self, call: PbxCall) -> None:
        try:
            call.leg = await self.pbx.call(self.context)
        except CallerError as exc:
            call.error = str(exc)
            self.errors[error_kind(exc)] += 1
            call.state = "ended"
            return
        call.state = "Up"
        call.said_at = time.monotonic()
        await call.leg.say(CallerAudio.from_pcm(self.pcm, self.rate))  # returns early when the call ends
        await call.leg.gone.wait()
        call.state = "ended"

    def states(self) -> dict[str, str]:
        return {key: call.state for key, call in self.calls.items()}

    def hangup(self, key: str) -> None:
        self._hangups.append(asyncio.run_coroutine_threadsafe(self._hangup(self.calls[key]), self._loop))

    async def _hangup(self, call: PbxCall) -> None:
        if call.leg is None:
            return  # never answered: nothing to hang up (close() removes whatever is left)
        try:
            await call.leg.hangup()
        except asyncio.TimeoutError:
            self.errors["caller:hangup_timeout"] += 1
        await call.leg._close()

    def heard(self) -> dict:
        """What the callers heard: how many heard the agent, and answer -> first voiced frame at the caller."""
        answered = [
            (c.leg, c.leg.answered_at)
            for c in self.calls.values()
            if c.leg is not None and c.leg.answered_at is not None
        ]
        onsets = []
        for leg, answered_at in answered:
            first = leg.first_voiced_after(answered_at)
            if first is not None:
                onsets.append(1000 * (first - answered_at))
        return {"answered": len(answered), "heard_agent": len(onsets), "greeting_onset_ms": onsets}

    def key_for(self, caller_channel: str) -> str | None:
        """The caller key of the channel the controller sees (the Local half that entered Stasis)."""
        return next((k for k, c in self.calls.items() if c.leg is not None and c.leg.peer_id == caller_channel), None)

    def voice(self, key: str) -> tuple[float | None, list[tuple[float, float]]]:
        """When caller `key` started speaking, and the spans in which it heard speech (monotonic)."""
        call = self.calls.get(key)
        if call is None or call.leg is None:
            return None, []
        return call.said_at, spans(list(call.leg.voiced))

    def leftover(self) -> dict:
        """Channels and bridges in Asterisk (all of them: it is ours) once every caller's hangup is done."""
        for done in self._hangups:
            try:
                done.result(HANGUP_TIMEOUT_S)
            except Exception as exc:  # a hangup that failed leaves its channels, which the count below shows
                self.errors[f"caller:hangup_{type(exc).__name__}"] += 1
        for caller in self._callers:
            if caller.done() and not caller.cancelled() and caller.exception() is not None:
                self.errors[f"caller:{type(caller.exception()).__name__}"] += 1
        counts = {}
        for kind in ("channels", "bridges"):
            items = self._run(self.pbx.request("GET", f"/{kind}"), OPEN_TIMEOUT_S)
            counts[kind] = len(items)
        return counts

    def close(self) -> None:
        try:
            self._run(self.pbx.__aexit__(None, None, None), CLOSE_TIMEOUT_S)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._run(cancel_rest(), 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
