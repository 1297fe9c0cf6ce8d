"""A reconcile after a Redis outage runs while ARI events keep flowing (controller/service.py,
`_reconcile_after_outages`): between its listing of Asterisk's channels and its pass over them, a caller may leave
and its StasisEnd be handled. Such a caller must be neither taken for one that entered Stasis unseen (a ghost call,
a slot, a summary mail) nor adopted with a call left by another controller (a call nobody would end). The
StasisApp runs in the test with a stand-in for ARI and the real Redis."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from controller.admission import Admission
from controller.ari.resources import Channel, DialplanCEP
from controller.call import CallDeps
from controller.stasis import StasisApp
from shared.config import load_config
from shared.keys import Keys
from tests.ari_harness import lease_holder
from tests.conftest import CONFIG, TEST_API_KEY, TEST_ARI_PASSWORD

ENV = {"OPENAI_API_KEY": TEST_API_KEY, "ASTERISK_ARI_PASSWORD": TEST_ARI_PASSWORD}
APP = "asterisk-ai-voice-agent"


def caller(channel_id: str) -> Channel:
    return Channel(
        id=channel_id,
        name=f"PJSIP/alice-{channel_id}",
        dialplan=DialplanCEP(app_name="Stasis", app_data=APP),
        channelvars={"AI_CONTEXT": "demo_openai", "AI_PROVIDER": ""},
    )


class Asterisk:
    """GET /channels answers what was listed; every other request succeeds and does nothing."""

    def __init__(self, channels: list[Channel]):
        self.channels = channels

    async def list_channels(self) -> list[Channel]:
        return self.channels

    async def list_bridges(self) -> list:
        return []

    def __getattr__(self, name: str):
        async def nothing(*_args: Any, **_kwargs: Any) -> None:
            return None

        return nothing


async def app_listing(redis: aioredis.Redis, keys: Keys, channels: list[Channel]) -> StasisApp:
    config = load_config(CONFIG, env=ENV).config
    admission = Admission(
        redis,
        keys,
        stale_after_ms=3000,
        provider_limit=10,
        queue_timeout_ms=30_000,
        retention_ms=60_000,
        fence=lease_holder(redis, keys),
    )
    deps = CallDeps(
        config=config,
        rest=cast(Any, Asterisk(channels)),
        redis=redis,
        keys=keys,
        admission=admission,
        app=APP,
        capabilities=lambda: None,
        controller_id="c",
    )
    return StasisApp(deps)


async def test_a_caller_whose_stasis_end_was_handled_is_not_taken_by_a_reconcile_while_events_flow(redis_url, prefix):
    redis = aioredis.Redis.from_url(redis_url)
    try:
        gone, waiting = caller("gone-1"), caller("waiting-1")
        app = await app_listing(redis, Keys(prefix), [gone, waiting])
        app._stasis_end(gone)  # its StasisEnd came after Asterisk listed it
        await app.reconcile(False, why="test", events_flowing=True)
        assert set(app.by_caller) == {"waiting-1"}  # the one nobody saw enter is taken, the one that left is not
        await app.stop()

        # A call of a dead controller whose caller hangs up between the listing and the adoption: finished (its
        # slot released, once), not adopted as a live call nobody would ever end.
        keys = Keys(prefix)
        await redis.hset(keys.call("c9"), mapping={"state": "active", "caller_channel": "gone-2", "media_channel": "m"})
        await redis.sadd(keys.calls_active, "c9")
        late = caller("gone-2")
        app = await app_listing(redis, keys, [late, Channel(id="m", name="AudioSocket/x")])
        app._stasis_end(late)
        await app.reconcile(False, why="test", events_flowing=True)
        assert not app.calls and (await redis.hget(keys.call("c9"), "state")) == b"ended"
        await app.stop()

        # On a (re)connect no event is handled during the reconcile: a caller listed in Stasis is there, even one
        # that left once before (and came back from the dialplan while the events socket was down).
        again = await app_listing(redis, Keys(prefix), [gone])
        again._stasis_end(gone)
        await again.reconcile(True)
        assert set(again.by_caller) == {"gone-1"}
        await again.stop()
    finally:
        await redis.aclose()
