"""The media worker's Realtime client against the emulator, over real WebSockets on loopback.

Every event either side put on the wire is validated against the official SDK's GA unions, strictly.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from media_worker.realtime import events as ev
from media_worker.realtime.client import (
    BufferedClientConnection,
    ClientSettings,
    Closed,
    Connection,
    RealtimeClient,
    RealtimeError,
    Reconnected,
    Reconnecting,
)
from media_worker.realtime.pool import SessionPool
from media_worker.realtime.protocol import AudioChunk, FunctionCall, Ready, ServerError
from shared.config.ga_session import build_session
from shared.config.schema import OpenAIRealtime, TurnDetection
from sim.realtime import Emulator, Reply, Script, ToolCall
from tests.realtime_schema import check_client_event, check_server_event

KEY = "sk-test-client-key"
HANGUP = {
    "type": "function",
    "name": "hangup_call",
    "description": "End the call.",
    "parameters": {"type": "object", "properties": {"farewell": {"type": "string"}}},
}


def session_config(**provider: Any) -> dict:
    p = OpenAIRealtime(turn_detection=TurnDetection(silence_duration_ms=300, prefix_padding_ms=100), **provider)
    return build_session(p, instructions="You are a test agent.", tools=[HANGUP])


def settings(emu: Emulator, **overrides: Any) -> ClientSettings:
    return ClientSettings(url=emu.url, model="gpt-realtime-2.1", api_key=KEY, **overrides)


def tone(ms: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (np.sin(2 * math.pi * 440 * t) * amplitude * 32767).astype("<i2").tobytes()


async def speak(client: RealtimeClient, ms: int = 600, silence_ms: int = 700) -> None:
    """A caller utterance: a tone, then enough silence for the server VAD to end the turn (20 ms frames)."""
    audio = tone(ms) + bytes(silence_ms * 48)
    for i in range(0, len(audio), 960):
        await client.append(audio[i : i + 960])


async def until(client: RealtimeClient, predicate, timeout: float = 10.0) -> list[Any]:
    """Read the client's events until one matches; return all read, the match last."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            item = await client.events.get()
            seen.append(item)
            if predicate(item):
                return seen


def done(status: str = "completed"):
    return lambda e: isinstance(e, ev.ResponseDone) and e.response.status == status


def audio_ms(events: list[Any]) -> float:
    return sum(len(e.data) for e in events if isinstance(e, AudioChunk)) / 48


def assert_wire_conforms(emu: Emulator) -> int:
    count = 0
    for s in emu.sessions:
        for event in s.received:
            check_client_event(event)
            count += 1
        for event in s.sent:
            check_server_event(event)
            count += 1
    return count


@pytest.fixture
async def make_emulator():
    started: list[Emulator] = []

    async def make(script: Script, **kwargs: Any) -> Emulator:
        kwargs.setdefault("speed", 0)
        emu = Emulator(script=script, api_keys={KEY}, seed=7, **kwargs)
        await emu.start(host="127.0.0.1", port=0)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()


