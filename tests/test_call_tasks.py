"""The calls' tasks (setup, move, teardown) are owned by one TaskSet: the controller's stop cancels and awaits
them (a teardown stuck on Asterisk or Redis is not left pending), and a task that raises is logged when it
ends, not as "Task exception was never retrieved" at garbage collection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from controller import stasis
from controller.ari.resources import Channel
from controller.call import Call, CallDeps
from controller.stasis import StasisApp
from shared.config import load_config
from shared.keys import Keys
from tests.conftest import CONFIG, TEST_API_KEY, TEST_ARI_PASSWORD

ENV = {"OPENAI_API_KEY": TEST_API_KEY, "ASTERISK_ARI_PASSWORD": TEST_ARI_PASSWORD}


class Rest:
    async def hangup(self, channel_id: str, reason: str = "") -> bool:
        return True

    async def destroy_bridge(self, bridge_id: str) -> bool:
        return True


class StuckAdmission:
    """A release that never answers (Redis hanging)."""

    def __init__(self) -> None:
        self.releasing = asyncio.Event()

    async def release(self, *_args: Any, **_kwargs: Any) -> bool:
        self.releasing.set()
        await asyncio.Event().wait()
        return True


def app_with(admission: object) -> StasisApp:
    deps = CallDeps(
        config=load_config(CONFIG, env=ENV).config,
        rest=cast(Any, Rest()),
        redis=cast(Any, None),
        keys=Keys("va-test-call-tasks:"),
        admission=cast(Any, admission),
        app="voice-agent",
        capabilities=lambda: None,
        controller_id="c",
    )
    return StasisApp(deps)


async def test_stop_cancels_and_awaits_a_teardown_under_way(monkeypatch):
    monkeypatch.setattr(stasis, "TEARDOWN_FINISH_S", 0.05, raising=False)
    admission = StuckAdmission()
    app = app_with(admission)
    call = Call(app.deps, "call-1", Channel(id="caller-1"))
    call.end("caller_hangup")
    teardown = call._teardown
    assert teardown is not None
    await asyncio.wait_for(admission.releasing.wait(), 5)
    await asyncio.wait_for(app.stop(), 10)
    assert teardown.done()  # main left it pending forever
    await asyncio.wait_for(app.stop(), 5)  # idempotent


async def test_a_call_task_that_raises_is_logged_when_it_ends(caplog):
    class Released:
        async def release(self, *_args: Any, **_kwargs: Any) -> bool:
            return False

    app = app_with(Released())
    call = Call(app.deps, "call-2", Channel(id="caller-2"))

    def broken(_call: Call) -> None:
        raise RuntimeError("on_ended bug")

    call.on_ended = broken
    call.end("caller_hangup")
    assert call._teardown is not None
    await asyncio.wait({call._teardown}, timeout=5)
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and "end-call-2" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    await app.stop()
