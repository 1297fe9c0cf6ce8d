"""The Realtime client protocol with plain frames: no sockets, every rule checked, every frame it sends
validated against the official SDK's GA client union."""

from __future__ import annotations

import base64
import json

import pytest

from media_worker.realtime import events as ev
from media_worker.realtime.protocol import (
    AudioChunk,
    Fatal,
    FunctionCall,
    Phase,
    Ready,
    RealtimeProtocol,
    ResponseRefused,
    ServerError,
    SessionRejected,
)
from shared.config.ga_session import build_session
from shared.config.schema import OpenAIRealtime
from tests.realtime_schema import check_client_event

TOOLS = [
    {
        "type": "function",
        "name": "hangup_call",
        "description": "End the call",
        "parameters": {"type": "object", "properties": {}},
    }
]


def session() -> dict:
    return build_session(OpenAIRealtime(voice="shimmer"), instructions="Be brief.", tools=TOOLS)


def frame(**event) -> str:
    event.setdefault("event_id", "event_test")
    return json.dumps(event)


def sent(p: RealtimeProtocol) -> list[dict]:
    """Take the outbox; every frame must be a valid GA client event with no unknown key."""
    out = []
    for raw in p.take_outbox():
        check_client_event(raw)
        out.append(json.loads(raw))
    return out


def ready_protocol() -> RealtimeProtocol:
    p = RealtimeProtocol(session())
    p.receive(frame(type="session.created", session={"id": "sess_1", "type": "realtime"}))
    p.take_outbox()
    [r] = p.receive(
        frame(type="session.updated", session={"type": "realtime", "tools": TOOLS, "expires_at": 1_900_000_000})
    )
    assert isinstance(r, Ready)
    return p


def delta(item="item_a", response="resp_1", data=b"\x00\x01" * 480) -> str:
    return frame(
        type="response.output_audio.delta",
        response_id=response,
        item_id=item,
        output_index=0,
        content_index=0,
        delta=base64.b64encode(data).decode(),
    )


def test_handshake_sends_the_ga_session_update_then_reports_ready():
    p = RealtimeProtocol(session())
    assert p.phase is Phase.CONNECTING
    p.receive(frame(type="session.created", session={"id": "sess_abc", "type": "realtime"}))
    assert p.phase is Phase.CONFIGURING
    [update] = sent(p)
    assert update["type"] == "session.update"
    assert update["session"]["type"] == "realtime"
    assert update["session"]["tools"][0]["name"] == "hangup_call"
    [ready] = p.receive(
        frame(type="session.updated", session={"type": "realtime", "tools": TOOLS, "expires_at": 1_900_000_000})
    )
    assert ready == Ready("sess_abc", 1, 1_900_000_000.0)
    assert p.phase is Phase.READY


def test_a_rejected_session_update_is_reported_with_its_param():
    p = RealtimeProtocol(session())
    p.receive(frame(type="session.created", session={"id": "sess_1", "type": "realtime"}))
    [update] = sent(p)
    [rejected] = p.receive(
        frame(
            type="error",
            error={
                "type": "invalid_request_error",
                "code": "missing_required_parameter",
                "message": "Missing required parameter: 'session.tools[0].name'.",
                "param": "session.tools[0].name",
                "event_id": update["event_id"],
            },
        )
    )
    assert rejected == SessionRejected(
        "missing_required_parameter", "Missing required parameter: 'session.tools[0].name'.", "session.tools[0].name"
    )
    assert p.phase is Phase.CONFIGURING


def test_append_frames_are_valid_events_carrying_the_audio():
    pcm = bytes(range(256)) * 3 + b"\x00" * 192
    raw = RealtimeProtocol.append_frame(pcm)
    assert check_client_event(raw) == "InputAudioBufferAppendEvent"
    assert base64.b64decode(json.loads(raw)["audio"]) == pcm


def test_audio_deltas_become_pcm_and_are_counted_per_item():
    p = ready_protocol()
    [chunk] = p.receive(delta(data=b"\x01\x02" * 2400))  # 100 ms at 24 kHz
    assert chunk == AudioChunk("resp_1", "item_a", b"\x01\x02" * 2400)
    p.receive(delta(data=b"\x00\x00" * 1200))
    assert p.received_ms("item_a") == 150
    assert p.received_ms("item_b") == 0


