"""`/healthz`, `/readyz` and `/metrics` for every role.

healthz: the process is alive and its loop answers. readyz: it can do its job (checks named in the body,
503 when any fails). metrics: Prometheus text from the process's default registry.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from shared import loop_lag

# Each check returns None when fine, or a short reason.
ReadyCheck = Callable[[], "str | None"]


def make_app(role: str, instance_id: str, checks: dict[str, ReadyCheck]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": role, "id": instance_id})

    async def readyz(_: web.Request) -> web.Response:
        failures = {name: reason for name, check in checks.items() if (reason := check()) is not None}
        body = {"ready": not failures, "role": role, "id": instance_id, "failing": failures}
        return web.json_response(body, status=503 if failures else 200, dumps=lambda o: msgspec.json.encode(o).decode())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


PORT_FILE_ENV = "VA_HEALTH_PORT_FILE"


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner and the bound port (port 0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    port_file = os.environ.get(PORT_FILE_ENV)
    if port_file:  # whoever started us with port 0 learns the port here (no race for a port picked outside)
        await asyncio.to_thread(Path(port_file).write_text, str(bound))
    return runner, bound


class ThreadedServer:
    """The same endpoints for a blocking process (the RQ tool worker), on a loop in a daemon thread (whose lag
    is the process's reported loop lag: the main thread is RQ's, with no loop)."""

    def __init__(self, app: web.Application, host: str, port: int):
        self._app, self._host, self._port = app, host, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> int:
        threading.Thread(target=self._run, name="health", daemon=True).start()
        self._ready.wait(10)
        if self.error:
            raise self.error
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._runner, self.port = self.loop.run_until_complete(start(self._app, self._host, self._port))
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
        runner, self._runner = self._runner, None
        if runner is None:
            return  # never started, or stopped already
        asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
