"""Calls on the real Asterisk, on every transport: the agent's audio reaches the caller (a silent caller hears the
greeting), the caller's speech reaches the model, a barge-in stops the agent, a caller who hangs up mid-greeting
leaves nothing behind, and with no worker the caller goes to the dialplan fallback."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from sim.asterisk.audio import CallerAudio
from sim.realtime import Reply, Script
from tests.media_harness import caller_speech, until
from tests.realpbx.pbx_harness import (  # noqa: F401  (fixtures)
    PROFILES,
    aredis,
    call_of,
    emulator,
    keys,
    nothing_of_the_call_left,
    pbx_cluster,
    pbx,
)

GREETING_MS = 1500
QUESTION = "When are you open?"
SPEECH_MS = 900


def conversation() -> Script:
    return Script(
        greeting=Reply(text="Hello, thanks for calling. How can I help?", audio_ms=GREETING_MS),
        turns={
            1: Reply(text="We are open from nine to five.", audio_ms=1200),
            2: Reply(text="Twelve Harbour Street.", audio_ms=1000),
        },
        transcripts={1: QUESTION, 2: "Where are you?"},
    )


async def log_roles(aredis, keys, call_id: str) -> list[str]:
    return [fields["role"] for _, fields in await aredis.xrange(keys.call_log(call_id))]


@pytest.mark.parametrize("transport", list(PROFILES))
async def test_greeting_heard_and_speech_reaches_the_model(transport, pbx_cluster, pbx, emulator, aredis, keys):
    emu = await emulator(conversation(), speed=4.0)
    await pbx_cluster(emu, PROFILES[transport])
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    # The caller stays silent (a phone with silence suppression sends nothing): the greeting must come anyway.
    await until(lambda: leg.first_voiced_after(leg.answered_at), timeout=5)
    onset = leg.first_voiced_after(leg.answered_at) - leg.answered_at
    assert onset < 1.0, f"greeting heard {onset * 1000:.0f} ms after the answer"
    await asyncio.sleep(GREETING_MS / 1000 + 0.3)

    spoke_at = time.monotonic()
    await leg.say(caller_speech(QUESTION, SPEECH_MS))
    speech_end = time.monotonic()
    await until(lambda: leg.first_voiced_after(speech_end), timeout=10)  # the agent's answer
    roles = await until(lambda: _with_answer(log_roles(aredis, keys, call_id)), timeout=10)
    assert roles[:3] == ["assistant", "user", "assistant"]
    heard_input = [e for s in emu.sessions for e in s.sent if e["type"] == "input_audio_buffer.speech_started"]
    assert heard_input, "the model's VAD never heard the caller"
    assert leg.voiced_between(leg.answered_at, spoke_at) >= GREETING_MS // 20 // 2  # most of the greeting
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)
    record = await aredis.hgetall(keys.call(call_id))
    assert record["end_reason"] == "caller_hangup" and record["transport"] == transport.split("-")[0]


async def _with_answer(roles_coro):
    roles = await roles_coro
    return roles if roles.count("assistant") >= 2 and "user" in roles else None


@pytest.mark.parametrize("transport", list(PROFILES))
async def test_barge_in_stops_the_agent(transport, pbx_cluster, pbx, emulator, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=600),
        turns={1: Reply(text="A long answer. " * 10, audio_ms=8000), 2: Reply(text="Sorry, go ahead.", audio_ms=800)},
        transcripts={1: QUESTION, 2: "Wait, stop."},
    )
    emu = await emulator(script, speed=4.0)
    await pbx_cluster(emu, PROFILES[transport])
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await asyncio.sleep(1.2)
    await leg.say(caller_speech(QUESTION, SPEECH_MS))
    asked = time.monotonic()
    answer = await until(lambda: leg.first_voiced_after(asked), timeout=10)
    await asyncio.sleep(max(0.0, answer + 1.5 - time.monotonic()))  # 1.5 s into the 8 s answer
    barge = time.monotonic()
    await leg.say(speaking_up("Wait, stop.").then(CallerAudio.silence(1500)))
    # Without the barge-in the long answer would go on for another 6 s; it must stop while the caller speaks.
    quiet_from = barge + 0.6
    assert leg.voiced_between(quiet_from, barge + SPEECH_MS / 1000) == 0, "the agent talked over the caller"
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)
    record = await until(lambda: _worker_done(aredis, keys, call_id), timeout=10)
    assert int(record["truncations"]) == 1 and record["bargein_ms"]


def speaking_up(text: str, gain_db: float = 8.0) -> CallerAudio:
    """The caller's words as loud as the agent's voice: the worker's echo gate takes a caller more than its
    echo margin (10 dB) below the agent's loudest recent frame for echo, and the emulator's voice is hot."""
    audio = caller_speech(text, SPEECH_MS)
    frames = []
    while (frame := audio.frame(8000)) is not None:
        frames.append(frame[0])
    samples = np.frombuffer(b"".join(frames), "<i2") * 10 ** (gain_db / 20)
    return CallerAudio.from_pcm(np.clip(samples, -32768, 32767).astype("<i2").tobytes(), 8000)


async def _worker_done(aredis, keys, call_id):
    record = await aredis.hgetall(keys.call(call_id))
    return record if "worker_end_reason" in record else None


@pytest.mark.parametrize("transport", ["audiosocket-slin24", "rtp-ulaw", "websocket-ulaw"])
async def test_caller_hangs_up_mid_greeting(transport, pbx_cluster, pbx, emulator, aredis, keys):
    emu = await emulator(Script(greeting=Reply(text="A long welcome. " * 5, audio_ms=5000)), speed=4.0)
    await pbx_cluster(emu, PROFILES[transport])
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await until(lambda: leg.first_voiced_after(leg.answered_at), timeout=5)
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)
    await until(lambda: _ended(aredis, keys, call_id), timeout=10)
    # The call's Realtime session is closed (only the prewarmed, never used one may stay open).
    used = [s for s in emu.sessions if any(e["type"] == "response.create" for e in s.received)]
    assert used
    await until(lambda: all(s.closed for s in used), timeout=5)


async def _ended(aredis, keys, call_id):
    return (await aredis.hget(keys.call(call_id), "end_reason")) == "caller_hangup"


async def test_no_worker_sends_the_caller_to_the_dialplan_fallback(real_asterisk, pbx_cluster, pbx, aredis, keys):
    await pbx_cluster(None, workers=0, queue_timeout_ms=1000)
    leg = await pbx.call()

    def in_voicemail():
        status, channel = real_asterisk.ari("GET", f"/channels/{leg.peer_id}")
        return (
            status == 200
            and channel["dialplan"]["context"] == "ai-agent-fallback"
            and channel["dialplan"]["app_name"] == "VoiceMail"
        )

    await until(in_voicemail, timeout=10)
    await until(lambda: leg.first_voiced_after(leg.answered_at), timeout=5)  # the fallback's prompt is heard
    await leg.hangup()
