"""The model's tool calls end to end: the emulator scripts the calls, the media worker checks and forwards them,
the controller acts on the simulated Asterisk (real processes, real Redis, ARI and AudioSocket on loopback)."""

from __future__ import annotations

import asyncio
import json

import pytest

from sim.asterisk.audio import CallerAudio
from sim.realtime import Reply, Script, ToolCall
from tests.media_harness import (  # noqa: F401  (fixtures)
    aredis,
    assert_wire_conforms,
    call_of,
    caller_speech,
    cluster_up,
    emulator,
    keys,
    log_entries,
    sim,
    until,
    worker_stats,
)

DESTINATIONS = {
    "tools": {
        "transfer": {
            "ring_timeout_ms": 2500,
            "destinations": {
                "sales": {"type": "extension", "target": "6001", "description": "Sales team"},
                "nobody": {"type": "extension", "target": "6002", "description": "Rings, never answers"},
                "busyline": {"type": "extension", "target": "6003", "description": "Always busy"},
            },
        },
        "hangup_call": {"farewell_timeout_ms": 1500},
    }
}


def asks(*turns: str) -> CallerAudio:
    """The caller waits for the greeting, then says each line with a pause after it."""
    audio = CallerAudio.silence(1800)
    for text in turns:
        audio = audio.then(caller_speech(text, 900)).then(CallerAudio.silence(3500))
    return audio.then(CallerAudio.silence(4000))


def transfer_script(destination: str, then: dict[int, Reply] | None = None) -> Script:
    turns = {
        1: Reply(
            text="Let me connect you.", audio_ms=600, tool_calls=[ToolCall("transfer", {"destination": destination})]
        )
    }
    turns.update(then or {})
    return Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns=turns,
        after_tool=Reply(text="{output}", audio_ms=700),
        default=Reply(text="Okay.", audio_ms=500),
    )


async def tool_entries(aredis, keys, call_id: str, name: str | None = None) -> list[dict]:
    return [
        e
        for e in await log_entries(aredis, keys, call_id)
        if e["role"] == "tool" and (name is None or e["name"] == name)
    ]


def system_notes(emu) -> list[str]:
    return [
        json.dumps(e)
        for s in emu.sessions
        for e in s.received
        if e["type"] == "conversation.item.create" and e["item"].get("role") == "system"
    ]


# Not slow, although it takes 10 s: the fast tier's one whole call through every role with a tool call.
async def test_transfer_answered_bridges_the_caller_with_the_agent(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(transfer_script("sales"), speed=4.0)
    await cluster_up(emu, extra=DESTINATIONS)
    call = await sim.place_call(audio=asks("Sales please."))
    call_id = await call_of(aredis, keys, call.channel_id)

    def bridged_with_agent():
        bridge = sim.bridges.get(f"{call_id}-br")
        return bridge is not None and {c.id for c in bridge.members} == {call.channel_id, f"{call_id}-xfer1"}

    await until(bridged_with_agent, timeout=20)
    # The AI left the call: its media leg leaves the bridge first, then is hung up (a moment later).
    await until(lambda: f"{call_id}-em" not in sim.channels, timeout=5)
    worker = await aredis.hget(keys.call(call_id), "worker")

    async def slot_free():
        return await aredis.hget(keys.worker(worker), "active") == "0"

    await until(slot_free)  # the worker's slot is free while the caller talks to the agent
    assert any(
        r.path == "/channels/create" and r.query.get("endpoint") == "Local/6001@from-internal" for r in sim.rest_log
    )
    (entry,) = await tool_entries(aredis, keys, call_id, "transfer")
    assert json.loads(entry["output"])["ok"] is True
    record = await until(lambda: worker_stats(aredis, keys, call_id))
    # Whichever reaches the worker first: the transfer's own result, its media leg closing, or the controller's end.
    assert record["worker_end_reason"] in ("transferred", "media_closed", "controller: transferred")
    await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)
    assert_wire_conforms(emu)


