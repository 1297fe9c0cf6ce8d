"""The controller's call-control tools through real processes: a controller subprocess, the real Redis and the
Asterisk simulator. The test plays the media worker: it XADDs ControlRequests to the controller inbox and
reads ControlReplies from the fake worker's inbox, and checks what happened on the (simulated) wire."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import msgspec
import pytest
import redis
import yaml
from rq import Queue

from shared.messages import ControlReply, ControlRequest, inbox_fields
from sim.asterisk import DEFAULT_DIALPLAN, AsteriskSim, CallerAudio
from sim.cluster import LocalCluster
from tests.ari_harness import ARI_PASSWORD, ARI_USER, start_controller, write_config
from tests.test_controller_calls import (  # noqa: F401  (fixtures)
    aredis,
    call_record,
    keys,
    listener,
    nothing_left,
    state_is,
    until,
    workers,
)
from shared.email_queue import summary_job_id, transcript_job_id

# slow tier: every test here runs a controller and media workers as processes (measured 2.5 s or more each)
pytestmark = pytest.mark.slow

DESTINATIONS = {
    "sales": {"type": "extension", "target": "6001", "description": "Sales team"},  # answers after ~1 s
    # The phones themselves: the simulator's from-internal Dial() passes neither ringing nor busy back to our
    # Local leg (a busy phone ends it with a plain hangup).
    "slow": {"type": "extension", "target": "6002", "dialplan_context": "agents", "description": "rings forever"},
    "busy": {"type": "extension", "target": "6003", "dialplan_context": "agents", "description": "always busy"},
    "brief": {
        "type": "extension",
        "target": "7001",
        "dialplan_context": "test-agents",
        "description": "answers, then hangs up after 1 s",
    },
    "support": {"type": "queue", "target": "support", "description": "Support queue"},
}
DIALPLAN = {**DEFAULT_DIALPLAN, "test-agents": {"7001": ["Ringing()", "Wait(0.3)", "Answer()", "Wait(1)", "Hangup()"]}}


@pytest.fixture
async def sim(tmp_path):
    s = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=tmp_path / "sim", dialplan=DIALPLAN)
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


@pytest.fixture
def controller(tmp_path, cluster_env, sim):
    clusters: list[LocalCluster] = []
    counter = itertools.count(1)

    async def start(transfer: dict | None = None, summary_every_call: bool = False) -> tuple[LocalCluster, object]:
        n = next(counter)
        path = write_config(tmp_path / f"controller-{n}.yaml", sim.url)
        data = yaml.safe_load(path.read_text())
        data["tools"]["transfer"].update({"destinations": DESTINATIONS, **(transfer or {})})
        data["tools"]["send_email_summary"]["send_after_every_call"] = summary_every_call
        path.write_text(yaml.safe_dump(data))
        return await start_controller(path, tmp_path, cluster_env, n, clusters)

    yield start
    for cluster in clusters:
        cluster.stop_all()


class WorkerSide:
    """What the media worker does on the model's tool calls: requests in, replies out."""

    def __init__(self, aredis, keys, worker_id: str):
        self.redis, self.keys, self.worker_id = aredis, keys, worker_id

    async def request(self, call_id: str, action: str, destination: str = "", request_id: str | None = None) -> str:
        request = ControlRequest(
            request_id=request_id or str(uuid.uuid4()),
            call_id=call_id,
            worker_id=self.worker_id,
            action=action,
            destination=destination,
        )
        await self.redis.xadd(self.keys.controller_inbox, inbox_fields("control", request))
        return request.request_id

    async def all_replies(self, request_id: str) -> list[ControlReply]:
        out = []
        for _, fields in await self.redis.xrange(self.keys.worker_inbox(self.worker_id)):
            if fields[b"type"] == b"control_result":
                reply = msgspec.json.decode(fields[b"data"], type=ControlReply)
                if reply.request_id == request_id:
                    out.append(reply)
        return out

    async def replies(self, request_id: str, count: int = 1, timeout: float = 10.0) -> list[ControlReply]:
        async def enough():
            got = await self.all_replies(request_id)
            return got if len(got) >= count else None

        enough.__name__ = f"{count} replies to {request_id}"
        return await until(enough, timeout)

    async def final(self, request_id: str, timeout: float = 10.0) -> ControlReply:
        async def final_reply():
            return next((r for r in await self.all_replies(request_id) if r.final), None)

        final_reply.__name__ = f"the final reply to {request_id}"
        return await until(final_reply, timeout)


