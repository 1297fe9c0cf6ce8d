"""Regression tests for what the fuzz suite (tests/fuzz) found: each input is the minimal one hypothesis
shrank a crash to. The fixed ones pass; the ones routed to another area are strict xfails that name the owner
and turn into failures (to be unmarked) once fixed."""

from __future__ import annotations

import asyncio
import binascii
import json
import socket
import threading
from email.message import EmailMessage

import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from controller.ari.errors import AriError
from controller.ari.event_types import BadEvent, decode_event
from controller.ari.rest import AriRest
from controller.call_control import ControlInbox
from media_worker.audio.playout import PlayoutClock
from media_worker.calls import CallManager
from media_worker.context import WorkerContext
from media_worker.realtime.client import ClientSettings
from media_worker.realtime.pool import SessionPool
from media_worker.realtime import events as ev
from media_worker.realtime import protocol as rp
from media_worker.session import _message_text, _record_rate_limits
from media_worker.transport import websocket_codec as wc
from media_worker.usage import CallUsage
from shared.config.envsubst import expand
from shared.config.ga_session import build_session
from shared.config.load import ConfigError, parse_config
from shared.dead_letters import PoisonEntry
from shared.config.schema import Config, Email, OpenAIRealtime, Pricing
from shared.keys import Keys
from shared.messages import Assignment, CallEnded, CallPlan
from tests.ari_harness import lease_holder
from tests.conftest import OFFLINE
from tool_worker import smtp
from tool_worker.smtp import SendFailed

DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than any recursive parser's stack


def test_a_deeply_nested_websocket_control_message_is_a_control_error():
    with pytest.raises(wc.ControlError, match="nested too deeply"):
        wc.parse_event(b'{"event":"STATUS","x":' + DEEP + b"}")


def test_a_deeply_nested_ari_event_is_a_bad_event():
    event = decode_event(b'{"type":"ChannelUserevent","userevent":' + DEEP + b"}")
    assert isinstance(event, BadEvent) and event.reason == "nested too deeply"
    event = decode_event(b'{"type":"StasisStart","channel":{"id":"c","x":' + DEEP + b"}}")
    assert isinstance(event, BadEvent) and event.reason == "nested too deeply"


async def test_a_deeply_nested_ari_answer_is_an_ari_error():
    """An error answer (400) and a 2xx answer whose body is nested too deeply: AriError both, not RecursionError."""

    async def answer(request: web.Request) -> web.Response:
        status = 400 if request.path.endswith("/answer") else 200
        return web.Response(status=status, body=b'{"message":' + DEEP + b"}", content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with AriRest(f"http://127.0.0.1:{port}", "asterisk", "pw", timeout=5) as ari:
            with pytest.raises(AriError) as raised:
                await ari.answer("c1")
            assert raised.value.status == 400
            with pytest.raises(AriError, match="nested too deeply"):
                await ari.info()
    finally:
        await runner.cleanup()


# --- Realtime server events -----------------------------------------------------------------------------------


def test_a_deeply_nested_realtime_event_is_malformed():
    """Even an unknown field of a known event: msgspec recurses to skip it."""
    event = ev.decode(b'{"type":"input_audio_buffer.cleared","event_id":"e","x":' + DEEP + b"}")
    assert isinstance(event, ev.Malformed) and event.reason == "nested too deeply"


@pytest.mark.parametrize(
    ("expires_at", "tools"),
    [(10**400, []), (1e308, []), (-1, []), (1_900_000_000, 5)],
    ids=["int-beyond-float", "float-out-of-range", "negative", "tools-not-a-list"],
)
def test_session_updated_with_odd_expiry_or_tools_is_ready_without_them(expires_at, tools):
    protocol = rp.RealtimeProtocol(build_session(OpenAIRealtime(), instructions="x", tools=[]))
    protocol.receive(json.dumps({"type": "session.created", "event_id": "e1", "session": {"id": "s"}}))
    updated = {"type": "session.updated", "event_id": "e2", "session": {"expires_at": expires_at, "tools": tools}}
    [ready] = protocol.receive(json.dumps(updated))
    assert isinstance(ready, rp.Ready) and ready.tools == 0
    assert ready.expires_at == (1_900_000_000.0 if expires_at == 1_900_000_000 else None)


def test_a_response_done_whose_content_is_not_an_object_is_read():
    assert _message_text([{"type": "message", "content": [None, {"transcript": "Hello."}]}]) == "Hello."


def test_a_token_count_beyond_a_float_is_not_charged():
    usage = CallUsage(Pricing())
    usage.add({"input_token_details": {"text_tokens": 10**400}})


def test_a_rate_limit_beyond_a_float_is_not_recorded():
    _record_rate_limits([{"name": "requests", "limit": 10**400, "remaining": 1}])


# --- YAML config ----------------------------------------------------------------------------------------------

BILLION_LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else ', '.join(['lol'] * 10)}]\n" for i in range(9)
)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (BILLION_LAUGHS, "more than 100000 values once its aliases are expanded"),
        ("a: &a [*a]\n", "nested deeper than 64 levels"),
        (
            "x: " + "[" * 3000 + "]" * 3000 + "\n",
            "line 1: not a usable configuration: nested deeper than 64 levels",
        ),
        (
            "".join(f"{'  ' * i}k{i}:\n" for i in range(80)) + "  " * 80 + "v\n",
            "line 65: not a usable configuration: nested deeper than 64 levels",
        ),
        ("media_worker: {capacity: 1" + "0" * 5000 + "}\n", "a value cannot be built"),
        ("a: 2024-13-01\n", "a value cannot be built: month must be in 1..12"),
        ("a: !!timestamp x\n", "a value cannot be built"),
    ],
    ids=[
        "billion-laughs",
        "recursive-alias",
        "deep-flow-nesting",
        "deep-block-nesting",
        "int-of-5000-digits",
        "bad-date",
        "bad-timestamp-tag",
    ],
)
def test_a_hostile_yaml_document_is_a_config_error(text, why):
    with pytest.raises(ConfigError, match=why):
        parse_config(text, "hostile.yaml", {})


