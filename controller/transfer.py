"""One ARI-controlled, cancellable transfer (reference §7): MOH on the caller, a new leg created into our
Stasis app and rung toward the destination, then either the leg joins the caller's bridge (the AI leaves) or
it is hung up and the caller is back with the AI.

The outcome is a one-shot future that the first of these settles: the leg's `Dial` status (ANSWER, BUSY,
NOANSWER …), the leg leaving Stasis before an answer, a cancel, the call ending, or our own ring timer (a
cancelled or dropped leg never gets a final `Dial` event, trace 05b, so nothing else guarantees an end).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

from controller.ari.errors import AriError, quietly
from controller.stasis_legs import NotInStasis

if TYPE_CHECKING:
    from controller.call import Call

log = logging.getLogger("transfer")

# Our own timer runs this much past Asterisk's dial timeout: its NOANSWER should normally come first.
GRACE_S = 2.0
# Dial statuses that end the ringing (RINGING / PROGRESS / "" do not).
_FINAL_DIAL = {
    "ANSWER": "answered",
    "BUSY": "busy",
    "NOANSWER": "no_answer",
    "CANCEL": "cancelled",
    "CONGESTION": "failed",
    "CHANUNAVAIL": "failed",
}
# Q.850 causes of a leg that hung up before answering.
_CAUSES = {17: "busy", 18: "no_answer", 19: "no_answer", 21: "busy"}


def local_endpoint(target: str, context: str) -> str:
    """Always a Local channel to a configured target in a configured context: what the model says is never
    dialled (the anchor's #571 dialled "PJSIP/200")."""
    return f"Local/{target}@{context}"


class TransferAttempt:
    def __init__(self, call: "Call", leg_id: str, endpoint: str, timeout_s: float):
        self.call = call
        self.leg = leg_id
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.outcome: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self.ringing = False
        self.hangup_cause: int | None = None
        self.finished = asyncio.Event()  # set once the leg is connected or cleaned up

    # --- what happens to the leg (event handlers: fast, no I/O) ------------------------------------------
    def dial_status(self, status: str) -> None:
        if status == "RINGING":
            self.ringing = True
        outcome = _FINAL_DIAL.get(status)
        if outcome is not None:
            self._settle(outcome, f"dial status {status}")

    def hangup_requested(self, cause: int | None, soft: bool | None) -> None:
        if not soft and cause is not None:
            self.hangup_cause = cause

    def leg_left(self) -> None:
        """StasisEnd of the leg: before an answer it is the far end giving up (or our own hangup)."""
        status = _CAUSES.get(self.hangup_cause or 0, "failed")
        self._settle(status, f"the destination hung up (cause {self.hangup_cause})")

    def cancel(self) -> bool:
        """False when it is too late (already answered or over)."""
        return self._settle("cancelled", "cancelled")

    def abort(self, why: str) -> None:
        self._settle("failed", why)

    @property
    def pending(self) -> bool:
        return not self.outcome.done()

    def _settle(self, status: str, message: str) -> bool:
        if self.outcome.done():
            return False
        self.outcome.set_result((status, message))
        return True

    # --- the work ------------------------------------------------------------------------------------------
    async def run(self, on_ringing: Callable[[], Awaitable[None]]) -> tuple[str, str]:
        """(status, message): answered | busy | no_answer | cancelled | failed. Returns once the leg is either
        in the caller's bridge or gone, and MOH is off."""
        call = self.call
        d = call.deps
        rest = d.rest
        try:
            try:
                await rest.start_moh(call.caller.id, d.config.controller.moh_class or None)
                if self.pending:
                    # `originator` (not `formats`: they are exclusive) ties the leg's codecs to the caller's.
                    await rest.create_channel(
                        endpoint=self.endpoint,
                        app=d.app,
                        channel_id=self.leg,
                        app_args=f"transfer,{call.call_id}",
                        originator=call.caller.id,
                    )
                    call.extra_legs.add(self.leg)
                if self.pending:
                    # The created leg enters Stasis after the REST answer: dial waits for its StasisStart.
                    dial = partial(rest.dial, self.leg, timeout=max(1, math.ceil(self.timeout_s)))
                    await call.legs.run(self.leg, dial, d.config.controller.ari_timeout_ms / 1000)
                    await on_ringing()
                try:
                    status, message = await asyncio.wait_for(asyncio.shield(self.outcome), self.timeout_s + GRACE_S)
                except asyncio.TimeoutError:
                    status, message = "no_answer", f"no answer within {self.timeout_s:g} s"
                    self._settle(status, message)
            except (AriError, NotInStasis) as exc:
                log.warning("transfer to %s failed: %s", self.endpoint, exc)
                status, message = "failed", str(exc)
                self._settle(status, message)
            if status == "answered":
                try:
                    await self._connect()
                    return status, f"connected to {self.endpoint}"
                except AriError as exc:
                    log.warning("answered transfer leg %s could not be bridged: %s", self.leg, exc)
                    status, message = "failed", f"the answered leg could not be bridged: {exc}"
            await self._clean_up()
            return status, message
        finally:
            self.finished.set()

    async def _connect(self) -> None:
        """The agent joins the caller's bridge first (if that fails the AI is still there), then the AI's
        media leg leaves and the hold music stops."""
        call = self.call
        rest = call.deps.rest
        # From here the media leg's StasisEnd is expected (not "media lost"), and the agent leg's means the
        # agent hung up (it may do so while addChannel is in flight).
        call.state, call.end_hint, call.agent_leg = "transferred", "transferred", self.leg
        try:
            await rest.add_channel(call.bridge, self.leg)
        except AriError:
            if call.state == "transferred":
                call.state, call.end_hint, call.agent_leg = "active", "", ""
            raise
        if call.media:
            await _quietly(rest.remove_channel(call.bridge, call.media))
        await asyncio.gather(_quietly(rest.stop_moh(call.caller.id)), call.drop_media())
        await call.deps.redis.hset(
            call.deps.keys.call(call.call_id), mapping={"state": "transferred", "transfer_channel": self.leg}
        )
        # The AI is off the call: its worker slot and provider session are free for the next caller now.
        await call.deps.admission.release_worker(call.call_id, call.provider, "transferred")
        log.info("call %s transferred to %s", call.caller.id, self.endpoint)

    async def _clean_up(self) -> None:
        call = self.call
        rest = call.deps.rest
        if self.leg in call.extra_legs:
            await _quietly(rest.hangup(self.leg))
            call.extra_legs.discard(self.leg)
        if not call.caller_gone.is_set():
            await _quietly(rest.stop_moh(call.caller.id))


# A transfer leg may be gone, out of Stasis, or already out of (400/422) the bridge.
_quietly = partial(quietly, what="transfer cleanup step", expected=(400, 404, 409, 422))