@pytest.mark.slow  # measured 16.3 s
async def test_busy_and_unanswered_transfers_come_back_to_the_model(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(
        transfer_script(
            "busyline",
            {
                2: Reply(
                    text="Trying the other line.",
                    audio_ms=600,
                    tool_calls=[ToolCall("transfer", {"destination": "nobody"})],
                )
            },
        ),
        speed=4.0,
    )
    await cluster_up(emu, extra=DESTINATIONS)
    call = await sim.place_call(audio=asks("Sales please.", "Try someone else."))
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: len(system_notes(emu)) >= 2, timeout=30)
    notes = system_notes(emu)
    assert "busy" in notes[0] and "nobody answered" in notes[1]
    assert f"{call_id}-em" in sim.channels  # the AI stayed on the call
    assert not any(c.id.startswith(f"{call_id}-xfer") for c in sim.channels.values())  # the legs are gone
    await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)
    assert_wire_conforms(emu)


@pytest.mark.slow  # measured 13.4 s
async def test_a_ringing_transfer_can_be_cancelled(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(
        transfer_script(
            "nobody", {2: Reply(text="Cancelling.", audio_ms=500, tool_calls=[ToolCall("cancel_transfer")])}
        ),
        speed=4.0,
    )
    await cluster_up(
        emu,
        extra={
            **DESTINATIONS,
            "tools": {
                **DESTINATIONS["tools"],
                "transfer": {**DESTINATIONS["tools"]["transfer"], "ring_timeout_ms": 20_000},
            },
        },
    )
    call = await sim.place_call(audio=asks("Sales please.", "Actually, never mind."))
    call_id = await call_of(aredis, keys, call.channel_id)
    (cancel,) = await until(lambda: tool_entries(aredis, keys, call_id, "cancel_transfer"), timeout=30)
    assert json.loads(cancel["output"])["status"] == "cancelled"
    await until(lambda: not any(c.id.startswith(f"{call_id}-xfer") for c in sim.channels.values()))
    bridge = sim.bridges[f"{call_id}-br"]
    assert {c.id for c in bridge.members} == {call.channel_id, f"{call_id}-em"}  # back with the AI
    assert any(r.method == "DELETE" and r.path == f"/channels/{call.channel_id}/moh" for r in sim.rest_log)
    await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)


@pytest.mark.slow  # measured 10.1 s
async def test_hangup_without_farewell_audio_is_ended_by_the_guard(sim, emulator, cluster_up, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns={1: Reply(text="", tool_calls=[ToolCall("hangup_call", {"farewell": "Goodbye!"})])},
        after_tool=Reply(text="Goodbye!", text_only=True),
    )  # the farewell comes without audio
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu, extra=DESTINATIONS)
    call = await sim.place_call(audio=asks("That's all, bye."))
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: call.ended, timeout=20)  # the agent hung up: the caller's channel is gone
    creates = [e for s in emu.sessions for e in s.received if e["type"] == "response.create"]
    farewell = next(i for i, c in enumerate(creates) if c.get("response", {}).get("tool_choice") == "none")
    # From the farewell on, every response is a farewell: no tools (its retry aloud included), and nothing
    # else is asked for (a second hang-up, or a note about one that failed, once followed it).
    assert all(c.get("response", {}).get("tool_choice") == "none" for c in creates[farewell:]), creates[farewell:]
    assert len(await tool_entries(aredis, keys, call_id, "hangup_call")) == 1
    await until(lambda: not sim.channels and not sim.bridges)
    record = await aredis.hgetall(keys.call(call_id))
    assert record.get("end_reason") in ("agent_hangup", "caller_hangup")