async def active_call(sim, listener, aredis, keys, **kwargs):
    before = len(listener.connections)
    call = await sim.place_call(**kwargs)
    await listener.wait_for(before + 1)
    for conn in listener.connections.values():
        if (await call_record(aredis, keys, conn.uuid)).get("caller_channel") == call.channel_id:
            await until(await state_is(aredis, keys, conn.uuid, "active"))
            return call, conn.uuid
    pytest.fail(f"no media connection for {call.channel_id}")


def requests_to(sim, method: str, path_end: str):
    return [r for r in sim.rest_log if r.method == method and r.path.endswith(path_end)]


def dial_statuses(sim, leg: str) -> list[str]:
    return [
        e["dialstatus"]
        for e in sim.sent_events.get("asterisk-ai-voice-agent", [])
        if e["type"] == "Dial" and e["peer"]["id"] == leg
    ]


def none_of_ours_left(sim, caller: str):
    """Our legs, bridge and the caller gone. (The simulator keeps the busy phone's own Local half ringing
    busy after the far end was released: not a channel the controller knows or may touch.)"""

    def check():
        return not sim.bridges and not [c for c in sim.channels.values() if c.id == caller or c.id.count("-") >= 4]

    check.__name__ = "none of our channels or bridges left"
    return check


def bridged(sim, call_id: str) -> set[str]:
    bridge = sim.bridges.get(f"{call_id}-br")
    return {c.id for c in bridge.members} if bridge is not None else set()


@pytest.fixture
async def setup(sim, listener, workers, controller, aredis, keys):
    """A controller, a worker, and a helper for the worker's side of the inbox."""

    async def make(**controller_settings):
        worker = await workers(listener.port)
        await controller(**controller_settings)
        return WorkerSide(aredis, keys, worker.id)

    return make


# --- controlled transfer ------------------------------------------------------------------------------------


async def test_an_answered_transfer_bridges_caller_and_agent_and_the_ai_leaves(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "sales")
    ringing, answered = await side.replies(rid, 2, timeout=10)
    assert (ringing.status, ringing.ok, ringing.final) == ("ringing", True, False)
    assert (answered.status, answered.ok, answered.final) == ("answered", True, True)
    leg = f"{call_id}-xfer1"
    (create,) = requests_to(sim, "POST", "/channels/create")
    assert create.query["endpoint"] == "Local/6001@from-internal" and create.query["channelId"] == leg
    assert create.query["appArgs"] == f"transfer,{call_id}" and create.query["originator"] == call.channel_id
    assert "formats" not in create.query
    assert requests_to(sim, "POST", f"/channels/{call.channel_id}/moh")
    assert dial_statuses(sim, leg)[-1] == "ANSWER"
    await until(lambda: bridged(sim, call_id) == {call.channel_id, leg})
    await until(lambda: f"{call_id}-em" not in sim.channels)  # the AI's media leg is gone
    assert not sim.channels[call.channel_id].moh
    record = await call_record(aredis, keys, call_id)
    assert record["state"] == "transferred" and record["transfer_channel"] == leg
    await asyncio.sleep(0.3)
    assert not any("ss-noservice" in step for step in call.trail)  # the media leg's end was no "media lost"
    assert not requests_to(sim, "DELETE", f"/channels/{call.channel_id}")

    await call.hangup()
    await until(nothing_left(sim))  # the agent leg and the bridge too
    await until(await state_is(aredis, keys, call_id, "ended"))
    assert (await call_record(aredis, keys, call_id))["end_reason"] == "transferred"
    assert requests_to(sim, "DELETE", f"/channels/{leg}")


async def test_the_agent_hanging_up_first_hangs_up_the_caller(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "brief")
    assert (await side.final(rid)).status == "answered"
    await until(lambda: call.ended, timeout=5)
    assert requests_to(sim, "DELETE", f"/channels/{call.channel_id}")
    await until(nothing_left(sim))
    await until(await state_is(aredis, keys, call_id, "ended"))


async def test_a_busy_destination_leaves_the_caller_with_the_ai(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "busy")
    final = await side.final(rid)
    assert (final.status, final.ok) == ("busy", False)
    leg = f"{call_id}-xfer1"
    assert dial_statuses(sim, leg) == ["", "BUSY"]
    await until(lambda: leg not in sim.channels)
    assert requests_to(sim, "DELETE", f"/channels/{call.channel_id}/moh")
    assert not sim.channels[call.channel_id].moh
    assert bridged(sim, call_id) == {call.channel_id, f"{call_id}-em"}
    assert (await call_record(aredis, keys, call_id))["state"] == "active"
    await call.hangup()
    await until(none_of_ours_left(sim, call.channel_id))


