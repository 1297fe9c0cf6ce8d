"""The emulator's WebSocket server: the GA endpoint, its authentication and the beta-shape rejection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from sim.realtime.ids import Ids
from sim.realtime.script import Script
from sim.realtime.session import EmulatedSession
from sim.realtime.wirelog import WireLog

PATH = "/v1/realtime"


class Emulator:
    def __init__(self, script: Script | None = None, api_keys: set[str] | None = None, seed: int = 0,
                 speed: float = 3.0, first_audio_delay_ms: int = 0, max_session_s: float = 3600.0,
                 wire_log: str | Path | None = None, truncate_shortfall_ms: float = 0, error_delay_ms: int = 0,
                 auto_respond_after_tool_output: bool = False, clock: Callable[[], float] | None = None,
                 record: bool = True):
        self.script = script or Script()
        self.api_keys = api_keys
        self.seed = seed
        self.ids = Ids(seed)
        self.speed = speed
        self.first_audio_delay_ms = first_audio_delay_ms
        self.max_session_s = max_session_s
        self.truncate_shortfall_ms = truncate_shortfall_ms
        self.error_delay_ms = error_delay_ms
        self.auto_respond_after_tool_output = auto_respond_after_tool_output
        self.clock = clock or time.monotonic
        self.record = record  # keep every event in memory for assertions (off for long load runs)
        self.wire = WireLog(wire_log)
        self.sessions: list[EmulatedSession] = []
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(self._handle, host, port, process_request=self._check_path, compression=None,
                                   max_size=16 * 1024 * 1024 + 1024, ping_interval=20, ping_timeout=20)
        self.port = self._server.sockets[0].getsockname()[1]  # type: ignore[index]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.wire.close()

    async def close_all(self, code: int = 1011, reason: str = "") -> None:
        await asyncio.gather(*(s.close(code, reason) for s in self.sessions if not s.closed),
                             return_exceptions=True)

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path.rstrip("/") != PATH:
            return connection.respond(404, f"Not found: {urlsplit(request.path).path}\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        query = dict(parse_qsl(urlsplit(request.path).query))
        session = EmulatedSession(self, ws, headers, query)
        self.sessions.append(session)
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key or (self.api_keys is not None and key not in self.api_keys):
            await self._reject(session, "invalid_api_key", "Incorrect API key provided.", 3000)
            return
        if headers.get("openai-beta", "").startswith("realtime"):
            await self._reject(session, "beta_api_shape_disabled", "The Realtime Beta API is no longer supported. "
                               "Please use /v1/realtime for the GA API.", 4000)
            return
        await session.run()

    @staticmethod
    async def _reject(session: EmulatedSession, code: str, message: str, close_code: int) -> None:
        await session.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                       "message": message, "param": None, "event_id": None}})
        session.closed = True
        session.close_code = close_code
        await session.ws.close(close_code, f"invalid_request_error.{code}")


