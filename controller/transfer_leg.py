"""What a controlled transfer's leg has come to: the outcome the call's events settle (`controller/call.py`) and
the transfer's work waits for (`controller/transfer.py`). It knows no call, so both can use it.

The outcome is a one-shot future that the first of these settles: the leg's `Dial` status (ANSWER, BUSY,
NOANSWER …), the leg leaving Stasis before an answer, a cancel, the call ending, or the transfer's own ring
timer (a cancelled or dropped leg never gets a final `Dial` event, trace 05b, so nothing else guarantees an end).
"""

from __future__ import annotations

import asyncio

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


class TransferLeg:
    """One transfer leg (`leg`: its channel id) rung toward `endpoint` for up to `timeout_s`."""

    def __init__(self, leg_id: str, endpoint: str, timeout_s: float):
        self.leg = leg_id
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        # (status, message): answered | busy | no_answer | cancelled | failed
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
            self.settle(outcome, f"dial status {status}")

    def hangup_requested(self, cause: int | None, soft: bool | None) -> None:
        if not soft and cause is not None:
            self.hangup_cause = cause

    def leg_left(self) -> None:
        """StasisEnd of the leg: before an answer it is the far end giving up (or our own hangup)."""
        status = _CAUSES.get(self.hangup_cause or 0, "failed")
        self.settle(status, f"the destination hung up (cause {self.hangup_cause})")

    def cancel(self) -> bool:
        """False when it is too late (already answered or over)."""
        return self.settle("cancelled", "cancelled")

    def abort(self, why: str) -> None:
        self.settle("failed", why)

    @property
    def pending(self) -> bool:
        return not self.outcome.done()

    def settle(self, status: str, message: str) -> bool:
        """The first outcome wins; False when one was already settled."""
        if self.outcome.done():
            return False
        self.outcome.set_result((status, message))
        return True