async def test_an_unanswered_transfer_times_out(sim, listener, setup, aredis, keys):
    side = await setup(transfer={"ring_timeout_ms": 1000})
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "slow")
    assert (await side.replies(rid))[0].status == "ringing"
    final = await side.final(rid, timeout=6)
    assert (final.status, final.ok) == ("no_answer", False)
    assert requests_to(sim, "POST", f"/channels/{call_id}-xfer1/dial")[0].query["timeout"] == "1"
    await until(lambda: f"{call_id}-xfer1" not in sim.channels)
    assert not sim.channels[call.channel_id].moh
    assert bridged(sim, call_id) == {call.channel_id, f"{call_id}-em"}
    await call.hangup()
    await until(nothing_left(sim))


async def test_cancel_while_ringing_brings_the_caller_back_to_the_ai(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "slow")
    assert (await side.replies(rid))[0].status == "ringing"
    leg = f"{call_id}-xfer1"
    await until(lambda: dial_statuses(sim, leg) == ["", "RINGING"])
    assert sim.channels[call.channel_id].moh
    cancel = await side.request(call_id, "cancel_transfer")
    cancelled = await side.final(cancel)
    assert (cancelled.status, cancelled.ok) == ("cancelled", True)
    final = await side.final(rid)
    assert (final.status, final.ok) == ("cancelled", False)
    assert leg not in sim.channels and requests_to(sim, "DELETE", f"/channels/{leg}")
    assert dial_statuses(sim, leg) == ["", "RINGING"]  # a cancelled leg gets no final Dial (trace 05b)
    assert not sim.channels[call.channel_id].moh
    assert bridged(sim, call_id) == {call.channel_id, f"{call_id}-em"}
    assert (await call_record(aredis, keys, call_id))["state"] == "active"
    again = await side.final(await side.request(call_id, "cancel_transfer"))
    assert (again.status, again.ok) == ("nothing_to_cancel", False)
    await call.hangup()
    await until(nothing_left(sim))