async def test_scripted_conversation_conforms_end_to_end(make_emulator, caplog):
    script = Script(
        greeting=Reply(text="Hello, thanks for calling."),
        turns={
            1: Reply(
                text="Our opening hours are nine to five, Monday to Friday, and on Saturday mornings.", audio_ms=4000
            ),
            2: Reply(
                text="Sorry, could you repeat that?",
                server_error={
                    "type": "server_error",
                    "code": None,
                    "message": "The server had an error while processing your request.",
                },
            ),
            3: Reply(preamble="One moment.", tool_calls=[ToolCall("hangup_call", {"farewell": "Goodbye"})]),
            4: Reply(text="Welcome back."),
        },
        after_tool=Reply(text="Done. {output}"),
    )
    emu = await make_emulator(script, speed=4.0)
    log: list[dict] = []  # what the call session would keep in va:call:{id}:log

    async def history() -> list[dict]:
        return list(log)

    client = RealtimeClient(settings(emu), session_config(voice="shimmer"), history=history)
    caplog.set_level(logging.INFO, logger="realtime")
    ready = await client.start()
    assert isinstance(ready, Ready) and ready.tools == 1
    assert "OpenAI session configured with 1 tools" in caplog.text
    first = emu.sessions[0]
    assert first.query["model"] == "gpt-realtime-2.1"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-beta" not in {k.lower() for k in first.headers}

    # Greeting.
    client.create_response(instructions="Greet the caller.")
    greeting = await until(client, done())
    assert audio_ms(greeting) > 0
    log.append({"role": "assistant", "text": "Hello, thanks for calling."})

    # Turn 1, interrupted by turn 2 (barge-in): the client truncates to what was "played".
    await speak(client)
    events = await until(client, lambda e: isinstance(e, AudioChunk))
    answer_item = events[-1].item_id
    await until(client, lambda e: isinstance(e, AudioChunk) and audio_ms([e]) > 0)
    await speak(client)
    events = await until(client, done("cancelled"))
    assert any(isinstance(e, ev.SpeechStarted) for e in events)
    played = int(client.protocol.received_ms(answer_item) / 2)  # the caller heard half of what arrived
    assert played > 0
    assert client.truncate(answer_item, played) == played
    events = await until(client, lambda e: isinstance(e, ev.ItemTruncated))
    assert first.truncations[-1]["item_id"] == answer_item and first.truncations[-1]["audio_end_ms"] == played

    # Turn 2's reply comes after a server error, which is reported, not fatal.
    events += await until(client, done())
    errors = [e for e in events if isinstance(e, ServerError)]
    assert errors and errors[0].message.startswith("The server had an error")
    log += [
        {"role": "user", "text": "user turn 1"},
        {"role": "user", "text": "user turn 2"},
        {"role": "assistant", "text": "Sorry, could you repeat that?"},
    ]

    # Turn 3: a function call; the output goes back only after that response is done.
    await speak(client)
    events = await until(client, lambda e: isinstance(e, FunctionCall))
    call = events[-1]
    assert call.name == "hangup_call" and '"farewell"' in call.arguments
    await until(client, done())  # the output, and the reply to it, once the calling response is done
    client.function_output(call.call_id, '{"ok": true}')
    client.create_response()
    events = await until(client, lambda e: isinstance(e, ev.TranscriptDone) and e.transcript.startswith("Done."))
    assert events[-1].transcript == 'Done. {"ok": true}'
    assert first.function_outputs == [{"call_id": call.call_id, "output": '{"ok": true}'}]
    await until(client, done())
    log += [
        {"role": "user", "text": "user turn 3"},
        {"call_id": call.call_id, "name": call.name, "arguments": call.arguments, "output": '{"ok": true}'},
        {"role": "assistant", "text": 'Done. {"ok": true}'},
    ]

    # The connection drops: a new session, the same config, the conversation replayed, audio resumes.
    await first.drop()
    events = await until(client, lambda e: isinstance(e, Reconnected))
    assert any(isinstance(e, Reconnecting) for e in events)
    assert events[-1].replayed == len(log)
    second = emu.sessions[1]
    async with asyncio.timeout(5):  # the replayed items are on the wire; let the emulator read them
        while len(second.items) < len(log) + 1:  # + the function call's own item
            await asyncio.sleep(0.01)
    assert second.config["tools"][0]["name"] == "hangup_call"
    assert second.config["audio"]["output"]["voice"] == "shimmer"
    texts = [c.get("text") for item in second.items for c in item.get("content", []) if item["type"] == "message"]
    assert texts[:2] == ["Hello, thanks for calling.", "user turn 1"]
    assert [i["type"] for i in second.items].count("function_call_output") == 1
    await speak(client)
    await until(client, done())

    await client.close()
    assert assert_wire_conforms(emu) > 100


