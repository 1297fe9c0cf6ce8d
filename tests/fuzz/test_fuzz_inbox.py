"""Inbox stream entries: one entry's decode and handling, with any `type` and `data` (bytes, not always UTF-8,
not always JSON, near-valid messages of every kind) — the worker's inbox reader (media_worker/inbox.py `Inbox._one`,
which hands each entry to CallManager.handle) and the controller's ControlInbox._handle, each against the real
Redis (DB of VA_TEST_REDIS_URL, a key prefix per test).

Allowed outcomes: the entry is handled, or dead-lettered (and an unusable assignment reported to the controller);
nothing raises (a poison entry must not cost more than itself); no session, held connection, RTP port or request
stays behind once the entry's call is stopped; no task is left over."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.call_control import ControlInbox, reply_for
from media_worker.audio.playout import PlayoutClock
from media_worker.calls import CallManager
from media_worker.inbox import Inbox
from media_worker.context import WorkerContext
from media_worker.realtime.client import ClientSettings
from media_worker.realtime.pool import SessionPool
from media_worker.session import CLOSE_TIMEOUT_S
from shared.config.schema import Config
from shared.keys import Keys
from tests.ari_harness import lease_holder
from tests.conftest import OFFLINE
from tests.fuzz.harness import EXAMPLE_TIMEOUT_S, examples, garbled, json_values, leftover_tasks, mutated

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

CALL = "00000000-0000-4000-8000-0000000000aa"
PLAN = {
    "call_id": CALL,
    "caller_channel": "caller-1",
    "context": "support",
    "provider": "openai_realtime",
    "profile": "default",
    "transport": "audiosocket",
    "format": "slin16",
    "provider_format": "pcm16",
    "greeting": "",
    "tools": ["hangup_call"],
}
MESSAGES = {
    "assign": {"call_id": CALL, "epoch": 1, "rtp_port": 0, "plan": PLAN},
    "control_result": {"request_id": "r1", "call_id": CALL, "ok": True, "status": "done", "message": "", "final": True},
    "media_peer": {"call_id": CALL, "host": "127.0.0.1", "port": 4000},
    "media": {"call_id": CALL, "epoch": 1, "url": "ws://127.0.0.1:9/media/c1", "channel_id": "m1"},
    "media_bridged": {"call_id": CALL, "epoch": 1},
    "end": {"call_id": CALL, "reason": "hangup"},
}
KEYS = sorted({k for m in MESSAGES.values() for k in m} | set(PLAN))
TRANSPORTS = ["audiosocket", "rtp", "websocket", "sip", ""]
FORMATS = ["slin", "slin16", "slin24", "ulaw", "alaw", ""]


@st.composite
def plans(draw: st.DrawFn) -> dict:
    """A valid assignment's plan with the fields a worker acts on drawn from the valid and invalid values."""
    return {
        **PLAN,
        "transport": draw(st.sampled_from(TRANSPORTS)),
        "format": draw(st.sampled_from(FORMATS)),
        "provider_format": draw(st.sampled_from(["pcm16", "g711_ulaw", "x"])),
    }


def _json(value) -> bytes:
    return json.dumps(value).encode()


worker_entries = st.one_of(
    st.sampled_from(sorted(MESSAGES)).flatmap(lambda k: st.tuples(st.just(k), mutated(MESSAGES[k], KEYS).map(_json))),
    st.builds(
        lambda p, port: ("assign", _json({**MESSAGES["assign"], "plan": p, "rtp_port": port})),
        plans(),
        st.sampled_from([0, 1, 65535, 65536, 70000, -1, 2**40]),
    ),  # fmt: skip
    st.sampled_from(sorted(MESSAGES)).flatmap(lambda k: st.tuples(st.just(k), garbled(_json(MESSAGES[k])))),
    st.tuples(
        st.sampled_from([*MESSAGES, "", "ASSIGN", "x"]) | st.text(max_size=8) | st.binary(max_size=6),
        st.binary(max_size=30) | json_values.map(_json),
    ),  # fmt: skip
    st.tuples(st.sampled_from(sorted(MESSAGES)), st.sampled_from([b"\xff\xfe", b'{"call_id": "\xff"}', b""])),
)


