"""request_transcript on one call: read back before anything is scheduled, a few addresses at most, a rate limit,
and the call record's address list updated in one step (the runner in this process, the real Redis)."""

from __future__ import annotations

import asyncio
import json
import uuid

import msgspec
import pytest
import redis.asyncio as aioredis

from media_worker.call_log import CallLog
from media_worker.call_state import ToolCalled
from media_worker.context import WorkerContext
from media_worker.tool_calls import FarewellSignals, ToolRunner
from media_worker.transcript_requests import TranscriptRequests, Verdict
from shared.config.schema import Config
from shared.keys import Keys
from shared.messages import CallPlan


class Host:
    """The call around the tools: here only the caller's turns matter."""

    def __init__(self) -> None:
        self.turns = 0

    def caller_turns(self) -> int:
        return self.turns

    def set_end_reason(self, reason: str) -> None:
        pass

    def begin_farewell(self, instructions: str) -> FarewellSignals:
        return FarewellSignals()

    def cancel_farewell(self) -> None:
        pass

    def tell_model(self, text: str) -> None:
        pass

    async def agent_finished(self) -> None:
        pass


class Call:
    def __init__(self, runner: ToolRunner, host: Host, aredis: aioredis.Redis, keys: Keys, call_id: str):
        self.runner, self.host, self.redis, self.keys, self.call_id = runner, host, aredis, keys, call_id
        self.n = 0

    async def transcript(self, email: str, confirmed: bool = False) -> dict:
        self.n += 1
        args = json.dumps({"email": email, "confirmed": confirmed})
        outcome = await self.runner.run(ToolCalled(f"resp-{self.n}", f"tc-{self.n}", "request_transcript", args))
        return json.loads(outcome.output)

    async def read_back_and_confirm(self, email: str) -> dict:
        """The polite sequence: the read-back, the caller's yes, the confirmed call."""
        first = await self.transcript(email)
        if first.get("status") != "confirm":
            return first
        self.host.turns += 1
        return await self.transcript(email, confirmed=True)

    async def stored(self) -> list[str]:
        value = await self.redis.hget(self.keys.call(self.call_id), "transcript_to")
        return [a for a in (value or "").split(",") if a]


@pytest.fixture
async def make_call(redis_url, prefix):
    aredis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    made: list[Call] = []

    async def make(config: Config | None = None) -> Call:
        call_id = uuid.uuid4().hex
        await aredis.hset(keys.call(call_id), mapping={"state": "active"})
        ctx = WorkerContext(config or Config(), aredis, keys, "worker-t", None, None, None)  # type: ignore[arg-type]
        plan = CallPlan(
            call_id=call_id,
            caller_channel="caller-1",
            context="t",
            provider="openai_realtime",
            profile="p",
            transport="audiosocket",
            format="slin16",
            provider_format="pcm16",
            tools=["request_transcript"],
        )
        host = Host()
        call = Call(ToolRunner(ctx, plan, CallLog(aredis, keys, call_id), host), host, aredis, keys, call_id)
        made.append(call)
        return call

    yield make
    for call in made:
        await call.runner.call_log.close()
    await aredis.aclose()


def config_with(**transcript) -> Config:
    return msgspec.convert({"tools": {"request_transcript": transcript}}, Config)


def address(i: int) -> str:
    return f"caller{i}@example.com"


async def test_confirmed_on_the_first_call_schedules_nothing(make_call):
    call = await make_call()
    out = await call.transcript("bob dot jones at example dot com", confirmed=True)
    assert out["status"] == "confirm" and out["address"] == "bob.jones@example.com"
    assert "not read back" in out["message"]
    assert await call.stored() == []
    # Still nothing without the caller's answer: the read-back happened, the caller has not spoken since.
    out = await call.transcript("bob.jones@example.com", confirmed=True)
    assert out["status"] == "awaiting_caller" and not out["ok"]
    assert await call.stored() == []
    call.host.turns += 1  # the caller says yes
    out = await call.transcript("bob.jones@example.com", confirmed=True)
    assert out["status"] == "scheduled"
    assert await call.stored() == ["bob.jones@example.com"]


async def test_read_back_and_confirmation_in_one_response_schedule_nothing(make_call):
    """Both calls in one response: the model never waited for the caller."""
    call = await make_call()
    outs = await asyncio.gather(call.transcript("ann@example.com"), call.transcript("ann@example.com", confirmed=True))
    assert [o["status"] for o in outs] == ["confirm", "awaiting_caller"]
    assert await call.stored() == []