async def test_session_expiry_reconnects_and_rotation_happens_before_it(make_emulator):
    emu = await make_emulator(Script(default=Reply(text="Hi.")), max_session_s=1.0)
    client = RealtimeClient(settings(emu, rotate_before_expiry_s=-60), session_config())
    await client.start()
    events = await until(client, lambda e: isinstance(e, Reconnected), timeout=10)
    assert any(isinstance(e, Reconnecting) and "1001" in e.cause for e in events)
    assert emu.sessions[0].close_code == 1001
    await client.close()

    emu = await make_emulator(Script(default=Reply(text="Hi.")), max_session_s=3.0)
    client = RealtimeClient(settings(emu, rotate_before_expiry_s=2.5), session_config())
    await client.start()
    events = await until(client, lambda e: isinstance(e, Reconnected), timeout=10)
    assert events[-1].rotation is True
    assert not any(isinstance(e, Reconnecting) for e in events)  # make-before-break: no outage
    await asyncio.sleep(0.2)
    assert emu.sessions[0].close_code == 1000  # we closed it, before the server had to
    await client.close()
    assert_wire_conforms(emu)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("{not json", ev.Malformed),
        ('{"type": "response.future_event", "event_id": "event_1"}', ev.Other),
        (
            '{"type": "response.output_audio.delta", "event_id": "event_2", "response_id": "resp_x", '
            '"item_id": "item_x", "output_index": 0, "content_index": 0, "delta": "%%%broken"}',
            ev.Malformed,
        ),
        (
            '{"type": "response.done", "event_id": "event_3", "response": {"id": "resp_never_created", '
            '"object": "realtime.response", "status": "completed", "output": []}}',
            ev.ResponseDone,
        ),
        ('{"type": "session.updated", "event_id": "event_4", "session": {"type": "realtime"}}', ev.SessionUpdated),
    ],
)
async def test_bad_frames_are_reported_and_the_session_goes_on(make_emulator, raw, expected):
    emu = await make_emulator(Script(default=Reply(text="Still here.")))
    client = RealtimeClient(settings(emu), session_config())
    await client.start()
    await emu.sessions[0].send_raw(raw)
    await until(client, lambda e: isinstance(e, expected))
    client.create_response()
    events = await until(client, done())
    assert audio_ms(events) > 0
    await client.close()


@pytest.mark.parametrize("code, fatal", [(1001, False), (1011, False), (1012, False), (3000, True), (4000, True)])
async def test_server_closes(make_emulator, code, fatal):
    emu = await make_emulator(Script(default=Reply(text="Hi.")))
    client = RealtimeClient(settings(emu, reconnect_backoff_s=0.05), session_config())
    await client.start()
    await emu.sessions[0].close(code, "test close")
    if fatal:
        events = await until(client, lambda e: isinstance(e, Closed))
        assert str(code) in events[-1].reason
        assert len(emu.sessions) == 1  # no pointless reconnect after an auth or API-shape failure
    else:
        events = await until(client, lambda e: isinstance(e, Reconnected))
        assert str(code) in next(e for e in events if isinstance(e, Reconnecting)).cause
        client.create_response()
        await until(client, done())
    await client.close()


def held_reconnects(emu) -> tuple[Callable[[], Awaitable[Connection]], asyncio.Event]:
    """A connection source whose first open goes through and whose reconnects wait for the event: caller audio
    arrives while there is no session."""
    gate = asyncio.Event()
    opens = 0

    async def source() -> Connection:
        nonlocal opens
        opens += 1
        if opens > 1:
            await gate.wait()
        return await Connection.open(settings(emu))

    return source, gate


async def test_tcp_drop_reconnects_and_keeps_the_callers_audio(make_emulator):
    emu = await make_emulator(Script(default=Reply(text="Heard you.")))
    slow_source, gate = held_reconnects(emu)

    client = RealtimeClient(settings(emu, reconnect_backoff_s=0.05), session_config(), connection_source=slow_source)
    await client.start()
    await emu.sessions[0].drop()
    await until(client, lambda e: isinstance(e, Reconnecting))
    await speak(client)  # said during the outage
    gate.set()
    await until(client, lambda e: isinstance(e, Reconnected))
    events = await until(client, done())
    assert any(isinstance(e, ev.SpeechStarted) for e in events)  # the held audio reached the new session
    await client.close()


