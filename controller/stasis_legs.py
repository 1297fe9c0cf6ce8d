"""Which of a call's own legs (media, transfer) have entered our Stasis app, and ARI steps that need them there.

Asterisk answers `externalMedia` and `/channels/create` as soon as the channel exists; the channel enters the
Stasis app a little later, from another thread, and its StasisStart comes on the events socket after that (tens
of ms under load, in no fixed order with the REST answer). Until then every step that needs the channel under
Stasis control answers "Channel not in Stasis application": 422 from `addChannel`, 409 from channel steps such
as `dial`. So such a step waits for the leg's StasisStart, and that answer, if it still comes, is retried until
the deadline: it is a race, not a refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from controller.ari.errors import AriError

T = TypeVar("T")

RETRY_FIRST_S = 0.02
RETRY_MAX_S = 0.2


class NotInStasis(Exception):
    """The leg did not enter Stasis (or kept answering 422) within the deadline."""


class StasisLegs:
    def __init__(self) -> None:
        self._entered: dict[str, asyncio.Event] = {}

    def _event(self, leg: str) -> asyncio.Event:
        event = self._entered.get(leg)
        if event is None:
            event = self._entered[leg] = asyncio.Event()
        return event

    def entered(self, leg: str) -> None:
        """The leg's StasisStart arrived (it may come before the REST answer that created the leg)."""
        self._event(leg).set()

    def left(self, leg: str) -> None:
        self._entered.pop(leg, None)

    def is_in(self, leg: str) -> bool:
        event = self._entered.get(leg)
        return event is not None and event.is_set()

    async def run(self, leg: str, step: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """`step()` once `leg` is in Stasis; "not in Stasis" answers are retried with backoff. Raises
        `NotInStasis` after `timeout_s`, any other ARI error at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self._event(leg).wait()
        except TimeoutError:
            raise NotInStasis(f"channel {leg} did not enter Stasis within {timeout_s:.1f}s") from None
        delay = RETRY_FIRST_S
        while True:
            try:
                return await step()
            except AriError as exc:
                racing = exc.status == 422 or (exc.status == 409 and "not in Stasis" in exc.message)
                if not racing:
                    raise
                if loop.time() + delay > deadline:
                    raise NotInStasis(f"channel {leg}: {exc.message} for {timeout_s:.1f}s") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