def test_a_placeholder_whose_value_yaml_cannot_build_stays_a_string():
    assert expand("${V}", {"V": "2024-13-01"}) == "2024-13-01"
    assert expand("${V}", {"V": "[" * 3000}) == "[" * 3000


# --- inbox entries --------------------------------------------------------------------------------------------

PLAN = CallPlan(call_id="c1", caller_channel="ch", context="t", provider="openai_realtime", profile="p",
                transport="audiosocket", format="slin16", provider_format="pcm16")  # fmt: skip


def worker_calls(redis_url: str, prefix: str) -> CallManager:
    settings = ClientSettings(url=OFFLINE["OPENAI_REALTIME_URL"], model="m", api_key="k", reconnect_attempts=1)
    redis = aioredis.Redis.from_url(redis_url)
    ctx = WorkerContext(Config(), redis, Keys(prefix), "w", PlayoutClock(), SessionPool(settings, 0), settings)
    return CallManager(ctx, listen_host="127.0.0.1", allowed_hosts=[])


async def test_worker_inbox_data_that_is_not_json_raises_for_the_dead_letters(redis_url, prefix):
    """The handler's contract: what it cannot use raises, and the inbox reader dead-letters the entry and reports
    an unusable assign (tests/test_worker_inbox.py); it never half-registers a call."""
    calls = worker_calls(redis_url, prefix)
    with pytest.raises(msgspec.DecodeError):
        await calls.handle("assign", b"\xff not json")
    assert not calls.sessions


async def test_an_assignment_whose_plan_is_for_another_call_is_refused(redis_url, prefix):
    """The fuzzer's worker-inbox run hung after 862 inputs: an assign whose call id differs from its plan's left a
    finished session registered for ever (the reaper forgot it by the plan's id), so the worker never drained."""
    calls = worker_calls(redis_url, prefix)
    wrong = Assignment(call_id="c1-other", epoch=1, plan=PLAN)
    with pytest.raises(PoisonEntry, match="carries a plan for"):
        await calls.handle("assign", msgspec.json.encode(wrong))
    assert not calls.sessions and calls._no_calls.is_set()


@pytest.mark.parametrize(("fmt", "port"), [("slin16", 0), ("ulaw", 70000)], ids=["rtp-format", "rtp-port"])
async def test_an_rtp_assignment_the_worker_cannot_open_leaves_no_session(redis_url, prefix, fmt, port):
    calls = worker_calls(redis_url, prefix)
    plan = msgspec.structs.replace(PLAN, transport="rtp", format=fmt)
    try:
        await calls.handle("assign", msgspec.json.encode(Assignment(call_id="c1", epoch=1, rtp_port=port, plan=plan)))
    finally:
        leaked = dict(calls.sessions)
        calls.sessions.clear()
    assert not leaked


async def test_a_call_ended_right_after_its_assignment_finishes(redis_url, prefix):
    """The inbox handles `assign` then `end` back to back (a caller who hangs up at once): the session's task,
    cancelled before its first step, never runs its `finally`, so `finished` is never set and the session keeps
    its slot (and its lease, renewed every second) for ever."""
    calls = worker_calls(redis_url, prefix)
    await calls.handle("assign", msgspec.json.encode(Assignment(call_id="c1", epoch=1, plan=PLAN)))
    session = calls.sessions["c1"]
    await calls.handle("end", msgspec.json.encode(CallEnded(call_id="c1", reason="hangup")))
    try:
        async with asyncio.timeout(1):  # its end takes milliseconds here (no Realtime session, no media)
            await session.finished.wait()
    finally:
        calls.sessions.clear()


async def test_a_controller_inbox_entry_whose_type_is_not_utf8_is_dead_lettered(redis_url, prefix):
    redis = aioredis.Redis.from_url(redis_url)
    try:
        fence = lease_holder(redis, Keys(prefix))
        inbox = ControlInbox(redis, Keys(prefix), "c", actions=None, fence=fence)  # type: ignore[arg-type]
        await inbox._contained("1-0", {b"type": b"\xffcontrol", b"data": b"{}"})
        [(_, letter)] = await redis.xrange(Keys(prefix).dead_letters)
        assert letter[b"reason"] == b"not_utf8" and not inbox.in_flight
    finally:
        await redis.aclose()


# --- SMTP answers ---------------------------------------------------------------------------------------------


def test_an_auth_challenge_that_is_not_base64_is_a_send_failure():
    """The server offers AUTH PLAIN and answers it with a 334 whose challenge is not base64."""
    replies = [b"220 hi\r\n", b"250-hi\r\n250 AUTH PLAIN\r\n", b"334 OK\r\n", b"221 bye\r\n"]
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as lines:
                conn.sendall(replies[0])
                for reply in replies[1:]:
                    if not lines.readline():
                        return
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        email = Email(smtp_port=listener.getsockname()[1], username="u", password="p", timeout_ms=2000)
        message = EmailMessage()
        message["From"], message["To"] = "a@localhost", "b@example.com"
        with pytest.raises(SendFailed):
            smtp.send(message, ["b@example.com"], email)


def test_a_response_done_whose_content_is_not_a_list_is_read():
    assert _message_text([{"type": "message", "content": -1}]) == ""