async def test_append_now_writes_at_once_while_connected_and_declines_during_an_outage(make_emulator):
    """The per-frame path's direct append: the server gets exactly the audio, in order, with no task hop; while
    no session is connected it sends nothing and says so, so the caller's audio goes the held way."""
    emu = await make_emulator(Script(default=Reply(text="Heard you.")))
    slow_source, gate = held_reconnects(emu)

    client = RealtimeClient(settings(emu, reconnect_backoff_s=0.05), session_config(), connection_source=slow_source)
    await client.start()
    audio = tone(600) + bytes(700 * 48)
    frames = [audio[i : i + 960] for i in range(0, len(audio), 960)]
    assert all(client.append_now(frame) for frame in frames)  # no await between them: written within the call
    await until(client, done())
    appended = [e["audio"] for e in emu.sessions[0].received if e["type"] == "input_audio_buffer.append"]
    assert b"".join(base64.b64decode(a) for a in appended) == audio
    await emu.sessions[0].drop()
    await until(client, lambda e: isinstance(e, Reconnecting))
    assert not client.append_now(frames[0])  # no session: declined, nothing sent
    gate.set()
    await until(client, lambda e: isinstance(e, Reconnected))
    await client.close()


async def test_a_stalled_response_is_abandoned_for_a_new_session(make_emulator):
    emu = await make_emulator(Script(default=Reply(text="A long answer " * 10, audio_ms=8000)), speed=1.0)
    client = RealtimeClient(settings(emu, stall_timeout_s=0.5, reconnect_backoff_s=0.05), session_config())
    await client.start()
    client.create_response()
    await until(client, lambda e: isinstance(e, AudioChunk))
    emu.sessions[0].stall(5.0)
    events = await until(client, lambda e: isinstance(e, Reconnected), timeout=10)
    assert "stalled" in next(e for e in events if isinstance(e, Reconnecting)).cause
    await client.close()


async def test_handshake_failures_name_their_cause(make_emulator):
    emu = await make_emulator(Script())
    with pytest.raises(RealtimeError, match="invalid_api_key: Incorrect API key provided"):
        await RealtimeClient(
            ClientSettings(url=emu.url, model="gpt-realtime", api_key="sk-wrong"), session_config()
        ).start()
    bad = {**session_config(), "temperature": 0.8}
    with pytest.raises(RealtimeError, match=r"session.update rejected: Unknown parameter: 'session.temperature'"):
        await RealtimeClient(settings(emu), bad).start()


async def test_prewarmed_connections_skip_the_handshake(make_emulator):
    emu = await make_emulator(Script(default=Reply(text="Hi.")))
    pool = SessionPool(settings(emu), size=2)
    pool.start()
    async with asyncio.timeout(5):
        while pool.ready < 2:
            await asyncio.sleep(0.02)
    opened = len(emu.sessions)
    client = RealtimeClient(settings(emu), session_config(), connection_source=pool.take)
    await client.start()
    assert emu.sessions.index(next(s for s in emu.sessions if s.config["tools"])) < opened  # a pooled one
    client.create_response()
    await until(client, done())
    await client.close()
    await pool.stop()


async def test_the_connection_reads_into_a_buffer_of_its_own(make_emulator, monkeypatch):
    """A plain asyncio.Protocol gets a 256 KiB bytes object per read, shrunk to what came: glibc's heap then grew
    with calls in the soak. Reads go through the connection's own buffer instead, and whole messages still come."""
    reads: list[int] = []
    buffer_updated = BufferedClientConnection.buffer_updated
    monkeypatch.setattr(
        BufferedClientConnection, "buffer_updated", lambda self, n: (reads.append(n), buffer_updated(self, n))[1]
    )
    emu = await make_emulator(Script(greeting=Reply(text="Welcome.", audio_ms=3_000)))
    client = RealtimeClient(settings(emu), session_config())
    await client.start()
    client.create_response(instructions="Greet.")
    seen = await until(client, done())
    assert audio_ms(seen) == pytest.approx(3_000, abs=20)
    assert reads and max(reads) <= 64 * 1024
    await client.close()