async def test_a_destination_not_in_the_config_is_refused_and_nothing_is_dialled(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    mark = len(sim.rest_log)
    for destination in ("PJSIP/200", "6001", "Local/6001@from-internal", ""):
        reply = await side.final(await side.request(call_id, "transfer", destination))
        assert (reply.status, reply.ok) == ("refused", False)
        assert "sales" in reply.message and "support" in reply.message
    assert sim.rest_log[mark:] == []  # no MOH, no channel created, nothing dialled or continued
    assert bridged(sim, call_id) == {call.channel_id, f"{call_id}-em"}
    await call.hangup()
    await until(nothing_left(sim))


async def test_continue_mode_hands_the_caller_to_the_dialplan(sim, listener, setup, aredis, keys):
    side = await setup(transfer={"mode": "continue"})
    call, call_id = await active_call(sim, listener, aredis, keys)
    reply = await side.final(await side.request(call_id, "transfer", "support"))
    assert (reply.status, reply.ok) == ("answered", True)
    (cont,) = requests_to(sim, "POST", f"/channels/{call.channel_id}/continue")
    assert cont.query == {"context": "ext-queues", "extension": "support", "priority": "1"}
    await until(lambda: "Queue(support,,,,30)" in call.trail)
    await until(lambda: f"{call_id}-br" not in sim.bridges and f"{call_id}-em" not in sim.channels)
    await until(await state_is(aredis, keys, call_id, "ended"))
    assert (await call_record(aredis, keys, call_id))["end_reason"] == "transferred"
    assert not requests_to(sim, "DELETE", f"/channels/{call.channel_id}")  # the caller is the dialplan's now
    assert not call.ended and not requests_to(sim, "POST", "/channels/create")
    await call.hangup()


# --- hangup and voicemail -----------------------------------------------------------------------------------


async def test_hangup_ends_the_call(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    reply = await side.final(await side.request(call_id, "hangup"))
    assert (reply.status, reply.ok) == ("done", True)
    (delete,) = requests_to(sim, "DELETE", f"/channels/{call.channel_id}")
    assert delete.query == {"reason": "normal"}
    await until(nothing_left(sim))
    await until(await state_is(aredis, keys, call_id, "ended"))
    assert (await call_record(aredis, keys, call_id))["end_reason"] == "agent_hangup"
    late = await side.final(await side.request(call_id, "hangup"))
    assert (late.ok, late.status) == (False, "failed") and "ended" in late.message


async def test_voicemail_hands_the_caller_to_the_mailbox(sim, listener, setup, aredis, keys):
    side = await setup()
    speech = CallerAudio.silence(300).then(CallerAudio.tone(500, 4000, rate=8000))
    call, call_id = await active_call(sim, listener, aredis, keys, audio=speech)
    reply = await side.final(await side.request(call_id, "voicemail"))
    assert (reply.status, reply.ok) == ("done", True)
    (cont,) = requests_to(sim, "POST", f"/channels/{call.channel_id}/continue")
    assert cont.query == {"context": "default", "extension": "vm100", "priority": "1"}
    await until(await state_is(aredis, keys, call_id, "ended"))
    assert (await call_record(aredis, keys, call_id))["end_reason"] == "voicemail"
    await until(lambda: f"{call_id}-br" not in sim.bridges and f"{call_id}-em" not in sim.channels)
    await until(lambda: sim.channels[call.channel_id].input_sink is not None, timeout=5)  # recording
    await asyncio.sleep(0.5)
    await call.hangup()
    await until(lambda: len(sim.voicemails) == 1)
    assert sim.voicemails[0].mailbox == "100" and sim.voicemails[0].duration_ms > 300


async def test_unknown_action_and_unknown_call_fail_clearly(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    odd = await side.final(await side.request(call_id, "park"))
    assert (odd.ok, odd.status) == (False, "failed") and "park" in odd.message
    nobody = await side.final(await side.request(str(uuid.uuid4()), "hangup"))
    assert (nobody.ok, nobody.status) == (False, "failed") and "unknown call" in nobody.message
    assert sim.channels[call.channel_id].state == "Up"
    await call.hangup()
    await until(nothing_left(sim))


# --- delivery -----------------------------------------------------------------------------------------------


async def test_a_request_delivered_twice_is_executed_once(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "sales")
    await side.request(call_id, "transfer", "sales", request_id=rid)
    await side.final(rid)
    await asyncio.sleep(0.3)
    await side.request(call_id, "transfer", "sales", request_id=rid)  # after the end: the stored reply
    await side.replies(rid, 3)
    await asyncio.sleep(0.3)
    replies = await side.all_replies(rid)
    assert len(requests_to(sim, "POST", "/channels/create")) == 1
    assert [r.status for r in replies if r.final] == ["answered", "answered"]
    assert replies[-1].status == "answered"
    assert await aredis.xpending(keys.controller_inbox, "controllers") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    await call.hangup()
    await until(nothing_left(sim))


async def test_requests_survive_a_controller_restart(sim, listener, workers, controller, aredis, keys):
    worker = await workers(listener.port)
    side = WorkerSide(aredis, keys, worker.id)
    _, first = await controller()
    call_a, id_a = await active_call(sim, listener, aredis, keys, caller_name="A")
    call_b, id_b = await active_call(sim, listener, aredis, keys, caller_name="B")
    first.popen.kill()  # no SIGTERM: nothing is cleaned up or handed over
    first.popen.wait()
    hangup = await side.request(id_a, "hangup")
    # controller-1 had read this one and died before acting on it: it stays pending in the group
    taken = await aredis.xreadgroup("controllers", "controller-1", {keys.controller_inbox: ">"}, count=1)
    assert taken[0][1][0][1][b"data"] and (await aredis.xpending(keys.controller_inbox, "controllers"))["pending"]
    transfer = await side.request(id_b, "transfer", "sales")  # nobody has read this one yet

    await controller()
    assert (await side.final(transfer)).status == "answered"  # calls were adopted before requests ran
    await until(lambda: bridged(sim, id_b) == {call_b.channel_id, f"{id_b}-xfer1"})
    reply = await side.final(hangup, timeout=10)  # claimed once idle for a few seconds
    assert (reply.status, reply.ok) == ("done", True)
    await until(await state_is(aredis, keys, id_a, "ended"))
    assert (await call_record(aredis, keys, id_a))["end_reason"] == "agent_hangup"
    assert len(requests_to(sim, "DELETE", f"/channels/{call_a.channel_id}")) == 1

    async def all_acked():
        return (await aredis.xpending(keys.controller_inbox, "controllers"))["pending"] == 0

    await until(all_acked)
    await call_b.hangup()
    await until(nothing_left(sim))


async def test_a_transfer_ringing_when_the_controller_died_is_dialled_afresh(
    sim, listener, workers, controller, aredis, keys
):
    worker = await workers(listener.port)
    side = WorkerSide(aredis, keys, worker.id)
    _, first = await controller()
    call, call_id = await active_call(sim, listener, aredis, keys)
    rid = await side.request(call_id, "transfer", "slow")
    assert (await side.replies(rid))[0].status == "ringing"
    stale = f"{call_id}-xfer1"
    await until(lambda: dial_statuses(sim, stale) == ["", "RINGING"])
    first.popen.kill()
    first.popen.wait()

    await controller()
    await until(lambda: stale not in sim.channels)  # reconcile: the old leg must not outlive its controller
    replies = await side.replies(rid, 2, timeout=10)  # the pending request, claimed and run again
    assert [r.status for r in replies] == ["ringing", "ringing"]
    fresh = f"{call_id}-xfer2"
    assert fresh in sim.channels and sim.channels[call.channel_id].moh
    cancel = await side.final(await side.request(call_id, "cancel_transfer"))
    assert cancel.status == "cancelled" and (await side.final(rid)).status == "cancelled"
    assert fresh not in sim.channels and not sim.channels[call.channel_id].moh
    assert bridged(sim, call_id) == {call.channel_id, f"{call_id}-em"}
    await call.hangup()
    await until(nothing_left(sim))


# --- end-of-call emails -------------------------------------------------------------------------------------


def email_jobs(redis_url: str, keys) -> set[str]:
    conn = redis.Redis.from_url(redis_url)
    try:
        return set(Queue(keys.queue("email"), connection=conn).job_ids)
    finally:
        conn.close()


async def test_the_end_of_a_call_enqueues_its_summary_and_requested_transcripts(
    sim, listener, workers, controller, aredis, keys, redis_url
):
    await workers(listener.port)
    await controller(summary_every_call=False)
    quiet, quiet_id = await active_call(sim, listener, aredis, keys, caller_name="Quiet")
    asked, asked_id = await active_call(sim, listener, aredis, keys, caller_name="Asked")
    # what the worker writes once the caller confirmed: a summary wanted, transcripts to two addresses
    await aredis.hset(
        keys.call(asked_id), mapping={"summary_requested": "1", "transcript_to": "ann@example.com, bob@example.org"}
    )
    await quiet.hangup()
    await asked.hangup()
    await until(await state_is(aredis, keys, asked_id, "ended"))
    want = {summary_job_id(asked_id), transcript_job_id(asked_id, 1), transcript_job_id(asked_id, 2)}
    await until(lambda: email_jobs(redis_url, keys) >= want)
    await asyncio.sleep(0.3)
    assert email_jobs(redis_url, keys) == want  # nothing for the quiet call: send_after_every_call is off


async def test_every_call_gets_a_summary_when_configured(sim, listener, workers, controller, aredis, keys, redis_url):
    await workers(listener.port)
    await controller(summary_every_call=True)
    call, call_id = await active_call(sim, listener, aredis, keys)
    await call.hangup()
    await until(lambda: email_jobs(redis_url, keys) == {summary_job_id(call_id)})


async def test_a_worker_lost_while_a_transfer_rings_is_replaced_once_the_transfer_fails(
    sim, listener, workers, setup, aredis, keys
):
    side = await setup(transfer={"ring_timeout_ms": 1500})
    call, call_id = await active_call(sim, listener, aredis, keys)
    await workers(listener.port, wid="spare")
    rid = await side.request(call_id, "transfer", "slow")
    assert (await side.replies(rid))[0].status == "ringing"
    await listener.hang_up(call_id)  # the worker dies while the caller hears hold music
    await until(lambda: f"{call_id}-em" not in bridged(sim, call_id))
    await asyncio.sleep(0.3)
    # No move yet: a new agent would talk over the hold music and never hear how the transfer ended.
    assert sim.channels[call.channel_id].moh and (await call_record(aredis, keys, call_id))["moves"] == "0"
    final = await side.final(rid, timeout=6)
    assert final.status == "no_answer"

    async def moved():
        record = await call_record(aredis, keys, call_id)
        return record.get("worker") == "spare" and record.get("state") == "active"

    await until(moved)
    assert bridged(sim, call_id) == {call.channel_id, f"{call_id}-em1"} and not sim.channels[call.channel_id].moh
    await call.hangup()
    await until(nothing_left(sim))
