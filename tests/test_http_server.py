"""The health/metrics HTTP server's bounds: a request head that does not come in time, too many connections,
an answer nobody reads, malformed requests, and a /metrics flood (one render shared by the scrapes)."""

from __future__ import annotations

import asyncio
import io
import logging
import select
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from shared import http_server, logs
from shared.health import MetricsRenderer, make_server
from shared.http_server import HEAD_TIMEOUT_S, BadRequest, HeadReader, HttpServer, Request, Response
from shared.metrics import HTTP_DROPPED
from sim.cluster import http_get
from tests.conftest import wait_for


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await connect(port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before it closed; fails when it is still open after `timeout`."""
    return await asyncio.wait_for(reader.read(), timeout)


def dropped(reason: str) -> float:
    return HTTP_DROPPED.labels(reason)._value.get()


# --- the request head, sans-I/O -------------------------------------------------------------------------------


def test_head_reader_takes_a_head_byte_by_byte_and_ignores_the_query():
    reader = HeadReader()
    raw = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    results = [reader.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert results[:-1] == [None] * (len(raw) - 1)
    assert results[-1] == Request("GET", "/metrics")
    assert HeadReader().feed(b"HEAD /readyz HTTP/1.0\n\n") == Request("HEAD", "/readyz")  # bare LF, as nc sends


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET readyz HTTP/1.1\r\n\r\n", 400),
        (b"get /readyz HTTP/1.1\r\n\r\n", 400),
        (b"GET /readyz HTTP/2\r\n\r\n", 505),
        (b"GET /readyz HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET /r\xe9 HTTP/1.1\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\nX: " + b"a" * 9000, 431),  # no end in sight: refused as soon as too long
    ],
)
def test_head_reader_refuses_malformed_heads(raw, status):
    with pytest.raises(BadRequest) as caught:
        HeadReader().feed(raw)
    assert caught.value.status == status


# --- the server -------------------------------------------------------------------------------------------------


@pytest.fixture
async def server():
    started: list[HttpServer] = []

    async def start(routes=None, **limits) -> HttpServer:
        srv = HttpServer(routes or {"/readyz": ok}, **limits)
        await srv.start("127.0.0.1", 0)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.close()


async def ok() -> Response:
    return Response.text(200, "ok")


async def test_a_slowloris_client_is_closed_when_its_head_is_late(server):
    srv = await server(head_timeout_s=0.3)
    before = dropped("head_timeout")
    reader, writer = await connect(srv.port)
    writer.write(b"GET /rea")
    for piece in (b"d", b"y", b"z"):  # trickled: each byte would renew an idle timeout, not this deadline
        await asyncio.sleep(0.1)
        writer.write(piece)
    assert await closed_within(reader, 2) == b""
    assert dropped("head_timeout") == before + 1
    writer.close()


async def test_partial_connections_do_not_keep_out_a_proper_request(server):
    srv = await server(max_connections=8, head_timeout_s=30)
    before = dropped("evicted")
    partial = [await connect(srv.port) for _ in range(20)]  # more than the cap, none ever finishes its head
    for _, writer in partial:
        writer.write(b"GET /readyz HTTP/1.1\r\nHo")
    assert await asyncio.wait_for(get(srv.port, "/readyz"), 2) == (200, b"ok\n")
    assert dropped("evicted") >= before + 13  # the oldest made room, as each new one came
    for _, writer in partial:
        writer.close()


async def test_over_the_cap_with_every_connection_answering_the_new_one_is_refused_at_once(server):
    release = asyncio.Event()

    async def slow() -> Response:
        await release.wait()
        return Response.text(200, "slow")

    srv = await server({"/slow": slow, "/readyz": ok}, max_connections=3)
    busy = [asyncio.create_task(get(srv.port, "/slow")) for _ in range(3)]
    await asyncio.sleep(0.2)  # all three have sent their request and wait for the answer
    assert await asyncio.wait_for(get(srv.port, "/readyz"), 2) == (503, b"too many connections\n")
    release.set()
    assert [await t for t in busy] == [(200, b"slow\n")] * 3
    assert await get(srv.port, "/readyz") == (200, b"ok\n")  # room again


async def test_an_answer_that_does_not_come_in_time_closes_the_connection(server):
    async def never() -> Response:
        await asyncio.Event().wait()
        raise AssertionError

    srv = await server({"/never": never}, response_timeout_s=0.3)
    reader, writer = await connect(srv.port)
    writer.write(b"GET /never HTTP/1.1\r\n\r\n")
    assert await closed_within(reader, 2) == b""
    writer.close()


async def test_paths_methods_and_bad_requests_get_their_status(server):
    srv = await server()
    assert await get(srv.port, "/nope") == (404, b"no such path: /nope\n")
    assert await get(srv.port, "/readyz", "POST") == (405, b"")
    assert await get(srv.port, "/readyz", "HEAD") == (200, b"")
    reader, writer = await connect(srv.port)
    writer.write(b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n")  # a TLS hello, say
    assert (await closed_within(reader, 2)).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    writer.close()


async def test_a_flood_of_bad_requests_logs_one_warning_and_counts_them_all(server, monkeypatch):
    monkeypatch.setattr(http_server, "_dropped", logs.LogThrottle(interval_s=60))  # none logged yet
    logs.setup_logging("controller", "info", "console")
    stream = io.StringIO()
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers[0].setStream(stream)
    try:
        srv = await server()
        before = dropped("bad_request")
        for _ in range(20):
            reader, writer = await connect(srv.port)
            writer.write(b"NOT HTTP\r\n\r\n")
            await closed_within(reader, 2)
            writer.close()
    finally:
        root.handlers[:] = handlers
    assert dropped("bad_request") == before + 20
    assert stream.getvalue().count("dropped: malformed request line") == 1  # one a minute, whatever the flood


# --- /metrics -------------------------------------------------------------------------------------------------


async def test_concurrent_scrapes_share_one_render_off_the_loop():
    registry = CollectorRegistry()
    hits = Counter("va_test_hits", "test", registry=registry)
    hits.inc()
    renderer = MetricsRenderer(registry, max_age_s=60)
    bodies = await asyncio.gather(*(renderer.exposition() for _ in range(50)))
    assert renderer.renders == 1 and len(set(bodies)) == 1 and b"va_test_hits_total 1.0" in bodies[0]
    hits.inc()
    assert await renderer.exposition() == bodies[0]  # within max_age: as it was

    fresh = MetricsRenderer(registry, max_age_s=0)
    assert b"va_test_hits_total 2.0" in await fresh.exposition()


async def test_the_roles_endpoints_on_the_server():
    srv = make_server("controller", "c-1", {"redis": lambda: "Redis is unreachable"})
    await srv.start("127.0.0.1", 0)
    try:
        assert await get(srv.port, "/healthz") == (200, b'{"status":"ok","role":"controller","id":"c-1"}')
        status, body = await get(srv.port, "/readyz")
        assert status == 503 and b'"failing":{"redis":"Redis is unreachable"}' in body
        status, body = await get(srv.port, "/metrics")
        assert status == 200 and b"# TYPE" in body
    finally:
        await srv.close()


# --- every role, as a process ----------------------------------------------------------------------------------


@pytest.mark.slow  # about HEAD_TIMEOUT_S: the roles' own bound
def test_each_role_closes_a_slowloris_client_within_the_head_timeout(cluster):
    procs = [cluster.start(role) for role in ("controller", "media-worker", "tool-worker")]
    assert cluster.wait_ready(timeout=30), [p.log_text() for p in cluster.processes]
    still_open: dict[socket.socket, str] = {}
    for proc in procs:
        host, port = proc.health_url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"GET /readyz HTTP/1.1\r\nX-Slow: ")  # half a request, then a byte a second
        still_open[sock] = proc.role
    deadline = time.monotonic() + HEAD_TIMEOUT_S + 3
    try:
        trickle_until_closed(still_open, deadline)
    finally:
        for sock in still_open:
            sock.close()
    assert not still_open, f"{sorted(still_open.values())} kept a trickled request open past {HEAD_TIMEOUT_S + 3} s"
    for proc in procs:  # and each still answers
        wait_for(lambda p=proc: http_get(p.health_url + "/readyz")[0] == 200, timeout=5)


def trickle_until_closed(still_open: dict[socket.socket, str], deadline: float) -> None:
    """One more byte a second to each socket; a socket the server closes leaves `still_open`."""
    while still_open and time.monotonic() < deadline:
        for sock in list(still_open):
            try:
                sock.sendall(b"x")
            except OSError:  # closed by the server
                del still_open[sock]
                sock.close()
        readable, _, _ = select.select(list(still_open), [], [], 1.0)
        for sock in readable:
            try:
                data = sock.recv(100)
            except OSError:  # reset by the server
                data = b""
            assert data == b"", still_open[sock]  # nothing answered: just closed
            del still_open[sock]
            sock.close()
