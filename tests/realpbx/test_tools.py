"""The model's tools on the real Asterisk: a transfer answered and bridged, a ringing one cancelled, hangup_call,
leave_voicemail writing the caller's message, and the transcript and summary mails."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from sim.asterisk.audio import CallerAudio
from sim.cluster import free_port
from sim.realtime import Reply, Script, ToolCall
from tests.media_harness import caller_speech, until
from tests.realpbx.pbx_harness import (  # noqa: F401  (fixtures)
    DESTINATIONS,
    aredis,
    agents_dialplan,
    call_of,
    emulator,
    keys,
    nothing_of_the_call_left,
    pbx_cluster,
    pbx,
)


def asked(text: str) -> CallerAudio:
    return CallerAudio.silence(1200).then(caller_speech(text, 900))


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


def system_notes(emu) -> list[str]:
    return [
        json.dumps(e)
        for s in emu.sessions
        for e in s.received
        if e["type"] == "conversation.item.create" and e["item"].get("role") == "system"
    ]


async def tool_outputs(aredis, keys, call_id: str, name: str) -> list[dict]:
    return [
        json.loads(fields["output"])
        for _, fields in await aredis.xrange(keys.call_log(call_id))
        if fields.get("role") == "tool" and fields.get("name") == name
    ]


def bridge_members(real_asterisk, bridge_id: str) -> set[str] | None:
    status, bridge = real_asterisk.ari("GET", f"/bridges/{bridge_id}")
    return set(bridge["channels"]) if status == 200 else None


async def test_transfer_answered_bridges_the_caller_with_the_agent(
    real_asterisk, agents_dialplan, pbx_cluster, pbx, emulator, aredis, keys
):
    emu = await emulator(transfer_script("sales"), speed=4.0)
    await pbx_cluster(emu, extra=DESTINATIONS)
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await leg.say(asked("Sales please."))
    xfer = f"{call_id}-xfer1"
    await until(lambda: bridge_members(real_asterisk, f"{call_id}-br") == {leg.peer_id, xfer}, timeout=20)
    (output,) = await until(lambda: tool_outputs(aredis, keys, call_id, "transfer"), timeout=10)
    assert output["ok"] is True

    async def transferred():
        return await aredis.hget(keys.call(call_id), "state") == "transferred"

    await until(transferred, timeout=5)  # written once the AI's leg is gone and the hold music stopped
    status, _ = real_asterisk.ari("GET", f"/channels/{call_id}-em")
    assert status == 404  # the AI's media leg is gone
    # The agent's side plays a recording: the caller hears it through the bridge.
    connected = time.monotonic()
    await until(lambda: leg.first_voiced_after(connected + 0.2), timeout=10)
    await leg.hangup()
    await until(lambda: real_asterisk.ari("GET", f"/channels/{xfer}")[0] == 404, timeout=10)
    await nothing_of_the_call_left(aredis, keys, call_id)


async def test_a_ringing_transfer_can_be_cancelled(
    real_asterisk, agents_dialplan, pbx_cluster, pbx, emulator, aredis, keys
):
    emu = await emulator(
        transfer_script(
            "nobody", {2: Reply(text="Cancelling.", audio_ms=500, tool_calls=[ToolCall("cancel_transfer")])}
        ),
        speed=4.0,
    )
    extra = {
        "tools": {**DESTINATIONS["tools"], "transfer": {**DESTINATIONS["tools"]["transfer"], "ring_timeout_ms": 20_000}}
    }
    await pbx_cluster(emu, extra=extra)
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await leg.say(asked("Sales please."))
    xfer = f"{call_id}-xfer1"
    await until(lambda: real_asterisk.ari("GET", f"/channels/{xfer}")[0] == 200, timeout=15)  # ringing
    await leg.say(asked("Actually, never mind."))
    (cancel,) = await until(lambda: tool_outputs(aredis, keys, call_id, "cancel_transfer"), timeout=20)
    assert cancel["status"] == "cancelled"
    await until(lambda: real_asterisk.ari("GET", f"/channels/{xfer}")[0] == 404, timeout=10)
    assert bridge_members(real_asterisk, f"{call_id}-br") == {leg.peer_id, f"{call_id}-em"}  # back with the AI
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)


async def test_a_busy_destination_comes_back_to_the_model(
    real_asterisk, agents_dialplan, pbx_cluster, pbx, emulator, aredis, keys
):
    emu = await emulator(transfer_script("busyline"), speed=4.0)
    await pbx_cluster(emu, extra=DESTINATIONS)
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await leg.say(asked("Sales please."))
    # The model hears the outcome as a note once Asterisk reports it (Busy() answers with cause 17).
    notes = await until(lambda: [n for n in system_notes(emu) if "busy" in n], timeout=20)
    assert notes
    assert bridge_members(real_asterisk, f"{call_id}-br") == {leg.peer_id, f"{call_id}-em"}
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)


async def test_hangup_call_ends_the_call_after_the_farewell(pbx_cluster, pbx, emulator, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns={1: Reply(text="", tool_calls=[ToolCall("hangup_call", {"farewell": "Goodbye!"})])},
        after_tool=Reply(text="Goodbye!", audio_ms=800),
    )
    emu = await emulator(script, speed=4.0)
    await pbx_cluster(emu, extra=DESTINATIONS)
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await leg.say(asked("That's all, bye."))
    asked_at = time.monotonic()
    await until(lambda: leg.gone.is_set(), timeout=20)  # the agent hung up on the caller
    assert leg.first_voiced_after(asked_at) is not None  # after saying goodbye
    await nothing_of_the_call_left(aredis, keys, call_id)
    assert await aredis.hget(keys.call(call_id), "end_reason") == "agent_hangup"


async def test_leave_voicemail_records_the_callers_message(real_asterisk, pbx_cluster, pbx, emulator, aredis, keys):
    inbox = real_asterisk.run_dir / "spool" / "voicemail" / "default" / "100" / "INBOX"
    before = set(inbox.glob("msg*.wav")) if inbox.exists() else set()
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns={1: Reply(text="", tool_calls=[ToolCall("leave_voicemail")])},
        after_tool=Reply(text="Connecting you to voicemail now.", audio_ms=900),
    )
    emu = await emulator(script, speed=4.0)
    await pbx_cluster(emu, extra=DESTINATIONS)
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await leg.say(asked("Can I leave a message?"))

    def in_voicemail():
        status, channel = real_asterisk.ari("GET", f"/channels/{leg.peer_id}")
        return status == 200 and channel["dialplan"]["app_name"] == "VoiceMail"

    await until(in_voicemail, timeout=20)
    # After the mailbox's "unavailable" greeting and the beep, VoiceMail records into the mailbox's tmp/.
    await until(lambda: any((inbox.parent / "tmp").glob("*")), timeout=30)
    await leg.say(caller_speech("This is my message, please call me back.", 2500))
    await leg.hangup()
    new = await until(lambda: set(inbox.glob("msg*.wav")) - before, timeout=10)
    (message,) = new
    assert message.stat().st_size > 8000  # about a second or more of 8 kHz audio
    await nothing_of_the_call_left(aredis, keys, call_id)
    assert await aredis.hget(keys.call(call_id), "end_reason") == "voicemail"


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    received: list[tuple[list[str], str]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            received.append((list(envelope.rcpt_tos), envelope.content.decode(errors="replace")))
            return "250 OK"

    smtp = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    smtp.received = received
    yield smtp
    smtp.stop()


async def test_transcript_and_summary_mails_are_delivered(smtp_server, pbx_cluster, pbx, emulator, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=500),
        turns={
            1: Reply(text="", tool_calls=[ToolCall("request_transcript", {"email": "bob.jones@example.com"})]),
            2: Reply(
                text="",
                tool_calls=[ToolCall("request_transcript", {"email": "bob.jones@example.com", "confirmed": True})],
            ),
        },
        after_tool=Reply(text="Done.", audio_ms=500),
        transcripts={1: "Send me the transcript.", 2: "Yes."},
    )
    emu = await emulator(script, speed=4.0)
    await pbx_cluster(
        emu,
        tool_workers=1,
        extra={
            "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp_server.port},
            "tools": {"send_email_summary": {"send_after_every_call": True, "recipients": ["ops@example.com"]}},
        },
    )
    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await leg.say(asked("Send me the transcript."))
    await leg.say(asked("Yes, that's right."))
    outputs = await until(lambda: _two(tool_outputs(aredis, keys, call_id, "request_transcript")), timeout=20)
    assert [o["status"] for o in outputs] == ["confirm", "scheduled"]
    assert not smtp_server.received  # nothing is sent while the call goes on
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)
    await until(lambda: len(smtp_server.received) >= 2, timeout=30)
    await asyncio.sleep(1.0)  # nothing more comes: one mail each
    recipients = sorted(r for rcpts, _ in smtp_server.received for r in rcpts)
    assert recipients == ["bob.jones@example.com", "ops@example.com"]


async def _two(outputs_coro):
    outputs = await outputs_coro
    return outputs if len(outputs) >= 2 else None
