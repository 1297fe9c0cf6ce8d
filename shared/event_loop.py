"""Which asyncio event loop a role runs on: the standard one, or uvloop (libuv's) when configured and installed.

uvloop is an optional extra (`pip install 'asterisk-ai-voice-agent[uvloop]'`): bench/pinned_capacity.py measures
the media worker on both, and the figures in bench/RESULTS.md say whether it is worth it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from shared.config.schema import EventLoopKind


class EventLoopUnavailable(RuntimeError):
    pass


def loop_factory(
    kind: EventLoopKind, setting: str = "media_worker.event_loop"
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory asyncio.Runner takes (None: the standard loop); raises EventLoopUnavailable, naming the fix,
    when uvloop is asked for (by `setting`) and not installed."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise EventLoopUnavailable(
            f"{setting} is uvloop, but uvloop is not installed: "
            f"pip install 'asterisk-ai-voice-agent[uvloop]', or set {setting} to asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, int], kind: EventLoopKind, setting: str = "media_worker.event_loop") -> int:
    """asyncio.run(main) on the loop `kind` names (`setting`: where it was asked for, for the error)."""
    try:
        factory = loop_factory(kind, setting)
    except EventLoopUnavailable:
        main.close()  # never awaited: close it rather than leave a warning behind
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