def test_broken_base64_is_reported_not_raised():
    p = ready_protocol()
    [bad] = p.receive(
        frame(
            type="response.output_audio.delta",
            response_id="r",
            item_id="i",
            output_index=0,
            content_index=0,
            delta="not*base64!",
        )
    )
    assert isinstance(bad, ev.Malformed) and "base64" in bad.reason
    assert p.received_ms("i") == 0


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2]",
        '{"no_type": 1}',
        '{"type": 5}',
        '{"type": "response.output_audio.delta", "delta": "AAAA"}',
    ],
)
def test_malformed_frames_are_reported(raw):
    p = ready_protocol()
    [bad] = p.receive(raw)
    assert isinstance(bad, ev.Malformed)
    assert p.malformed == 1


def test_unknown_event_types_pass_through_as_other():
    p = ready_protocol()
    assert p.receive(frame(type="response.brand_new_thing", x=1)) == [ev.Other("response.brand_new_thing")]


def test_truncate_is_clamped_to_received_audio_and_deletes_unheard_items():
    p = ready_protocol()
    p.receive(delta(data=b"\x00\x00" * 24000))  # 1000 ms received
    assert p.truncate("item_a", 400) == 400
    assert p.truncate("item_a", 5000) == 1000 - 20  # never past what arrived, minus the drift margin
    assert p.truncate("item_a", 0) is None
    out = sent(p)
    assert [(e["type"], e.get("audio_end_ms")) for e in out] == [
        ("conversation.item.truncate", 400),
        ("conversation.item.truncate", 980),
        ("conversation.item.delete", None),
    ]
    p.receive(delta(item="item_b", data=b"\x00\x00" * 2400))
    p.receive(
        frame(
            type="response.output_audio.done", response_id="resp_1", item_id="item_b", output_index=0, content_index=0
        )
    )
    assert p.truncate("item_b", 100) is None  # heard in full: nothing to correct
    assert sent(p) == []


def test_cancel_only_when_a_response_is_active():
    p = ready_protocol()
    assert p.cancel_response() is False
    p.receive(
        frame(
            type="response.created",
            response={"id": "resp_9", "object": "realtime.response", "status": "in_progress", "output": []},
        )
    )
    assert p.cancel_response() is True
    [cancel] = sent(p)
    assert cancel == {"type": "response.cancel", "response_id": "resp_9", "event_id": cancel["event_id"]}


def function_call_item(call_id: str, name: str = "hangup_call") -> dict:
    return {
        "id": f"item_{call_id}",
        "type": "function_call",
        "object": "realtime.item",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": '{"reason": "done"}',
    }


def test_function_output_waits_for_the_calling_responses_done():
    p = ready_protocol()
    p.receive(frame(type="response.created", response={"id": "resp_f", "status": "in_progress", "output": []}))
    events = []
    for call_id in ("call_1", "call_2"):
        events += p.receive(
            frame(
                type="response.output_item.done", response_id="resp_f", output_index=0, item=function_call_item(call_id)
            )
        )
    calls = [e for e in events if isinstance(e, FunctionCall)]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "hangup_call", '{"reason": "done"}'),
        ("call_2", "hangup_call", '{"reason": "done"}'),
    ]
    # The same item again (both output_item.done and a retry) must not run the tool twice.
    again = p.receive(
        frame(type="response.output_item.done", response_id="resp_f", output_index=0, item=function_call_item("call_1"))
    )
    assert not any(isinstance(e, FunctionCall) for e in again)

    p.function_output("call_1", '{"ok": true}')
    assert sent(p) == []  # the response is still active: the server would reject the output
    p.receive(frame(type="response.done", response={"id": "resp_f", "status": "completed", "output": []}))
    out = sent(p)
    assert [e["item"]["call_id"] for e in out] == ["call_1"]  # no response.create: that is the caller's choice
    p.function_output("call_2", '{"ok": true}')
    p.function_output("call_2", '{"ok": true}')  # a second output for the same call is not sent
    [out] = sent(p)
    assert out["item"] == {"type": "function_call_output", "call_id": "call_2", "output": '{"ok": true}'}
    with pytest.raises(KeyError):
        p.function_output("call_unknown", "{}")


