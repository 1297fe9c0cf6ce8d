"""`/healthz`, `/readyz` and `/metrics` for every role.

healthz: the process is alive and its loop answers. readyz: it can do its job (checks named in the body,
503 when any fails). metrics: Prometheus text from the process's default registry.

They are served by shared/http_server.py (timeouts, a connection cap). The exposition is rendered in a thread,
at most once per METRICS_MAX_AGE_S whatever the number of scrapes: a flood of /metrics must not take the
event loop from the calls (in a media worker, the loop runs the playout clock).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from shared import loop_lag
from shared.http_server import HttpServer, Response

# Each check returns None when fine, or a short reason.
ReadyCheck = Callable[[], "str | None"]

METRICS_MAX_AGE_S = 0.5


class MetricsRenderer:
    """The Prometheus exposition, rendered off the loop and shared: the scrapes that come while a render runs
    wait for it, and those within `max_age_s` of the last one get it as it was (one render at a time, so the
    renders cost at most one thread's time, and no more than one per `max_age_s`)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, max_age_s: float = METRICS_MAX_AGE_S):
        self._registry = registry
        self._max_age_s = max_age_s
        self._rendered = b""
        self._rendered_at = float("-inf")
        self._rendering: asyncio.Task[bytes] | None = None
        self.renders = 0

    async def exposition(self) -> bytes:
        loop = asyncio.get_running_loop()
        if loop.time() - self._rendered_at < self._max_age_s:
            return self._rendered
        if self._rendering is None:
            self._rendering = loop.create_task(self._render(), name="metrics-render")
        # Shielded: a scrape whose client went away does not cancel the render the others wait for.
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        try:
            body = await asyncio.to_thread(generate_latest, self._registry)
            self._rendered, self._rendered_at = body, asyncio.get_running_loop().time()
            self.renders += 1
            return body
        finally:
            self._rendering = None


def _json(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body), content_type="application/json; charset=utf-8")


def make_server(
    role: str, instance_id: str, checks: dict[str, ReadyCheck], details: Callable[[], dict[str, str]] | None = None
) -> HttpServer:
    """`details`: more of the process's state for the /readyz body (a controller's leadership)."""
    renderer = MetricsRenderer()

    async def healthz() -> Response:
        return _json(200, {"status": "ok", "role": role, "id": instance_id})

    async def readyz() -> Response:
        failures = {name: reason for name, check in checks.items() if (reason := check()) is not None}
        body: dict[str, object] = {"ready": not failures, "role": role, "id": instance_id, "failing": failures}
        if details is not None:
            body.update(details())
        return _json(503 if failures else 200, body)

    async def metrics() -> Response:
        return Response(200, await renderer.exposition(), content_type=CONTENT_TYPE_LATEST)

    return HttpServer({"/healthz": healthz, "/readyz": readyz, "/metrics": metrics})


PORT_FILE_ENV = "VA_HEALTH_PORT_FILE"


async def start(server: HttpServer, host: str, port: int) -> int:
    """Serve on host:port; returns the bound port (port 0 picks a free one). Stop with `server.close()`."""
    bound = await server.start(host, port)
    port_file = os.environ.get(PORT_FILE_ENV)
    if port_file:  # whoever started us with port 0 learns the port here (no race for a port picked outside)
        await asyncio.to_thread(Path(port_file).write_text, str(bound))
    return bound


class ThreadedServer:
    """The same endpoints for a blocking process (the RQ tool worker), on a loop in a daemon thread (whose lag
    is the process's reported loop lag: the main thread is RQ's, with no loop)."""

    def __init__(self, server: HttpServer, host: str, port: int):
        self._server, self._host, self._port = server, host, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._serving = False

    def start(self) -> int:
        threading.Thread(target=self._run, name="health", daemon=True).start()
        self._ready.wait(10)
        if self.error:
            raise self.error
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.port = self.loop.run_until_complete(start(self._server, self._host, self._port))
            self._serving = True
        except BaseException as exc:  # reported to the starting thread
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        lag = self.loop.create_task(loop_lag.watch())
        self.loop.run_forever()
        lag.cancel()
        self.loop.run_until_complete(asyncio.gather(lag, return_exceptions=True))
        self.loop.close()

    def stop(self) -> None:
        if not self._serving:
            return  # never started, or stopped already
        self._serving = False
        asyncio.run_coroutine_threadsafe(self._server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
