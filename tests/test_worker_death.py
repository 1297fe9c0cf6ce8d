"""A media worker that dies (kill -9) or wedges (SIGSTOP) in the middle of calls, through real processes: a
controller and two media workers (subprocesses) on the real Redis, the Asterisk simulator and the Realtime
emulator in this process. Each call moves to the survivor in its own bridge, the new Realtime session gets the
conversation replayed from the call log, the agent does not greet again and speaks first, and nothing is left
over once the caller hangs up. With no other worker the caller goes to the fallback."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from typing import Any, NamedTuple

import numpy as np
import pytest

from shared.email_queue import summary_job_id
from sim.asterisk.audio import CallerAudio
from sim.realtime import Reply, Script, voice
from tests.media_harness import (  # noqa: F401  (fixtures)
    aredis,
    call_of,
    caller_speech,
    cluster_up,
    emulator,
    keys,
    log_entries,
    sim,
    until,
)

pytestmark = pytest.mark.slow  # every test runs a controller and two media workers as processes

PROFILES = {"audiosocket": "telephony_slin_8k", "rtp": "telephony_ulaw_8k", "websocket": "websocket_ulaw_8k"}
GREETING = "Hello, thanks for calling. How can I help?"
ANSWER = "We are open nine to five."
RESUMED = "Sorry, the line dropped for a moment. Please go on."
QUESTION = "When are you open?"


def script() -> Script:
    # `default` answers a response asked for right after a system message: the resume note.
    return Script(
        greeting=Reply(text=GREETING, audio_ms=1200),
        turns={1: Reply(text=ANSWER, audio_ms=1000)},
        transcripts={1: QUESTION},
        default=Reply(text=RESUMED, audio_ms=1200),
    )


def caller_audio() -> CallerAudio:
    return CallerAudio.silence(2500).then(caller_speech(QUESTION, 900)).then(CallerAudio.silence(20_000))


def first_audible_after(heard, since: float, floor_dbfs: float = -40.0) -> float | None:
    """When (time.monotonic()) the caller first heard agent audio after `since`: the first chunk above the floor."""
    for t, chunk, _ in list(heard._chunks):  # noqa: SLF001 - the recorder's chunks with their arrival times
        if t <= since or len(chunk) < 2:
            continue
        samples = memoryview(chunk).cast("h")
        if 20 * math.log10(math.sqrt(sum(v * v for v in samples) / len(samples)) / 32768 + 1e-9) > floor_dbfs:
            return t
    return None


async def answered(aredis, keys, call_id: str) -> bool:
    roles = [e["role"] for e in await log_entries(aredis, keys, call_id)]
    return roles.count("assistant") >= 2 and "user" in roles


def process_of(cluster, worker_id: str):
    return next(p for p in cluster.processes if p.id == worker_id)


async def nothing_leaked(sim, aredis, keys, survivor: str) -> None:
    await until(lambda: not sim.channels and not sim.bridges)
    assert await aredis.scard(keys.calls_active) == 0
    assert int(await aredis.get(keys.provider_sessions("openai_realtime")) or 0) == 0
    assert int(await aredis.hget(keys.worker(survivor), "active") or 0) == 0
    assert await aredis.scard(keys.worker_rtp_ports(survivor)) == 0


def replayed_session(emu, text: str):
    """The Realtime session that was given `text` as a user message by conversation.item.create (a replay)."""
    for session in emu.sessions:
        for event in session.received:
            item = event.get("item") or {}
            if event["type"] == "conversation.item.create" and item.get("role") == "user":
                if any(c.get("text") == text for c in item.get("content", [])):
                    return session
    return None


def greetings_asked(emu) -> int:
    return sum(
        1
        for s in emu.sessions
        for e in s.received
        if e["type"] == "response.create" and "Greet the caller" in (e.get("response") or {}).get("instructions", "")
    )


class Scene(NamedTuple):
    emu: Any
    cluster: Any
    call: Any
    call_id: str
    victim: str  # the worker holding the call
    survivor: str  # the other one


async def a_call_on_one_of_two_workers(transport, sim, emulator, cluster_up, aredis, keys) -> Scene:
    """A call on one of two workers, answered once and quiet again (the answer has played out)."""
    emu = await emulator(script(), speed=4.0)
    cluster = await cluster_up(emu, contexts={"t": {"profile": PROFILES[transport], "greeting": "Hi"}}, workers=2)
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=caller_audio())
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: answered(aredis, keys, call_id), timeout=20)
    await asyncio.sleep(0.3)  # the answer has played out: the caller hears nothing now
    victim = await aredis.hget(keys.call(call_id), "worker")
    survivor = next(p.id for p in cluster.processes if p.role == "media-worker" and p.id != victim)
    return Scene(emu, cluster, call, call_id, victim, survivor)


@pytest.mark.parametrize("transport", list(PROFILES))
async def test_a_killed_workers_call_moves_to_the_survivor_with_its_conversation(
    transport, sim, emulator, cluster_up, aredis, keys
):
    emu, cluster, call, call_id, victim, survivor = await a_call_on_one_of_two_workers(
        transport, sim, emulator, cluster_up, aredis, keys
    )
    bridge = f"{call_id}-br"
    assert call.channel_id in {c.id for c in sim.bridges[bridge].channels}

    killed_at = time.monotonic()
    process_of(cluster, victim).popen.kill()  # SIGKILL

    async def moved():
        r = await aredis.hgetall(keys.call(call_id))
        return r.get("worker") == survivor and r.get("state") == "active"

    await until(moved, timeout=10)
    heard_at = await until(lambda: first_audible_after(call.heard, killed_at), timeout=10)
    print(f"\n{transport}: kill -9 to the caller hearing the agent again: {(heard_at - killed_at) * 1000:.0f} ms")

    # The same bridge: the caller never left it; a new media leg is in it, the dead one is gone.
    assert set(sim.bridges) == {bridge}
    members = {c.id for c in sim.bridges[bridge].channels}
    assert call.channel_id in members and len(members) == 2 and f"{call_id}-em" not in members
    # The new Realtime session got the conversation (the greeting, the question, the answer) before its first
    # response, and the note that the line dropped; nobody asked for a second greeting.
    session = replayed_session(emu, QUESTION)
    assert session is not None
    texts = [
        c.get("text")
        for e in session.received
        if e["type"] == "conversation.item.create"
        for c in (e.get("item") or {}).get("content", [])
    ]
    assert texts[:3] == [GREETING, QUESTION, ANSWER], texts
    assert any("line dropped" in (t or "") for t in texts)
    assert greetings_asked(emu) == 1
    await until(lambda: _logged(aredis, keys, call_id, RESUMED), timeout=10)
    entries = [e for e in await log_entries(aredis, keys, call_id) if e["role"] == "assistant"]
    assert [e["text"] for e in entries].count(GREETING) == 1

    await call.hangup()
    await nothing_leaked(sim, aredis, keys, survivor)
    # Every Realtime session that served the call is closed, the dead worker's and the new one (only prewarmed,
    # never used ones stay open).
    used = [s for s in emu.sessions if any(e["type"] == "response.create" for e in s.received)]
    assert len(used) == 2
    await until(lambda: all(s.closed for s in used), timeout=10)
    await until(lambda: aredis.hget(keys.call(call_id), "worker_end_reason"), timeout=10)
    # One summary job, enqueued once for the whole call.
    controller = next(p for p in cluster.processes if p.role == "controller")
    await until(lambda: f"call {call_id} ended" in controller.log_text(), timeout=10)
    assert controller.log_text().count(f"call {call_id} ended (") == 1
    assert await aredis.exists(f"rq:job:{summary_job_id(call_id)}")
    takeover = await aredis.hget(keys.call(call_id), "moves")
    assert takeover == "1"


async def _logged(aredis, keys, call_id: str, text: str) -> bool:
    return any(e.get("text") == text for e in await log_entries(aredis, keys, call_id))


@pytest.mark.parametrize("transport", ["rtp", "audiosocket"])
async def test_a_wedged_worker_is_found_its_calls_move_and_it_stays_silent_when_it_wakes(
    transport, sim, emulator, cluster_up, aredis, keys
):
    emu, cluster, call, call_id, victim, survivor = await a_call_on_one_of_two_workers(
        transport, sim, emulator, cluster_up, aredis, keys
    )
    wedged = process_of(cluster, victim)
    old_session = next(s for s in emu.sessions if any(e["type"] == "response.create" for e in s.received))

    stopped_at = time.monotonic()
    os.kill(wedged.popen.pid, signal.SIGSTOP)
    try:
        await until(lambda: _on(aredis, keys, call_id, survivor), timeout=10)
        detected = time.monotonic() - stopped_at
        heard_at = await until(lambda: first_audible_after(call.heard, stopped_at), timeout=10)
        heard_ms = (heard_at - stopped_at) * 1000
        print(f"\n{transport} SIGSTOP: moved after {detected * 1000:.0f} ms, agent heard after {heard_ms:.0f} ms")
        # Taken out of admission: not in the live set any more.
        assert await aredis.zscore(keys.workers, victim) is None
    finally:
        os.kill(wedged.popen.pid, signal.SIGCONT)
    asked_before = sum(1 for e in old_session.received if e["type"] == "response.create")
    # Awake again: it reads the `end` (moved) in its inbox, or its lease renewal finds another epoch, and stops
    # its session without hanging anything up or writing its figures; it beats again and is back in the set.
    await until(lambda: "moved to another worker" in wedged.log_text(), timeout=10)
    await until(lambda: aredis.zscore(keys.workers, victim), timeout=5)
    await until(lambda: old_session.closed, timeout=10)
    assert sum(1 for e in old_session.received if e["type"] == "response.create") == asked_before
    assert await aredis.hget(keys.call(call_id), "worker_end_reason") is None  # nobody's figures yet
    assert await aredis.hget(keys.call(call_id), "worker") == survivor

    await call.hangup()
    await nothing_leaked(sim, aredis, keys, survivor)
    assert int(await aredis.hget(keys.worker(victim), "active") or 0) == 0
    record = await until(lambda: _ended_record(aredis, keys, call_id), timeout=10)
    assert record["end_reason"] == "caller_hangup" and record["moves"] == "1"


@pytest.mark.parametrize("transport", ["rtp", "audiosocket"])
async def test_a_stopped_worker_hands_its_calls_over(transport, sim, emulator, cluster_up, aredis, keys):
    """SIGTERM with the default drain_timeout_ms 0 (a rolling restart): the calls move to the other worker, as for
    a dead one, instead of ending (an RTP caller sat in silence, an AudioSocket one went to the fallback)."""
    _, cluster, call, call_id, victim, survivor = await a_call_on_one_of_two_workers(
        transport, sim, emulator, cluster_up, aredis, keys
    )
    stopping = process_of(cluster, victim)

    stopped_at = time.monotonic()
    stopping.popen.send_signal(signal.SIGTERM)
    await until(lambda: _on(aredis, keys, call_id, survivor), timeout=10)
    heard_at = await until(lambda: first_audible_after(call.heard, stopped_at), timeout=10)
    print(f"\n{transport} SIGTERM: agent heard again after {(heard_at - stopped_at) * 1000:.0f} ms")
    assert await asyncio.to_thread(stopping.popen.wait, 15) == 0
    assert not any("ss-noservice" in step for step in call.trail)  # not the fallback
    await until(lambda: _logged(aredis, keys, call_id, RESUMED), timeout=10)  # the new worker spoke

    await call.hangup()
    await nothing_leaked(sim, aredis, keys, survivor)
    record = await until(lambda: _ended_record(aredis, keys, call_id), timeout=10)
    assert record["end_reason"] == "caller_hangup" and record["moves"] == "1"


async def _on(aredis, keys, call_id: str, worker: str) -> bool:
    r = await aredis.hgetall(keys.call(call_id))
    return r.get("worker") == worker and r.get("state") == "active"


async def _ended_record(aredis, keys, call_id: str):
    r = await aredis.hgetall(keys.call(call_id))
    return r if r.get("state") == "ended" and "worker_end_reason" in r else None


async def test_with_no_worker_left_the_caller_goes_to_the_fallback(sim, emulator, cluster_up, aredis, keys):
    """RTP: nothing tells the controller the worker died but its heartbeats: the call waits for it (or another
    worker) for controller.move_wait_ms (3 s in the shipped config), then takes the fallback."""
    emu = await emulator(script(), speed=4.0)
    cluster = await cluster_up(emu, contexts={"t": {"profile": PROFILES["rtp"], "greeting": "Hi"}}, workers=1)
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=caller_audio())
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: answered(aredis, keys, call_id), timeout=20)
    (worker,) = [p for p in cluster.processes if p.role == "media-worker"]
    controller = next(p for p in cluster.processes if p.role == "controller")
    killed_at = time.monotonic()
    worker.popen.kill()
    await until(lambda: "its 1 calls wait up to 3.0 s" in controller.log_text(), timeout=10)
    await until(lambda: any("ss-noservice" in step for step in call.trail), timeout=15)  # the fallback context ran
    print(f"\nno worker left: kill -9 to the fallback in {(time.monotonic() - killed_at) * 1000:.0f} ms")
    assert "stays with it" not in controller.log_text()
    await until(lambda: not sim.bridges)
    record = await until(lambda: _ended(aredis, keys, call_id), timeout=10)
    assert record["end_reason"] == "no_worker"
    assert int(await aredis.get(keys.provider_sessions("openai_realtime")) or 0) == 0
    assert await aredis.scard(keys.calls_active) == 0


async def _ended(aredis, keys, call_id: str):
    r = await aredis.hgetall(keys.call(call_id))
    return r if r.get("state") == "ended" else None


QUESTION_2 = "Are you open on Sundays?"
ANSWER_2 = "No, we are closed on Sundays."
SECOND_QUESTION_AT_MS = 2500 + 900 + 9000  # caller audio: silence, the first question, silence, the second


@pytest.mark.parametrize("transport", ["rtp", "audiosocket"])
async def test_a_lone_worker_that_stalls_keeps_its_calls(transport, sim, emulator, cluster_up, aredis, keys):
    """The only worker's loop stops for over a second (SIGSTOP: a busy machine, bench/pinned_capacity.py at 200
    calls): the watch declares it dead, and with no other worker its call waits instead of going to the
    fallback; the worker beats again and the call goes on with it, untouched (no move, no second greeting, no
    replay), and the caller's next question is answered."""
    emu = await emulator(
        Script(
            greeting=Reply(text=GREETING, audio_ms=1200),
            turns={1: Reply(text=ANSWER, audio_ms=1000), 2: Reply(text=ANSWER_2, audio_ms=1000)},
            transcripts={1: QUESTION, 2: QUESTION_2},
            default=Reply(text=RESUMED, audio_ms=1200),
        ),
        speed=4.0,
    )
    cluster = await cluster_up(emu, contexts={"t": {"profile": PROFILES[transport], "greeting": "Hi"}}, workers=1)
    audio = (
        CallerAudio.silence(2500)
        .then(caller_speech(QUESTION, 900))
        .then(CallerAudio.silence(SECOND_QUESTION_AT_MS - 3400))
        .then(caller_speech(QUESTION_2, 900))
        .then(CallerAudio.silence(20_000))
    )
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: answered(aredis, keys, call_id), timeout=20)
    (worker,) = [p for p in cluster.processes if p.role == "media-worker"]
    controller = next(p for p in cluster.processes if p.role == "controller")
    before = await aredis.hgetall(keys.call(call_id))
    # The stall must be over well before the second question, which shows the caller is still heard and answered.
    assert call.endpoint.audio.position_ms < SECOND_QUESTION_AT_MS - 4000, "the machine is too slow for this test"

    stopped_at = time.monotonic()
    os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        await until(lambda: _declared_dead(aredis, keys, worker.id), timeout=5)
        await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - stopped_at)))
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    print(f"\n{transport}: the lone worker stopped for {(time.monotonic() - stopped_at) * 1000:.0f} ms")

    # Back in the live set, and the call is still its own: same worker, same epoch, never moved.
    await until(lambda: aredis.zscore(keys.workers, worker.id), timeout=5)
    await until(lambda: "stays with it" in controller.log_text() or _ended(aredis, keys, call_id), timeout=5)
    after = await aredis.hgetall(keys.call(call_id))
    assert (after["state"], after["worker"], after["epoch"]) == ("active", worker.id, before["epoch"]), after
    assert after.get("moves", "0") == "0"
    assert "its 1 calls wait up to 3.0 s" in controller.log_text()
    assert "stays with it" in controller.log_text()
    continued_at = time.monotonic()
    await until(lambda: _logged(aredis, keys, call_id, ANSWER_2), timeout=20)
    assert await until(lambda: first_audible_after(call.heard, continued_at), timeout=10)
    assert not any("ss-noservice" in step for step in call.trail)  # not the fallback
    assert "moved to another worker" not in worker.log_text()
    assert greetings_asked(emu) == 1 and replayed_session(emu, QUESTION) is None
    assert len([s for s in emu.sessions if any(e["type"] == "response.create" for e in s.received)]) == 1

    await call.hangup()
    await nothing_leaked(sim, aredis, keys, worker.id)
    record = await until(lambda: _ended(aredis, keys, call_id), timeout=10)
    assert record["end_reason"] == "caller_hangup"