def test_a_refused_response_create_is_reported_by_its_event_id():
    p = ready_protocol()
    p.create_response(event_id="req_7_farewell", tool_choice="none", metadata={"va_request": "req_7_farewell"})
    [create] = sent(p)
    assert create["event_id"] == "req_7_farewell"
    assert create["response"]["metadata"] == {"va_request": "req_7_farewell"}
    busy = "Conversation already has an active response in progress: resp_1."
    [refused] = p.receive(error("conversation_already_has_active_response", busy, event_id="req_7_farewell"))
    assert refused == ResponseRefused("req_7_farewell")
    assert p.receive(error("conversation_already_has_active_response", busy)) == []  # nobody's request: benign


def test_response_metadata_is_kept_on_created_and_done():
    p = ready_protocol()
    response = {"id": "resp_m", "status": "in_progress", "output": [], "metadata": {"va_request": "req_1_greeting"}}
    [created] = p.receive(frame(type="response.created", response=response))
    assert created.response.metadata == {"va_request": "req_1_greeting"}
    [finished] = p.receive(frame(type="response.done", response={**response, "status": "completed"}))
    assert finished.response.metadata == {"va_request": "req_1_greeting"}


def error(code, message="m", **extra) -> str:
    return frame(
        type="error",
        error={
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": None,
            "event_id": None,
            **extra,
        },
    )


def test_error_classes():
    p = ready_protocol()
    assert p.receive(error("response_cancel_not_active", "Cancellation failed: no active response found")) == []
    assert p.receive(error("conversation_already_has_active_response")) == []
    assert p.receive(error("invalid_value", "Audio content of 2450ms is already shorter than 2535ms")) == []
    [fatal] = p.receive(error("insufficient_quota", "You exceeded your current quota"))
    assert fatal == Fatal(
        "insufficient_quota: You exceeded your current quota", "insufficient_quota", "invalid_request_error"
    )
    [other] = p.receive(error("invalid_value", "Invalid value: 'x'", event_id="evt_client_9"))
    assert isinstance(other, ServerError) and other.event_id == "evt_client_9"
    assert p.errors["response_cancel_not_active"] == 1 and p.errors["insufficient_quota"] == 1


def test_replay_rebuilds_the_conversation_as_valid_items():
    p = ready_protocol()
    p.replay(
        [
            {"role": "assistant", "text": "Hello, how can I help?"},
            {"role": "user", "text": "Transfer me to sales."},
            {"call_id": "call_x", "name": "transfer", "arguments": '{"destination": "sales"}', "output": '{"ok": 1}'},
        ]
    )
    out = sent(p)
    assert [e["item"]["type"] for e in out] == ["message", "message", "function_call", "function_call_output"]
    assert out[0]["item"]["content"] == [{"type": "output_text", "text": "Hello, how can I help?"}]
    assert out[1]["item"]["content"] == [{"type": "input_text", "text": "Transfer me to sales."}]


def test_quiet_tracks_responses_and_caller_speech():
    p = ready_protocol()
    assert p.quiet
    p.receive(frame(type="input_audio_buffer.speech_started", audio_start_ms=100, item_id="item_u"))
    assert not p.quiet
    p.receive(frame(type="input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="item_u"))
    p.receive(frame(type="response.created", response={"id": "resp_q", "status": "in_progress", "output": []}))
    assert not p.quiet
    p.receive(frame(type="response.done", response={"id": "resp_q", "status": "completed", "output": []}))
    assert p.quiet


def test_session_updated_before_created_is_out_of_order():
    p = RealtimeProtocol(session())
    [bad] = p.receive(frame(type="session.updated", session={"type": "realtime"}))
    assert isinstance(bad, ev.Malformed) and p.phase is Phase.CONNECTING
