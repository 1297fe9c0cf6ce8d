"""Calls end to end through real processes: a controller and a media worker (subprocesses) on the real Redis,
the Asterisk simulator (ARI over HTTP/WebSocket, media over AudioSocket TCP or RTP UDP) and the Realtime
emulator (WebSocket), both in this process. The simulated caller speaks from PCM and records what it hears."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import uuid

import numpy as np
import pytest

from shared.messages import Assignment, CallPlan, inbox_fields
from sim.asterisk.audio import CallerAudio
from sim.realtime import Reply, Script
from tests.media_harness import (  # noqa: F401  (fixtures)
    agent_audible_ms,
    aredis,
    assert_wire_conforms,
    call_of,
    caller_speech,
    cluster_up,
    emulator,
    keys,
    log_entries,
    loud_ms,
    sim,
    until,
    worker_stats,
)

# slow tier: every test here runs a controller and media workers as processes (measured 2.5 s or more each)
pytestmark = pytest.mark.slow

PROFILES = {"slin24": "telephony_pcm16_24k", "slin": "telephony_slin_8k", "ulaw_rtp": "telephony_ulaw_8k"}


def tone24k(ms: int, hz: float = 440.0, dbfs: float = -12.0) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (np.sin(2 * math.pi * hz * t) * 32767 * 10 ** (dbfs / 20)).astype("<i2").tobytes()


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILES))
async def test_a_call_end_to_end(profile, sim, emulator, cluster_up, aredis, keys):
    script = Script(
        greeting=Reply(text="Hello, thanks for calling. How can I help?", audio_ms=1500),
        turns={1: Reply(text="We are open nine to five.", audio_ms=1200)},
        transcripts={1: "When are you open?"},
    )
    emu = await emulator(script, speed=4.0)
    await cluster_up(
        emu,
        contexts={
            "t": {"profile": PROFILES[profile], "prompt": "Be brief, {caller_name}.", "greeting": "Hello {caller_name}"}
        },
    )
    audio = CallerAudio.silence(2500).then(caller_speech("When are you open?", 900)).then(CallerAudio.silence(4000))
    call = await sim.place_call(caller_name="Dana", variables={"AI_CONTEXT": "t"}, audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)

    async def answered():
        roles = [e["role"] for e in await log_entries(aredis, keys, call_id)]
        return roles.count("assistant") >= 2 and "user" in roles

    await until(answered, timeout=20)
    await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)

    entries = await log_entries(aredis, keys, call_id)
    assert [e["role"] for e in entries][:3] == ["assistant", "user", "assistant"]
    assert entries[0]["text"] == "Hello, thanks for calling. How can I help?"
    assert entries[1]["text"] == "When are you open?" and entries[2]["text"] == "We are open nine to five."
    # The instructions carried the filled-in template; the GA session had our tools and formats.
    update = next(e for s in emu.sessions for e in s.received if e["type"] == "session.update")["session"]
    assert (
        update["instructions"] == "Be brief, Dana."
        and update["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    )
    expected_format = "audio/pcmu" if profile == "ulaw_rtp" else "audio/pcm"
    assert update["audio"]["input"]["format"]["type"] == expected_format
    # The caller heard the greeting early, and then the answer.
    timeline = loud_ms(call.heard)
    first_audible = next(t for t, loud in timeline if loud)
    assert first_audible < 1000, first_audible
    # The caller heard all the agent said: every audible frame of the 2.7 s the model sent (voiced ~1.4 s with
    # the synthetic voice, ~1.8 s with espeak-ng), give or take a frame at each edge.
    sent_ms, heard_ms = agent_audible_ms(emu), sum(loud for t, loud in timeline) * 20
    assert sent_ms > 1000 and heard_ms >= sent_ms - 80, (heard_ms, sent_ms)
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert float(record["greeting_ms"]) < 1000 and len(record["turn_ms"].split(",")) == 1
    assert_wire_conforms(emu)


async def test_barge_in_truncates_to_what_the_caller_heard(sim, emulator, cluster_up, aredis, keys):
    # A long steady answer (a tone, so the caller-side recording shows exactly where it stopped).
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=400),
        turns={
            1: Reply(text="Let me tell you all about our opening hours in great detail.", pcm=tone24k(6000)),
            2: Reply(text="Sure.", audio_ms=500),
        },
        transcripts={1: "Opening hours?", 2: "Sorry, stop."},
    )
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu)
    question_end = 1500 + 800
    audio = (
        CallerAudio.silence(1500)
        .then(caller_speech("Opening hours?", 800))
        .then(CallerAudio.silence(3500))
        .then(caller_speech("Sorry, stop, one moment please.", 1500))
        .then(CallerAudio.silence(3000))
    )
    call = await sim.place_call(audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any(s.truncations for s in emu.sessions), timeout=20)
    await asyncio.sleep(0.5)
    await call.hangup()
    (truncation,) = [t for s in emu.sessions for t in s.truncations]

    # What the caller heard of that item: the run of tone frames after the question.
    timeline = loud_ms(call.heard)
    start = next(t for t, loud in timeline if loud and t > question_end)
    end = next(t for t, loud in timeline if not loud and t > start)
    heard_ms = end - start
    assert abs(truncation["audio_end_ms"] - heard_ms) <= 40, (truncation, heard_ms)
    assert 300 < heard_ms < 5000  # it was cut, not played out
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert record["truncations"] == "1" and record["bargein_ms"]
    assert max(float(v) for v in record["bargein_ms"].split(",")) <= 40
    heard_text = [e for e in await log_entries(aredis, keys, call_id) if e["role"] == "assistant"][1]["text"]
    assert heard_text.endswith("…") and len(heard_text) < len(script.turns[1].text)
    assert_wire_conforms(emu)


async def test_our_own_echo_does_not_interrupt_but_the_caller_does_not_talk_over_it(
    sim, emulator, cluster_up, aredis, keys
):
    script = Script(
        greeting=Reply(text="Hello there, this is a long greeting that goes on for a while.", audio_ms=3000),
        turns={1: Reply(text="Echo reply.", audio_ms=500)},
    )
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu)
    call = await sim.place_call(audio=CallerAudio.silence(6000), echo_db=-20.0)
    call_id = await call_of(aredis, keys, call.channel_id)

    async def greeted():
        return any(e["role"] == "assistant" for e in await log_entries(aredis, keys, call_id))

    await until(greeted, timeout=15)
    await asyncio.sleep(1.0)
    await call.hangup()
    assert all(not s.truncations for s in emu.sessions)  # the greeting played out in full
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert record["truncations"] == "0"
    # The echo never became a user turn: the server heard silence while we spoke.
    assert not any(e["type"] == "input_audio_buffer.speech_started" for s in emu.sessions for e in s.sent)


async def test_caller_hangs_up_mid_response(sim, emulator, cluster_up, aredis, keys, tmp_path):
    script = Script(greeting=Reply(text="A long greeting.", audio_ms=5000))
    emu = await emulator(script, speed=4.0)
    cluster = await cluster_up(emu)
    call = await sim.place_call(audio=CallerAudio.silence(8000))
    call_id = await call_of(aredis, keys, call.channel_id)
    await asyncio.sleep(1.5)
    await call.hangup()
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    # The media connection's close and the controller's end message race: either tells the caller left.
    assert record["worker_end_reason"] in ("media_closed", "caller_hangup", "controller: caller_hangup")
    await until(lambda: not sim.channels and not sim.bridges)
    worker_log = next(p for p in cluster.processes if p.role == "media-worker").log_text()
    assert "Traceback" not in worker_log and "ERROR" not in worker_log


async def test_the_worker_refuses_unknown_calls_and_malformed_frames(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(Script())
    await cluster_up(emu)
    (wid,) = await aredis.zrange(keys.workers, 0, -1)
    port = int(await aredis.hget(keys.worker(wid), "audiosocket_port"))

    async def exchange(payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        return data

    unknown = uuid.uuid4().bytes
    assert (await exchange(b"\x01\x00\x10" + unknown))[:1] == b"\xff"  # not our call: error frame, closed
    assert (await exchange(b"\x13\xff\xff" + b"\x00" * 64))[:1] in (b"\xff", b"")  # no UUID first, huge length
    # The worker is unharmed.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_an_audiosocket_connection_before_its_assignment_is_held_until_it_arrives(
    sim, emulator, cluster_up, aredis, keys
):
    """Under a burst Asterisk can connect before the worker has read the call's assignment from its inbox; the
    connection is held (not refused) and bound when the assignment arrives."""
    emu = await emulator(Script(greeting=Reply(text="Hello.", audio_ms=800)), speed=4.0)
    await cluster_up(emu)
    (wid,) = await aredis.zrange(keys.workers, 0, -1)
    port = int(await aredis.hget(keys.worker(wid), "audiosocket_port"))
    call_id = str(uuid.uuid4())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x01\x00\x10" + uuid.UUID(call_id).bytes)
    await writer.drain()
    await asyncio.sleep(0.5)  # connected, not yet assigned
    plan = CallPlan(
        call_id=call_id,
        caller_channel="held-caller",
        context="demo_openai",
        provider="openai_realtime",
        profile="telephony_slin_8k",
        transport="audiosocket",
        format="slin",
        provider_format="pcm16",
        greeting="Hello.",
    )
    await aredis.xadd(keys.worker_inbox(wid), inbox_fields("assign", Assignment(call_id=call_id, epoch=1, plan=plan)))
    first = await asyncio.wait_for(reader.readexactly(3), 5)
    assert first[0] == 0x10  # slin audio: the greeting, on the connection that came first
    writer.write(b"\x00\x00\x00")  # hang up
    await writer.drain()
    writer.close()
    await until(lambda: worker_stats(aredis, keys, call_id))


async def test_a_reply_without_audio_is_asked_again_aloud_and_keypad_digits_reach_the_model(
    sim, emulator, cluster_up, aredis, keys
):
    # The guide's "modalities bug": the first answer comes back as a transcript with no audio.
    script = Script(greeting=Reply(text="Hello, now out loud.", audio_ms=1200, text_only_times=1))
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu)
    call = await sim.place_call(audio=CallerAudio.silence(6000))
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any(loud for _, loud in loud_ms(call.heard)), timeout=15)  # the retry was heard
    call.send_dtmf("5")

    def pressed():
        return any(
            e["type"] == "conversation.item.create" and "pressed 5" in json.dumps(e)
            for s in emu.sessions
            for e in s.received
        )

    await until(pressed)
    await call.hangup()
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert record["audioless_responses"] == "1"
    creates = [e for s in emu.sessions for e in s.received if e["type"] == "response.create"]
    assert creates[1]["response"]["output_modalities"] == ["audio"]
    assert_wire_conforms(emu)
