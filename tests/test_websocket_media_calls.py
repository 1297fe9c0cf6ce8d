"""WebSocket media calls end to end through real processes (controller and media worker subprocesses, real
Redis, the Asterisk simulator's chan_websocket, the Realtime emulator): the worker connects to Asterisk's
/media/<id>; greeting heard, caller speech reaches the model, barge-in flushes Asterisk's queue and truncates
exactly, hangup ends cleanly."""

from __future__ import annotations

import asyncio

import pytest

from sim.asterisk.audio import CallerAudio, rms_dbfs
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
from tests.test_media_calls import tone24k

PROFILES = {"ulaw": "websocket_ulaw_8k", "slin24": "websocket_pcm16_24k"}


@pytest.mark.slow  # measured 10.6 s
@pytest.mark.parametrize("fmt", list(PROFILES))
async def test_a_websocket_call_end_to_end(fmt, sim, emulator, cluster_up, aredis, keys):
    script = Script(
        greeting=Reply(text="Hello, thanks for calling. How can I help?", audio_ms=1500),
        turns={1: Reply(text="We are open nine to five.", audio_ms=1200)},
        transcripts={1: "When are you open?"},
    )
    emu = await emulator(script, speed=4.0)
    cluster = await cluster_up(emu, contexts={"t": {"profile": PROFILES[fmt], "greeting": "Hello {caller_name}"}})
    audio = CallerAudio.silence(2500).then(caller_speech("When are you open?", 900)).then(CallerAudio.silence(4000))
    call = await sim.place_call(caller_name="Dana", variables={"AI_CONTEXT": "t"}, audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)

    async def answered():
        roles = [e["role"] for e in await log_entries(aredis, keys, call_id)]
        return roles.count("assistant") >= 2 and "user" in roles

    await until(answered, timeout=20)
    (leg,) = sim.websocket_media.legs.values()
    assert leg.fmt == fmt and leg.frames_in > 100 and leg.frames_out > 100  # audio both ways, in whole frames
    assert leg.dropped_in == 0
    await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)

    entries = await log_entries(aredis, keys, call_id)
    assert [e["role"] for e in entries][:3] == ["assistant", "user", "assistant"]
    assert entries[1]["text"] == "When are you open?" and entries[2]["text"] == "We are open nine to five."
    update = next(e for s in emu.sessions for e in s.received if e["type"] == "session.update")["session"]
    # u-law end to end: the worker passes Asterisk's bytes through to the model and back
    assert update["audio"]["input"]["format"]["type"] == ("audio/pcmu" if fmt == "ulaw" else "audio/pcm")
    timeline = loud_ms(call.heard)
    first_audible = next(t for t, loud in timeline if loud)
    assert first_audible < 1000, first_audible
    # The caller heard all the agent said: every audible frame of the 2.7 s the model sent (voiced ~1.4 s with
    # the synthetic voice, ~1.8 s with espeak-ng), give or take a frame at each edge.
    sent_ms, heard_ms = agent_audible_ms(emu), sum(loud for t, loud in timeline) * 20
    assert sent_ms > 1000 and heard_ms >= sent_ms - 80, (heard_ms, sent_ms)
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert float(record["greeting_ms"]) < 1000 and record["worker_end_reason"] in ("media_closed", "caller_hangup")
    # Our clock meets Asterisk's timer: its queue (sampled every 5 s) never builds up.
    assert int(record["media_queue_samples"]) >= 1 and int(record["media_queue_max"]) <= 2, record
    assert record["media_xoff"] == "0"
    worker_log = next(p for p in cluster.processes if p.role == "media-worker").log_text()
    assert "Traceback" not in worker_log and "ERROR" not in worker_log
    assert leg.connection_id not in worker_log  # the media URL's only secret is never logged
    assert_wire_conforms(emu)