@pytest.fixture
def worker(loop, redis_url, prefix):
    settings_ = ClientSettings(url=OFFLINE["OPENAI_REALTIME_URL"], model="gpt-realtime", api_key="sk-fuzz",
                               reconnect_attempts=1, open_timeout_s=1.0)  # fmt: skip
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    ctx = WorkerContext(
        Config(), redis, Keys(prefix), "worker-fuzz", PlayoutClock(), SessionPool(settings_, 0), settings_
    )
    calls = CallManager(ctx, listen_host="127.0.0.1", allowed_hosts=[])
    streams = aioredis.Redis.from_url(redis_url)  # the reader's bytes client, as in the worker

    async def refuse(call_id: str, epoch: int, why: str) -> None:
        pass  # the controller would re-admit the call elsewhere; the worker has let go of it already

    inbox = Inbox(streams, Keys(prefix), "worker-fuzz", calls.handle, refuse)
    stop = asyncio.Event()
    ticking = loop.create_task(ctx.clock.run(stop))
    yield calls, inbox
    loop.run_until_complete(calls.stop_all("fuzz over"))
    stop.set()
    loop.run_until_complete(ticking)
    loop.run_until_complete(redis.aclose())
    loop.run_until_complete(streams.aclose())


@pytest.mark.surface("inbox (worker)")
@settings(max_examples=examples())
@given(entries=st.lists(worker_entries, min_size=1, max_size=4))
def test_worker_inbox_takes_any_entry(surface, loop, worker, entries):
    calls, inbox = worker
    surface.example()
    before = set(asyncio.all_tasks(loop))

    async def one() -> None:
        async with asyncio.timeout(CLOSE_TIMEOUT_S + EXAMPLE_TIMEOUT_S):  # a session's end may take CLOSE_TIMEOUT_S
            for n, (kind, data) in enumerate(entries):
                await inbox._one(f"{n + 1}-0".encode(), {b"type": _bytes(kind), b"data": _bytes(data)})
            # The controller ends each call (type "end"): every session, port and connection is then released.
            for call_id in list(calls.sessions):
                await calls.handle("end", _json({"call_id": call_id, "reason": "fuzz"}))
            await calls.wait_no_calls()
            me = asyncio.current_task()
            while leftover_tasks(loop, before | {me}):  # each reaper releases its call's port and lease, then ends
                await asyncio.sleep(0.001)
        await asyncio.sleep(0)

    loop.run_until_complete(one())
    leaked = {name: len(getattr(calls, name)) for name in ("sessions", "_rtp", "_held", "_ws")}
    assert not any(leaked.values()), leaked
    assert not leftover_tasks(loop, before)


def _bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data


# --- the controller's inbox -----------------------------------------------------------------------------------

REQUEST = {
    "request_id": "req-1",
    "call_id": CALL,
    "worker_id": "w1",
    "action": "hangup",
    "destination": "",
    "reason": "",
}


class Actions:
    """Stands in for CallControl: replies at once (the fuzz is of the entry, not of the actions)."""

    async def execute(self, request, send) -> None:
        await send(reply_for(request, True, "done"))


text_or_bytes = (
    st.sampled_from(["control", b"control", b"\xffcontrol", "", b""]) | st.text(max_size=6) | st.binary(max_size=6)
)
control_data = st.one_of(
    mutated(REQUEST, sorted(REQUEST)).map(_json),
    st.builds(lambda rid: _json({**REQUEST, "request_id": rid}), st.text(max_size=8)),
    garbled(_json(REQUEST)),
    st.binary(max_size=30),
    st.sampled_from([b"\xff", "text", None]),
)


@st.composite
def control_fields(draw: st.DrawFn) -> dict:
    fields: dict = {}
    if draw(st.booleans()):
        fields[draw(st.sampled_from(["type", b"type"]))] = draw(text_or_bytes)
    if draw(st.integers(0, 4)):
        fields[draw(st.sampled_from(["data", b"data"]))] = draw(control_data)
    return fields


@pytest.fixture
def control(loop, redis_url, prefix):
    redis = aioredis.Redis.from_url(redis_url)
    fence = lease_holder(redis, Keys(prefix))
    inbox = ControlInbox(redis, Keys(prefix), "controller-fuzz", Actions(), fence=fence)  # type: ignore[arg-type]
    yield inbox
    loop.run_until_complete(redis.aclose())


@pytest.mark.surface("inbox (controller)")
@settings(max_examples=examples())
@given(fields=control_fields())
def test_controller_inbox_takes_any_entry(surface, loop, control, fields):
    surface.example()
    before = set(asyncio.all_tasks(loop))
    entry_id = f"{uuid.uuid4().int % 10**12}-0"

    async def one() -> None:
        async with asyncio.timeout(EXAMPLE_TIMEOUT_S):
            await control._contained(entry_id, fields)

    loop.run_until_complete(one())
    assert not control.in_flight
    assert not leftover_tasks(loop, before)
