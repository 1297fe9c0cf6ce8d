"""Whether the OpenAI key works, as the worker's Realtime opens tell it, and when the next open may be tried.

A refused key or an empty account fails every open the same way, so retrying at once only hammers the API
(about 1000 opens a second from the prewarm pool before this existed). Once an open fails for the key, opens
wait for a capped exponential backoff with full jitter; a call that arrives meanwhile is refused at once
(its caller goes to the dialplan fallback instead of waiting), the worker is not ready, and one line per
streak says what is wrong. The first open that succeeds (the key fixed and rotated with SIGHUP, or billing
fixed) clears it.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable

from media_worker.realtime.failures import Failure, FailureKind, advice
from shared.metrics import REALTIME_KEY_STATE, REALTIME_OPEN_FAILURES

log = logging.getLogger("realtime.key")


class KeyState(enum.Enum):
    UNKNOWN = "unknown"  # no open has finished yet
    ACCEPTED = "accepted"  # the last open that said anything about the key succeeded
    REJECTED = "rejected"  # authentication failed: a wrong, revoked or unprivileged key
    NO_QUOTA = "no_quota"  # the account cannot pay


class Backoff:
    """Capped exponential backoff with full jitter: each wait is uniform in [0, min(cap, base * 2^n)], so
    workers that failed together do not retry together."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempts = 0


class KeyHealth:
    def __init__(
        self,
        base_s: float = 1.0,
        cap_s: float = 60.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.state = KeyState.UNKNOWN
        self.failure: Failure | None = None  # the failure that blocks the key, while it does
        self.generation = 0  # bumped by each key rotation: outcomes of opens with an older key are ignored
        self.retry_at = 0.0  # no open before this (clock time) while the key is blocked
        self.failed_attempts = 0  # in the current streak
        self._backoff = Backoff(base_s, cap_s, rng)
        self._clock = clock
        _publish(self.state)

    def blocked(self) -> Failure | None:
        """The failure to answer with instead of opening, while the backoff lasts; None: an open may be tried."""
        if self.failure is not None and self._clock() < self.retry_at:
            return self.failure
        return None

    def failing(self) -> str | None:
        """A ready check: why no call can get a session."""
        return advice(self.failure) if self.failure is not None else None

    def succeeded(self, generation: int) -> None:
        if generation != self.generation:
            return
        if self.failure is not None:
            log.info(
                "the OpenAI key is accepted again (after %d failed opens): Realtime sessions open normally",
                self.failed_attempts,
            )
        self.failure = None
        self.failed_attempts = 0
        self._backoff.reset()
        self._set(KeyState.ACCEPTED)

    def failed(self, failure: Failure, generation: int) -> None:
        """An open failed for `failure`. Only authentication and quota failures block the key; the others
        are counted and left to the opener's own retry."""
        REALTIME_OPEN_FAILURES.labels(failure.kind.value).inc()
        if generation != self.generation or not failure.kind.blocks_the_key:
            return
        if self.failure is None or self.failure.reason != failure.reason:
            # One line per streak (and when the cause changes), not per attempt.
            log.error("%s (%s)", advice(failure), failure.detail or "no detail from the server")
        else:
            log.debug("open still refused (%s); attempt %d", failure.reason, self.failed_attempts + 1)
        self.failure = failure
        self.failed_attempts += 1
        self.retry_at = self._clock() + self._backoff.next()
        self._set(KeyState.REJECTED if failure.kind is FailureKind.AUTH else KeyState.NO_QUOTA)

    def rotated(self) -> None:
        """A new key is in use: try it at once. The worker stays not ready until an open with it succeeds."""
        self.generation += 1
        self.retry_now()

    def retry_now(self) -> None:
        """The operator says the cause may be fixed (SIGHUP with the same key: billing sorted out): the next open
        is tried at once, and the backoff starts over."""
        self.retry_at = 0.0
        self._backoff.reset()

    def _set(self, state: KeyState) -> None:
        if state is not self.state:
            self.state = state
            _publish(state)


def _publish(current: KeyState) -> None:
    for state in KeyState:
        REALTIME_KEY_STATE.labels(state.value).set(1 if state is current else 0)