async def test_sixty_addresses_on_one_call_give_at_most_three(make_call):
    call = await make_call()
    outs = [await call.read_back_and_confirm(address(i)) for i in range(60)]
    assert [o["status"] for o in outs[:3]] == ["scheduled"] * 3
    assert await call.stored() == [address(0), address(1), address(2)]
    assert all(o["ok"] is False for o in outs[3:])  # refused: the limit, then the rate limit
    assert "cannot add another" in outs[3]["error"]
    assert outs[3]["scheduled"] == [address(0), address(1), address(2)]


async def test_the_same_address_again_is_not_another_one(make_call):
    call = await make_call()
    assert (await call.read_back_and_confirm("ann@example.com"))["status"] == "scheduled"
    assert (await call.transcript("ANN@example.com", confirmed=True))["status"] == "scheduled"
    assert await call.stored() == ["ann@example.com"]


async def test_parallel_confirmations_store_what_the_model_was_told(make_call):
    """Five read back, then five confirmations at once (default limits): three fit, and the call record holds
    exactly the ones the model was told are scheduled (a read-modify-write used to lose some)."""
    call = await make_call()
    for i in range(5):
        assert (await call.transcript(address(i)))["status"] == "confirm"
    call.host.turns += 1
    outs = await asyncio.gather(*(call.transcript(address(i), confirmed=True) for i in range(5)))
    told = [o["address"] for o in outs if o.get("status") == "scheduled"]
    assert len(told) == 3
    assert sorted(await call.stored()) == sorted(told)


async def test_sixty_parallel_confirmations_never_lose_an_address(make_call):
    call = await make_call(config_with(max_addresses=20, max_calls_per_minute=120))
    for i in range(60):
        assert (await call.transcript(address(i)))["status"] == "confirm"
    call.host.turns += 1
    outs = await asyncio.gather(*(call.transcript(address(i), confirmed=True) for i in range(60)))
    told = [o["address"] for o in outs if o.get("status") == "scheduled"]
    assert len(told) == 20
    assert sorted(await call.stored()) == sorted(told)
    assert {o["status"] for o in outs} == {"scheduled", "limit_reached"}


async def test_parallel_runners_on_one_call_share_the_limit(make_call, redis_url):
    """Two runners (say, a call re-homed while the old worker still answers) write the same record: the limit
    is Redis's, not either runner's."""
    first = await make_call(config_with(max_addresses=3, max_calls_per_minute=120))
    second = await make_call(config_with(max_addresses=3, max_calls_per_minute=120))
    second.call_id = first.call_id
    second.runner.call_id = first.call_id
    for call, base in ((first, 0), (second, 10)):
        for i in range(base, base + 3):
            await call.transcript(address(i))
        call.host.turns += 1
    both = ((first, 0), (second, 10))
    outs = await asyncio.gather(*(c.transcript(address(i), True) for c, base in both for i in range(base, base + 3)))
    told = [o["address"] for o in outs if o.get("status") == "scheduled"]
    assert len(told) == 3 and sorted(await first.stored()) == sorted(told)


async def test_too_many_calls_in_a_minute_are_refused(make_call):
    call = await make_call(config_with(max_calls_per_minute=4))
    outs = [await call.transcript(address(i)) for i in range(6)]
    assert [o.get("status") for o in outs[:4]] == ["confirm"] * 4
    assert all(not o["ok"] and "more than 4 times in a minute" in o["error"] for o in outs[4:])


async def test_an_ended_call_takes_no_address(make_call):
    call = await make_call()
    assert (await call.transcript("ann@example.com"))["status"] == "confirm"
    await call.redis.delete(call.keys.call(call.call_id))
    call.host.turns += 1
    out = await call.transcript("ann@example.com", confirmed=True)
    assert not out["ok"] and "call record is gone" in out["error"]
    assert not await call.redis.exists(call.keys.call(call.call_id))  # not recreated without its TTL


def test_the_rules_without_io():
    requests = TranscriptRequests(max_addresses=2, max_calls_per_minute=3)
    assert requests.decide("a@x.com", True, caller_turns=0, now=0.0) is Verdict.UNCONFIRMED
    assert requests.decide("a@x.com", True, caller_turns=0, now=1.0) is Verdict.AWAITING_CALLER
    assert requests.decide("a@x.com", True, caller_turns=1, now=2.0) is Verdict.STORE
    assert requests.decide("b@x.com", False, caller_turns=1, now=3.0) is Verdict.TOO_OFTEN
    assert requests.decide("b@x.com", False, caller_turns=1, now=60.5) is Verdict.READ_BACK  # a minute on
    requests.stored = ["a@x.com", "c@x.com"]
    assert requests.decide("b@x.com", True, caller_turns=2, now=61.0) is Verdict.FULL
    assert requests.decide("A@x.com", True, caller_turns=2, now=62.0) is Verdict.STORE  # already stored