async def test_close_while_audio_streams_in_ends_the_reader_at_once(make_emulator):
    """A caller who hangs up mid-greeting: close() cancels the reader while deltas pour in. With wait_for on
    Python 3.11 that cancel could be swallowed when a frame arrived at the same moment, and the reader (and the
    Realtime session) lived on until the stall timeout."""
    emu = await make_emulator(Script(greeting=Reply(text="A long welcome. " * 20, audio_ms=20_000)), speed=0)
    for _ in range(15):
        client = RealtimeClient(settings(emu, stall_timeout_s=60.0), session_config())
        await client.start()
        client.create_response(instructions="Greet.")
        await until(client, lambda e: isinstance(e, AudioChunk))
        async with asyncio.timeout(10):  # far below the 60 s stall timeout a swallowed cancel waits for
            await client.close()
    await asyncio.sleep(0.2)
    assert not emu.open_sessions()


async def open_sessions_drop_to(emu: Emulator, n: int, timeout: float = 5.0) -> int:
    """Wait (bounded) until the emulator has at most `n` open sessions; return how many are open then."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(emu.open_sessions()) > n and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return len(emu.open_sessions())


@pytest.mark.parametrize("when", ["connecting", "awaiting session.created"])
async def test_a_start_cancelled_while_connecting_leaves_no_socket(make_emulator, when):
    """The call ends while its Realtime session is being opened (TCP and HTTP upgrade, or the server has not
    sent session.created yet): the half-open WebSocket is closed, not left open by its keepalive."""
    emu = await make_emulator(Script(), session_created_delay_ms=300)
    client = RealtimeClient(settings(emu), session_config())
    start = asyncio.create_task(client.start())
    if when == "awaiting session.created":
        async with asyncio.timeout(5):
            while not emu.sessions:
                await asyncio.sleep(0.005)
    else:
        await asyncio.sleep(0)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    await client.close()
    assert await open_sessions_drop_to(emu, 0) == 0


async def test_a_close_during_start_ends_the_session_start_was_opening(make_emulator):
    """close() from another task while start() is still connecting: start() keeps nothing it opens after that
    (it raises, and its connection is closed), so nothing outlives the stop."""
    emu = await make_emulator(Script(), session_created_delay_ms=200)
    client = RealtimeClient(settings(emu), session_config())
    start = asyncio.create_task(client.start())
    async with asyncio.timeout(5):
        while not emu.sessions:
            await asyncio.sleep(0.005)
    await client.close()
    with pytest.raises(RealtimeError, match="closed"):
        await start
    assert len(emu.sessions) == 1
    assert await open_sessions_drop_to(emu, 0) == 0
    with pytest.raises(RealtimeError, match="closed"):  # and a later start does not connect at all
        await client.start()
    assert len(emu.sessions) == 1


async def test_the_pool_closes_a_connection_it_was_opening_when_stopped(make_emulator):
    emu = await make_emulator(Script(), session_created_delay_ms=200)
    pool = SessionPool(settings(emu), size=1)
    pool.start()
    async with asyncio.timeout(5):
        while not emu.sessions:
            await asyncio.sleep(0.01)
    await pool.stop()
    assert await open_sessions_drop_to(emu, 0) == 0


async def test_a_reader_that_dies_closes_the_session_for_the_call(make_emulator, monkeypatch):
    """An unexpected failure in the reader would leave the call with a session that never answers: the call is
    told the session is closed."""
    emu = await make_emulator(Script(default=Reply(text="Hi.")))
    client = RealtimeClient(settings(emu), session_config())
    await client.start()

    def broken(frame: Any) -> list[Any]:
        raise RuntimeError("a bug in the protocol")

    monkeypatch.setattr(client.protocol, "receive", broken)
    client.create_response()
    seen = await until(client, lambda e: isinstance(e, Closed))
    assert "realtime-reader died (RuntimeError)" in seen[-1].reason
    await client.close()
    assert await open_sessions_drop_to(emu, 0) == 0