async def _declared_dead(aredis, keys, worker_id: str) -> bool:
    return await aredis.hget(keys.worker(worker_id), "dead_ms") is not None


QUESTION2 = "And on Saturdays, are you open in the morning or only in the afternoon?"
ANSWER2 = "On Saturdays we are open from ten to two."


def soft_speech(text: str, ms: int, dbfs: float) -> CallerAudio:
    """A caller's words at an RMS of `dbfs`: a quiet phone, well under the agent's level."""
    speech = voice.speech(text, ms, "en-us+m3", seed=11).astype(np.float64)
    speech *= 32768 * 10 ** (dbfs / 20) / max(float(np.sqrt(np.mean(speech**2))), 1.0)
    return CallerAudio.from_pcm(np.clip(speech, -32768, 32767).astype("<i2").tobytes(), 24000)


async def test_a_caller_mid_sentence_when_the_worker_dies_is_answered_not_talked_over(
    sim, emulator, cluster_up, aredis, keys
):
    """The worker dies near the end of a caller's question spoken 16 dB under the agent's level (as the real
    Asterisk's test callers are). The new worker hears the rest of it and the agent answers it. It used to say
    "the line dropped" at once, over the caller: 16 dB under the agent, the rest of the question passed for our
    own echo, never reached the model, and the caller waited in silence (a CI run on the real Asterisk)."""
    emu = await emulator(
        Script(
            greeting=Reply(text=GREETING, audio_ms=1200),
            turns={1: Reply(text=ANSWER, audio_ms=1000), 2: Reply(text=ANSWER2, audio_ms=1500)},
            transcripts={1: QUESTION, 2: QUESTION2},
            default=Reply(text=RESUMED, audio_ms=2500),  # long enough to cover the rest of the question
        ),
        speed=4.0,
    )
    cluster = await cluster_up(emu, contexts={"t": {"profile": PROFILES["audiosocket"], "greeting": "Hi"}}, workers=2)
    question2_at_s = 2.5 + 0.9 + 3.5
    audio = (
        CallerAudio.silence(2500)
        .then(caller_speech(QUESTION, 900))
        .then(CallerAudio.silence(3500))
        .then(soft_speech(QUESTION2, 2600, -32.0))
        .then(CallerAudio.silence(20_000))
    )
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: answered(aredis, keys, call_id), timeout=20)
    victim = await aredis.hget(keys.call(call_id), "worker")
    started = call.endpoint.started_t
    assert started is not None
    # The worker dies with about 0.3 s of the question left: too little for the gate to tell the caller from our
    # echo while the agent talks over it.
    await asyncio.sleep(max(started + question2_at_s + 2.15 - time.monotonic(), 0))
    process_of(cluster, victim).popen.kill()

    await until(lambda: _logged(aredis, keys, call_id, ANSWER2), timeout=15)
    assistant = [e["text"] for e in await log_entries(aredis, keys, call_id) if e["role"] == "assistant"]
    assert RESUMED not in assistant, assistant  # nothing was said over the caller
    assert assistant[-1] == ANSWER2
    await call.hangup()