@pytest.mark.slow  # measured 11.7 s
async def test_websocket_barge_in_flushes_asterisks_queue_and_truncates_to_what_was_heard(
    sim, emulator, cluster_up, aredis, keys
):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=400),
        turns={
            1: Reply(text="Let me tell you all about our opening hours in great detail.", pcm=tone24k(6000)),
            2: Reply(text="Sure.", audio_ms=500),
        },
        transcripts={1: "Opening hours?", 2: "Sorry, stop."},
    )
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu, contexts={"t": {"profile": "websocket_pcm16_24k"}})
    question_end = 1500 + 800
    audio = (
        CallerAudio.silence(1500)
        .then(caller_speech("Opening hours?", 800))
        .then(CallerAudio.silence(3500))
        .then(caller_speech("Sorry, stop, one moment please.", 1500))
        .then(CallerAudio.silence(3000))
    )
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any(s.truncations for s in emu.sessions), timeout=20)
    (leg,) = sim.websocket_media.legs.values()
    await asyncio.sleep(0.5)
    await call.hangup()
    (truncation,) = [t for s in emu.sessions for t in s.truncations]
    assert leg.flushes == 1  # the barge-in: GET_STATUS then FLUSH_MEDIA, in one write
    flush_at = leg.commands.index("FLUSH_MEDIA")
    assert leg.commands[flush_at - 1] == "GET_STATUS"

    timeline = loud_ms(call.heard)
    start = next(t for t, loud in timeline if loud and t > question_end)
    end = next(t for t, loud in timeline if not loud and t > start)
    heard_ms = end - start
    assert abs(truncation["audio_end_ms"] - heard_ms) <= 40, (truncation, heard_ms)
    assert 300 < heard_ms < 5000
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert record["truncations"] == "1" and max(float(v) for v in record["bargein_ms"].split(",")) <= 40
    assert int(record["media_flushed_frames"]) <= 2  # paced by our clock: Asterisk held at most a frame or two
    await until(lambda: not sim.channels and not sim.bridges)


# Not slow, although it takes 5 s: the fast tier's one call on WebSocket media (controller and worker).
async def test_caller_hangs_up_mid_greeting_on_websocket(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(Script(greeting=Reply(text="A long greeting.", audio_ms=5000)), speed=4.0)
    cluster = await cluster_up(emu, contexts={"t": {"profile": "websocket_ulaw_8k"}})
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=CallerAudio.silence(8000))
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any(loud for _, loud in loud_ms(call.heard)), timeout=10)
    await call.hangup()
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert record["worker_end_reason"] in ("media_closed", "caller_hangup")
    await until(lambda: not sim.channels and not sim.bridges and not sim.websocket_media.legs)
    worker_log = next(p for p in cluster.processes if p.role == "media-worker").log_text()
    assert "Traceback" not in worker_log and "ERROR" not in worker_log


@pytest.mark.slow  # measured 6.1 s
async def test_a_silent_caller_hears_the_greeting_at_once_on_websocket(sim, emulator, cluster_up, aredis, keys):
    """A caller who says nothing sends no frame (as on the real PBX): the controller's media_bridged starts the
    worker's clock, not the caller's first frame (nor the 0.5 s safety net)."""
    emu = await emulator(Script(greeting=Reply(text="Hello there.", audio_ms=1500)), speed=4.0)
    await cluster_up(emu, contexts={"t": {"profile": "websocket_ulaw_8k"}})
    call = await sim.place_call(variables={"AI_CONTEXT": "t"}, audio=CallerAudio.silence(4000), send_silence=False)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any(loud for _, loud in loud_ms(call.heard)), timeout=10)
    (leg,) = sim.websocket_media.legs.values()
    assert leg.frames_out == 0  # the caller sent nothing the worker could have started its clock on
    await asyncio.sleep(1.0)
    await call.hangup()
    # arrival time of the first audible chunk, from the caller's StasisStart (the recording has no gaps)
    first_audible = next(t for t, pcm, _ in call.heard._chunks if rms_dbfs(pcm) > -40)
    assert first_audible - call.stasis_start_t < 0.3, first_audible - call.stasis_start_t
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    assert float(record["greeting_ms"]) < 100
