"""A refused OpenAI key or an empty account: classified from plain events and statuses (sans-I/O), then the
client and the prewarm pool against real servers on loopback (the emulator, and a plain WebSocket server that
answers the handshake with an HTTP error)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import pytest
from websockets.asyncio.server import serve

from media_worker.realtime import failures
from media_worker.realtime.client import ClientSettings, Closed, Connection, RealtimeClient, RealtimeError
from media_worker.realtime.failures import Failure, FailureKind
from media_worker.realtime.key_health import Backoff, KeyHealth, KeyState
from media_worker.realtime.pool import SessionPool
from shared.config.ga_session import build_session
from shared.config.schema import OpenAIRealtime
from sim.realtime import Emulator, Reply, Script

KEY = "sk-test-right-key"
AUTH, QUOTA, RATE, SERVER, OTHER = (
    FailureKind.AUTH,
    FailureKind.QUOTA,
    FailureKind.RATE_LIMIT,
    FailureKind.SERVER,
    FailureKind.OTHER,
)


# --- classification, sans-I/O ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_type", "kind", "reason"),
    [
        ("invalid_api_key", "invalid_request_error", AUTH, "invalid_api_key"),  # what the API sends for a bad key
        ("account_deactivated", "invalid_request_error", AUTH, "account_deactivated"),
        (None, "authentication_error", AUTH, "authentication_error"),
        ("some_new_code", "authentication_error", AUTH, "authentication_error"),  # reasons stay a short list
        ("insufficient_quota", "insufficient_quota", QUOTA, "insufficient_quota"),
        ("billing_hard_limit_reached", "invalid_request_error", QUOTA, "billing_hard_limit_reached"),
        (None, "insufficient_quota", QUOTA, "insufficient_quota"),
        ("rate_limit_exceeded", "requests", RATE, "rate_limit_exceeded"),
        (None, "server_error", SERVER, "server_error"),
        ("beta_api_shape_disabled", "invalid_request_error", OTHER, "beta_api_shape_disabled"),
        (None, None, OTHER, "unknown"),
    ],
)
def test_error_events_are_classified(code, error_type, kind, reason):
    failure = failures.from_error(code, error_type, "the message")
    assert (failure.kind, failure.reason, failure.detail) == (kind, reason, "the message")


def _body(code: str | None, error_type: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": "m", "type": error_type, "code": code, "param": None}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (401, b"", AUTH, "http_401"),
        (401, _body("invalid_api_key"), AUTH, "invalid_api_key"),
        (403, b"<html>Forbidden</html>", AUTH, "http_403"),  # a key without Realtime access
        (429, _body("insufficient_quota", "insufficient_quota"), QUOTA, "insufficient_quota"),
        (429, _body("billing_hard_limit_reached"), QUOTA, "billing_hard_limit_reached"),
        (429, _body("rate_limit_exceeded", "requests"), RATE, "http_429"),
        (429, b"", RATE, "http_429"),
        (429, b"not json {", RATE, "http_429"),
        (429, b'{"error": "a string"}', RATE, "http_429"),
        (500, b"", SERVER, "http_500"),
        (503, b"", SERVER, "http_503"),
        (404, b"", OTHER, "http_404"),
    ],
)
def test_handshake_statuses_are_classified(status, body, kind, reason):
    failure = failures.from_status(status, body)
    assert (failure.kind, failure.reason) == (kind, reason)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (3000, "invalid_request_error.invalid_api_key", (AUTH, "invalid_api_key")),
        (3000, "", (AUTH, "close_3000")),
        (1008, "invalid_request_error.insufficient_quota", (QUOTA, "insufficient_quota")),
        (1011, "server_error", (SERVER, "server_error")),
        (1006, "", None),
        (4000, "invalid_request_error.beta_api_shape_disabled", None),
    ],
)
def test_closes_before_any_event_are_classified(code, reason, expected):
    failure = failures.from_close(code, reason)
    assert (None if failure is None else (failure.kind, failure.reason)) == expected


def test_the_advice_names_the_cause_and_the_fix():
    auth = failures.advice(Failure(AUTH, "invalid_api_key"))
    assert "rejected (invalid_api_key)" in auth and "OPENAI_API_KEY" in auth and "SIGHUP" in auth
    assert "billing" in failures.advice(Failure(QUOTA, "insufficient_quota"))
    assert "retrying" in failures.advice(Failure(RATE, "http_429"))


def test_backoff_is_exponential_capped_with_full_jitter():
    backoff = Backoff(1.0, 60.0, random.Random(1))
    waits = [backoff.next() for _ in range(12)]
    ceilings = [min(60.0, 2.0**n) for n in range(12)]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert max(waits[8:]) > 8  # it grows past the early ceilings...
    assert len(set(waits)) == len(waits)  # ...and is spread, not the ceilings themselves
    backoff.reset()
    assert backoff.next() <= 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_key_health_blocks_on_auth_and_quota_only_and_clears_on_success(caplog):
    clock = Clock()
    health = KeyHealth(base_s=1.0, cap_s=60.0, rng=random.Random(3), clock=clock)
    assert health.blocked() is None and health.failing() is None and health.state is KeyState.UNKNOWN
    health.failed(Failure(RATE, "http_429"), health.generation)
    health.failed(Failure(SERVER, "http_503"), health.generation)
    assert health.blocked() is None and health.failing() is None  # transient: no readiness change

    caplog.set_level(logging.DEBUG, "realtime.key")
    bad = Failure(AUTH, "invalid_api_key", "Incorrect API key provided: sk-wr****")
    for _ in range(5):
        clock.now = health.retry_at  # each retry as soon as allowed
        health.failed(bad, health.generation)
    assert health.state is KeyState.REJECTED and health.blocked() == bad
    assert "OPENAI_API_KEY" in (health.failing() or "")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "rejected (invalid_api_key)" in errors[0].getMessage()  # one line per streak

    health.failed(Failure(QUOTA, "insufficient_quota"), health.generation)  # the cause changed: said again
    assert health.state is KeyState.NO_QUOTA
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2

    clock.now = health.retry_at
    assert health.blocked() is None  # the backoff is over: one open may probe
    health.succeeded(health.generation)
    assert health.state is KeyState.ACCEPTED and health.failing() is None and health.failed_attempts == 0


def test_a_rotation_retries_at_once_but_stays_not_ready_until_an_open_succeeds():
    clock = Clock()
    health = KeyHealth(rng=random.Random(5), clock=clock)
    old = health.generation
    for _ in range(6):
        clock.now = health.retry_at
        health.failed(Failure(AUTH, "invalid_api_key"), old)
    health.rotated()
    assert health.blocked() is None and health.failing() is not None
    health.failed(Failure(AUTH, "invalid_api_key"), old)  # an open with the old key, finishing late
    assert health.blocked() is None
    health.succeeded(old)  # nor does a late success with the old key say the new one works
    assert health.failing() is not None
    health.succeeded(health.generation)
    assert health.failing() is None


# --- the client and the pool against real servers -------------------------------------------------------------


@pytest.fixture
async def emulator():
    emu = Emulator(script=Script(), api_keys={KEY}, seed=3, speed=0)
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.stop()


def session_config() -> dict:
    return build_session(OpenAIRealtime(), instructions="You are a test agent.", tools=[])


def settings(url: str, key: str) -> ClientSettings:
    return ClientSettings(url=url, model="gpt-realtime", api_key=key)


async def test_an_error_event_instead_of_session_created_is_a_failed_open_not_a_connection(emulator):
    with pytest.raises(RealtimeError) as raised:
        await Connection.open(settings(emulator.url, "sk-wrong-key-1234"))
    assert raised.value.failure == Failure(AUTH, "invalid_api_key", raised.value.failure.detail)
    assert "sk-wrong-key-1234" not in str(raised.value)  # the server masks the key; nothing of ours adds it


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (401, _body("invalid_api_key"), AUTH, "invalid_api_key"),
        (403, b"Forbidden", AUTH, "http_403"),
        (429, _body("insufficient_quota", "insufficient_quota"), QUOTA, "insufficient_quota"),
        (429, _body("rate_limit_exceeded", "requests"), RATE, "http_429"),
    ],
)
async def test_an_http_error_at_the_handshake_is_classified(status, body, kind, reason):
    def refuse(connection, request):
        return connection.respond(status, body.decode())

    async def never(ws):  # pragma: no cover - the handshake is refused
        await ws.close()

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(RealtimeError) as raised:
            await Connection.open(settings(f"ws://127.0.0.1:{port}/v1/realtime", KEY))
    assert raised.value.failure is not None
    assert (raised.value.failure.kind, raised.value.failure.reason) == (kind, reason)


@pytest.mark.slow  # measured 2.0 s
async def test_the_pool_backs_off_on_a_refused_key_and_recovers_on_rotation(emulator):
    pool = SessionPool(settings(emulator.url, "sk-wrong-key-1234"), size=2)
    pool.start()
    try:
        async with asyncio.timeout(5):
            while pool.key_health.failing() is None:
                await asyncio.sleep(0.01)
        first = len(emulator.sessions)
        await asyncio.sleep(2.0)
        # Backoff from 1 s with full jitter: at most a handful of opens in 2 s (without it: about 2000).
        assert len(emulator.sessions) - first <= 4, len(emulator.sessions) - first
        assert pool.ready == 0

        pool.use_settings(settings(emulator.url, KEY))
        async with asyncio.timeout(5):
            while pool.ready < 2:
                await asyncio.sleep(0.01)
        assert pool.key_health.failing() is None and pool.key_health.state is KeyState.ACCEPTED
    finally:
        await pool.stop()


async def test_a_call_while_the_key_is_refused_is_answered_at_once_without_an_open(emulator):
    # Seeded so that the first backoff is long (uniform in [0, 60 s]): the second take falls inside it.
    health = KeyHealth(base_s=60.0, cap_s=60.0, rng=random.Random(2))
    pool = SessionPool(settings(emulator.url, "sk-wrong-key-1234"), size=0, key_health=health)
    with pytest.raises(RealtimeError, match="invalid_api_key"):
        await pool.take()  # the first open finds out
    assert health.retry_at - time.monotonic() > 5
    opened = len(emulator.sessions)
    with pytest.raises(RealtimeError, match=r"no Realtime session: the OpenAI key is rejected \(invalid_api_key\)"):
        await pool.take()
    assert len(emulator.sessions) == opened
    pool.use_settings(settings(emulator.url, KEY))  # rotated: the next take tries the new key at once
    conn = await pool.take()
    assert health.failing() is None
    await conn.close()
    await pool.stop()


async def test_a_rotation_drops_the_idle_connections_of_the_old_key(emulator):
    emulator.api_keys = {KEY, "sk-next-key-5678"}
    pool = SessionPool(settings(emulator.url, KEY), size=2)
    pool.start()
    try:
        async with asyncio.timeout(5):
            while pool.ready < 2:
                await asyncio.sleep(0.01)
        old = list(emulator.sessions)
        pool.use_settings(settings(emulator.url, "sk-next-key-5678"))
        async with asyncio.timeout(5):
            while pool.ready < 2 or not all(s.closed for s in old):
                await asyncio.sleep(0.01)
        fresh = [s for s in emulator.sessions if s not in old and not s.closed]
        assert len(fresh) == 2 and all(s.headers["authorization"] == "Bearer sk-next-key-5678" for s in fresh)
        conn = await pool.take()
        assert conn.ws.request is not None
        assert conn.ws.request.headers["Authorization"] == "Bearer sk-next-key-5678"
        await conn.close()
    finally:
        await pool.stop()


async def test_quota_running_out_mid_call_blocks_the_key_for_the_next_calls():
    quota = {"type": "insufficient_quota", "code": "insufficient_quota", "message": "You exceeded your current quota."}
    emu = Emulator(script=Script(default=Reply(text="Hi.", server_error=quota)), api_keys={KEY}, seed=3, speed=0)
    await emu.start("127.0.0.1", 0)
    pool = SessionPool(settings(emu.url, KEY), size=0, key_health=KeyHealth(rng=random.Random(4)))
    client = RealtimeClient(
        settings(emu.url, KEY), session_config(), connection_source=pool.take, on_key_failure=pool.key_failed
    )
    try:
        await client.start()
        assert pool.key_health.state is KeyState.ACCEPTED
        client.create_response()
        async with asyncio.timeout(5):
            while not isinstance(closed := await client.events.get(), Closed):
                pass
        assert "insufficient_quota" in closed.reason
        assert pool.key_health.state is KeyState.NO_QUOTA
        assert "no quota left (insufficient_quota)" in (pool.key_health.failing() or "")
    finally:
        await client.close()
        await pool.stop()
        await emu.stop()
