"""Realtime server events: the decoder (realtime/events.py), the protocol (realtime/protocol.py) over a
sequence of frames, and the call session's translation of what comes out into the call's state machine
(CallSession's event handlers → call_state.CallState).

The seeds are valid GA server events, each checked against the official SDK's types (tests/realtime_schema.py);
the inputs are those events mutated (a field dropped, retyped, an odd number, a deep nest), garbled as bytes,
or any JSON. Allowed outcomes: decode returns an event, Other or Malformed; the protocol returns its outputs and
never raises; the state machine takes what the session gives it and returns actions."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media_worker import call_state as cs
from media_worker.realtime import events as ev
from media_worker.realtime import protocol as rp
from media_worker.session import CallSession
from media_worker.usage import CallUsage
from shared.config.ga_session import build_session
from shared.config.schema import OpenAIRealtime, Pricing
from tests.fuzz.harness import deep_json, examples, garbled, json_values, mutated, odd_numbered, routed, time_bound
from tests.realtime_schema import check_server_event

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

AUDIO = base64.b64encode(b"\x00\x01" * 240).decode()
RESPONSE = {"object": "realtime.response", "id": "resp_1", "status": "in_progress", "output": [], "metadata": None}
DONE = {
    **RESPONSE,
    "status": "completed",
    "metadata": {cs.METADATA_KEY: "req_1"},
    "output": [
        {"id": "item_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_audio", "transcript": "Hello."}]},
        {"id": "item_2", "type": "function_call", "call_id": "call_1", "name": "hangup_call", "arguments": "{}",
         "status": "completed"},
    ],
    "usage": {"total_tokens": 10, "input_tokens": 4, "output_tokens": 6,
              "input_token_details": {"text_tokens": 4, "audio_tokens": 0, "cached_tokens": 0},
              "output_token_details": {"text_tokens": 1, "audio_tokens": 5}},
}  # fmt: skip
SEEDS: list[dict[str, Any]] = [
    {"type": "session.created", "event_id": "e1", "session": {"type": "realtime", "id": "sess_1"}},
    {
        "type": "session.updated",
        "event_id": "e2",
        "session": {"type": "realtime", "expires_at": 1_900_000_000, "tools": []},
    },  # fmt: skip
    {
        "type": "error",
        "event_id": "e3",
        "error": {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "message": "m",
            "param": None,
            "event_id": "req_1",
        },
    },  # fmt: skip
    {"type": "input_audio_buffer.speech_started", "event_id": "e4", "audio_start_ms": 100, "item_id": "item_u"},
    {"type": "input_audio_buffer.speech_stopped", "event_id": "e5", "audio_end_ms": 900, "item_id": "item_u"},
    {"type": "input_audio_buffer.committed", "event_id": "e6", "item_id": "item_u", "previous_item_id": None},
    {"type": "response.created", "event_id": "e7", "response": {**RESPONSE, "metadata": {cs.METADATA_KEY: "req_1"}}},
    {
        "type": "response.output_audio.delta",
        "event_id": "e8",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "delta": AUDIO,
    },  # fmt: skip
    {
        "type": "response.output_audio.done",
        "event_id": "e9",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
    },  # fmt: skip
    {
        "type": "response.output_audio_transcript.done",
        "event_id": "e10",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "transcript": "Hello.",
    },  # fmt: skip
    {
        "type": "response.output_item.done",
        "event_id": "e11",
        "response_id": "resp_1",
        "output_index": 1,
        "item": DONE["output"][1],
    },  # fmt: skip
    {"type": "response.done", "event_id": "e12", "response": DONE},
    {
        "type": "conversation.item.truncated",
        "event_id": "e13",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 300,
    },  # fmt: skip
    {"type": "conversation.item.deleted", "event_id": "e14", "item_id": "item_1"},
    {
        "type": "rate_limits.updated",
        "event_id": "e15",
        "rate_limits": [{"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 1.0}],
    },  # fmt: skip
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e16",
        "item_id": "item_u",
        "content_index": 0,
        "transcript": "hi",
        "usage": {"type": "duration", "seconds": 1.0},
    },  # fmt: skip
]
for seed in SEEDS:
    check_server_event(seed)  # the seeds are valid GA events, as the SDK's types define them
SESSION = build_session(OpenAIRealtime(), instructions="x", tools=[])
KEYS = sorted({key for seed in SEEDS for key in seed} | {"delta", "response", "item", "metadata", "usage", "output"})

frames = st.one_of(
    st.sampled_from(SEEDS).map(json.dumps),
    st.sampled_from(SEEDS).flatmap(lambda s: mutated(s, KEYS)).map(json.dumps),
    st.sampled_from(SEEDS).flatmap(odd_numbered).map(json.dumps),
    st.sampled_from(SEEDS).map(lambda s: json.dumps(s).encode()).flatmap(garbled),
    st.builds(
        lambda t, v: json.dumps({"type": t, **v}),
        st.sampled_from(sorted(ev.KNOWN_TYPES)),
        st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
    ),  # fmt: skip
    json_values.map(json.dumps),
    st.binary(max_size=40),
    st.sampled_from(SEEDS).map(
        lambda s: json.dumps(s)[:-1].encode() + b',"deep":' + deep_json(5000) + b"}"  # a known event, nested deep
    ),
)


# Crashes found here in another area's code (see tests/test_fuzz_findings.py): tolerated until fixed there.
ROUTED_HERE: dict[tuple[str, str, str], str] = {}


class SessionShell:
    """What CallSession's event handlers use of the session: its usage counter, `_feed` into the machine and
    `_spend_later` (the cluster's usage counters, in Redis: summed here)."""

    def __init__(self):
        self.state = cs.CallState(greeting="Hello.")
        self.usage = CallUsage(Pricing())
        self.actions = 0
        self.spent = 0.0

    def _spend_later(self, usd: float) -> None:
        assert usd > 0
        self.spent += usd

    def _feed(self, event: cs.Event) -> None:
        for action in self.state.handle(event):
            assert isinstance(action, cs.Action.__args__)
            self.actions += 1


# What the session does with each protocol output (session._EVENT_HANDLERS), for the ones that reach the machine.
TRANSLATE = {
    ev.ResponseCreated: CallSession._on_response_created,
    ev.ResponseDone: CallSession._on_response_done,
    ev.RateLimits: CallSession._on_rate_limits,
    rp.ResponseRefused: CallSession._on_response_refused,
    rp.FunctionCall: CallSession._on_function_call,
}


@pytest.mark.surface("realtime (server events)")
@settings(max_examples=examples())
@given(batch=st.lists(frames, min_size=1, max_size=8), phase=st.sampled_from(["connecting", "configuring", "ready"]))
def test_any_server_frames_reach_the_call_state_cleanly(surface, batch, phase):
    """The frames arrive at a protocol waiting for session.created, for session.updated, or ready."""
    surface.example()
    protocol = rp.RealtimeProtocol(SESSION)
    shell = SessionShell()
    with time_bound():
        shell._feed(cs.SessionReady())
        if phase != "connecting":
            protocol.receive(json.dumps(SEEDS[0]))
        if phase == "ready":
            protocol.receive(json.dumps(SEEDS[1]))
        for frame in batch:
            decoded = ev.decode(frame)
            assert isinstance(decoded, (*ev.ServerEvent.__args__, ev.Other, ev.Malformed))
            for out in protocol.receive(frame):
                if type(out) is rp.AudioChunk:
                    if out.data:  # the session's _on_audio_chunk: the first audio of an item
                        shell._feed(cs.AudioStarted(out.response_id, out.item_id))
                    continue
                handler = TRANSLATE.get(type(out))
                if handler is not None:
                    try:
                        handler(shell, out)
                    except Exception as exc:
                        if not routed(exc, ROUTED_HERE):
                            raise
    for raw in protocol.take_outbox():
        json.loads(raw)
