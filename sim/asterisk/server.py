"""`AsteriskSim`: the simulated Asterisk 22.10.1 as one object - its core (sim/asterisk/core.py: the PBX, the
dialplan, simulated callers) served on aiohttp: ARI REST and events, and the control API for out-of-process use."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from sim.asterisk.control import ControlApi
from sim.asterisk.core import AsteriskCore
from sim.asterisk.rest import AriRest, RestRecord
from sim.asterisk.websocket import EventsEndpoint

log = logging.getLogger("sim.asterisk")


class AsteriskSim(AsteriskCore):
    """A simulated Asterisk 22.10.1 served over HTTP: ARI REST under /ari, the events WebSocket at /ari/events,
    chan_websocket's /media/<connection id> and, with `control_api`, the control API under /sim. The other
    arguments are AsteriskCore's.

    Views: besides AsteriskCore's, rest_log (every ARI request, when `record`), url and ari_url.
    """

    def __init__(self, *args: Any, control_api: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rest = AriRest(self)
        self.events = EventsEndpoint(self)
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._control = ControlApi(self, self.events) if control_api else None

    # --- views -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ari_url(self) -> str:
        return self.url + "/ari"

    @property
    def rest_log(self) -> list[RestRecord]:
        return self.rest.log

    # --- lifecycle ---------------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("GET", "/ari/events", self._events_or_rest)
        app.router.add_route("*", "/ari/{tail:.*}", self.rest.handle)
        self.websocket_media.add_routes(app)
        if self._control is not None:
            self._control.add_routes(app)
        return app

    async def _events_or_rest(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.events.handle(request)
        return await self.rest.handle(request)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(
            # aiohttp waits 60 s by default for handlers still running at cleanup: a stuck one held a test's
            # teardown past its timeout. Asterisk does not wait for its ARI clients either.
            self.make_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = int(self._runner.addresses[0][1])
        log.info("Asterisk simulator %s listening on %s", self.version, self.url)

    async def stop(self) -> None:
        """Hang up everything, close media and sockets."""
        await self.pbx.shutdown()
        await self.events.drop_all(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.remove_workdir()

    async def drop_event_sockets(self, code: int = 1006) -> None:
        await self.events.drop_all(code)
