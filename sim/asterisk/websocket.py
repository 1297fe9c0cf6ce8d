"""The events WebSocket: `GET /ari/events?app=a[&app=b|app=a,b][&subscribeAll=true]` (no subprotocol needed).

Connecting registers (or re-activates) the named apps; closing applies the destroy-when-owning-nothing rule
of trace 07. Events for channels already in Stasis flow again after a reconnect, with no replayed StasisStart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from aiohttp import WSMsgType, web

from sim.asterisk.apps import EventSocket
from sim.asterisk.core import AsteriskCore
from sim.asterisk.rest import authenticate


DETACH_WAIT_S = 1.0
CLOSE_WAIT_S = 2.0  # a close frame's answer, before the connection is cut


class EventsEndpoint:
    def __init__(self, sim: AsteriskCore):
        self.sim = sim
        self.transports: dict[EventSocket, asyncio.Transport] = {}
        self.detached: dict[EventSocket, asyncio.Event] = {}  # set once its handler has detached it

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if authenticate(request, self.sim.users) is None:
            return web.json_response(
                {"message": "Authentication required"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'},
            )
        apps: list[str] = []
        for value in request.query.getall("app", []):
            apps.extend(a.strip() for a in value.split(",") if a.strip())
        if not apps:
            return web.json_response({"message": "Missing param app"}, status=400)
        subscribe_all = request.query.get("subscribeAll", "").lower() in ("true", "yes", "1")
        ws = web.WebSocketResponse(protocols=("ari",), autoping=True)
        await ws.prepare(request)
        sock = EventSocket(ws, list(dict.fromkeys(apps)), subscribe_all)
        if request.transport is not None:
            self.transports[sock] = request.transport
        detached = self.detached[sock] = asyncio.Event()
        self.sim.apps.attach(sock)
        writer = asyncio.get_running_loop().create_task(sock.writer(), name="ari-events-writer")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._ignore_request(msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.transports.pop(sock, None)
            self.sim.apps.detach(sock)
            self.detached.pop(sock, None)
            detached.set()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        return ws

    @staticmethod
    def _ignore_request(text: str) -> None:
        # REST over WebSocket (RESTRequest) is not simulated; Asterisk ignores other text frames too
        with contextlib.suppress(ValueError):
            json.loads(text)

    async def drop_all(self, code: int = 1006) -> None:
        """Close every events socket: 1006 = abruptly (TCP reset, no close frame), else a close frame."""
        waits = [asyncio.ensure_future(e.wait()) for e in self.detached.values()]
        try:
            for sock in list(self.sim.apps.sockets):
                transport = self.transports.get(sock)
                if code == 1006 and transport is not None:
                    transport.abort()
                else:
                    try:
                        # aiohttp's close() waits, with no bound, for the socket's reader to take the close: a
                        # handler that is not reading held a test's teardown until its 120 s timeout.
                        async with asyncio.timeout(CLOSE_WAIT_S):
                            await sock.ws.close(code=code)
                    except Exception:
                        if transport is not None:
                            transport.abort()
            if waits:  # the handlers notice and detach their sockets
                await asyncio.wait(waits, timeout=DETACH_WAIT_S)
        finally:
            for w in waits:
                w.cancel()