@pytest.mark.slow  # measured 15.2 s
async def test_refused_destinations_and_invalid_arguments_never_reach_asterisk(sim, emulator, cluster_up, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns={
            1: Reply(text="", tool_calls=[ToolCall("transfer", {"destination": "+15551234567"})]),
            2: Reply(text="", tool_calls=[ToolCall("transfer", {"number": "911"})]),
        },
        after_tool=Reply(text="I cannot do that.", audio_ms=600),
    )
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu, extra=DESTINATIONS)
    call = await sim.place_call(audio=asks("Call +1 555 1234567.", "Then call 911."))
    call_id = await call_of(aredis, keys, call.channel_id)
    entries = await until(lambda: _two(tool_entries(aredis, keys, call_id, "transfer")), timeout=30)
    refused, invalid = (json.loads(e["output"]) for e in entries)
    assert refused["ok"] is False and "not a transfer destination" in refused["error"] and "sales" in refused["error"]
    assert invalid["ok"] is False and "invalid arguments" in invalid["error"]
    assert not any(r.path in ("/channels/create", "/channels") and r.method == "POST" for r in sim.rest_log)
    outputs = [
        e
        for s in emu.sessions
        for e in s.received
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert len(outputs) == 2  # the model got an answer each time
    await call.hangup()
    assert_wire_conforms(emu)


async def _two(entries_coro):
    entries = await entries_coro
    return entries if len(entries) >= 2 else None


@pytest.mark.slow  # measured 13.3 s
async def test_leave_voicemail_announces_then_hands_the_caller_to_voicemail(sim, emulator, cluster_up, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns={1: Reply(text="", tool_calls=[ToolCall("leave_voicemail")])},
        after_tool=Reply(text="Connecting you to voicemail now.", audio_ms=900),
    )
    emu = await emulator(script, speed=4.0)
    await cluster_up(emu, extra=DESTINATIONS)
    audio = asks("Can I leave a message?").then(caller_speech("This is my message, please call me back.", 2000))
    call = await sim.place_call(audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any("VoiceMail" in step for step in call.trail), timeout=25)
    # The announcement was played out before the hand-off.
    assert any(e["role"] == "assistant" and "voicemail" in e["text"] for e in await log_entries(aredis, keys, call_id))
    await until(lambda: f"{call_id}-em" not in sim.channels and f"{call_id}-br" not in sim.bridges)
    await until(lambda: call.channel.input_sink is not None, timeout=15)  # past the greeting and the beep
    await asyncio.sleep(2.0)
    await call.hangup()
    await until(lambda: sim.voicemails, timeout=10)
    assert sim.voicemails[0].caller_number == "5551234"
    record = await aredis.hgetall(keys.call(call_id))
    assert record["end_reason"] == "voicemail"


@pytest.mark.slow  # measured 15.8 s
async def test_a_transcript_by_email_to_the_address_the_caller_spelled(
    sim, emulator, cluster_up, aredis, keys, tmp_path, cluster_env
):
    from aiosmtpd.controller import Controller

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            received.append((list(envelope.rcpt_tos), envelope.content.decode(errors="replace")))
            return "250 OK"

    from sim.cluster import free_port

    smtp = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        port = smtp.port
        script = Script(
            greeting=Reply(text="Hi.", audio_ms=500),
            turns={
                1: Reply(
                    text="", tool_calls=[ToolCall("request_transcript", {"email": "bob dot jones at example dot com"})]
                ),
                2: Reply(
                    text="",
                    tool_calls=[ToolCall("request_transcript", {"email": "bob.jones@example.com", "confirmed": True})],
                ),
            },
            after_tool=Reply(text="Done.", audio_ms=500),
            transcripts={1: "Send me the transcript.", 2: "Yes."},
        )
        emu = await emulator(script, speed=4.0)
        cluster = await cluster_up(
            emu,
            extra={
                "email": {"smtp_host": "127.0.0.1", "smtp_port": port},
                "tools": {"send_email_summary": {"send_after_every_call": False}},
            },
        )
        tools = cluster.start("tool-worker", instance_id="tool-worker-t")
        assert await asyncio.to_thread(cluster.wait_ready, [tools], 30), tools.log_text()[-2000:]
        call = await sim.place_call(audio=asks("Send me the transcript.", "Yes, that's right."))
        call_id = await call_of(aredis, keys, call.channel_id)
        entries = await until(lambda: _two(tool_entries(aredis, keys, call_id, "request_transcript")), timeout=30)
        first, second = (json.loads(e["output"]) for e in entries)
        assert first["status"] == "confirm" and first["address"] == "bob.jones@example.com"
        assert "b o b" in first["spelled"]
        assert second["status"] == "scheduled"
        assert not received  # nothing is sent while the call goes on
        await call.hangup()
        await until(lambda: received, timeout=20)
        await asyncio.sleep(1.0)
        ((rcpts, content),) = received  # exactly one message
        assert rcpts == ["bob.jones@example.com"]
        assert "Send me the transcript." in content or "Send me the transcript" in content.replace("=\n", "")
    finally:
        smtp.stop()
