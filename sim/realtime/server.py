"""The emulator's WebSocket server: the GA endpoint, its authentication and the beta-shape rejection.

emu = Emulator(script=Script(...))
await emu.start()                  # ws://127.0.0.1:PORT/v1/realtime
... clients connect to emu.url + "?model=gpt-realtime" (the SDK: websocket_base_url=emu.base_url) ...
await emu.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from sim.realtime import models, voice
from sim.realtime.script import Script
from sim.realtime.session import EmulatedSession
from sim.realtime.wirelog import WireLog

log = logging.getLogger("sim.realtime")

PATH = "/v1/realtime"
BETA_MESSAGE = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
DEFAULT_RATE_LIMITS = {"placement": "done", "requests": 5000, "tokens": 40000}
_AUDIO_CACHE_SIZE = 512


class Emulator:
    def __init__(
        self,
        script: Script | None = None,
        api_keys: set[str] | None = None,
        seed: int = 0,
        speed: float = 3.0,
        first_audio_delay_ms: int = 0,
        session_created_delay_ms: int = 0,
        max_session_s: float = 3600.0,
        wire_log: str | Path | None = None,
        truncate_shortfall_ms: float = 0,
        error_delay_ms: int = 0,
        auto_respond_after_tool_output: bool = False,
        clock: Callable[[], float] | None = None,
        jitter_ms: float = 0.0,
        rate_limits: dict[str, Any] | None = None,
        record: bool = True,
        keep_closed: bool = True,
    ):
        """
        script: the replies (see `Script`). api_keys: accepted Bearer keys (None: any non-empty one).
        seed: ids, chunk sizes, splits and jitter. speed: audio pace, N× real time (0: burst).
        first_audio_delay_ms: wait before a response's first delta. session_created_delay_ms: wait before a
        new connection's `session.created` (the real service takes a few hundred ms).
        max_session_s: then session_expired + 1001.
        wire_log: JSONL path. truncate_shortfall_ms: the server thinks emitted audio is this much shorter.
        error_delay_ms: errors arrive this much later. auto_respond_after_tool_output: respond to
        function_call_output unasked (the pipecat #3960 race). clock: seconds, for the wire log and expiry.
        jitter_ms: extra random delay per audio chunk (paced mode). rate_limits: {"placement": "done" |
        "created" | "none", "requests": N, "tokens": N}. record: keep every event in `EmulatedSession.sent`
        and `.received` (turn off for long load runs: audio deltas add up). keep_closed: closed sessions stay in
        `sessions` (a long-running process turns it off: each keeps its conversation's audio).
        """
        self.script = script or Script()
        self.api_keys = api_keys
        self.seed = seed
        self.speed = speed
        self.first_audio_delay_ms = first_audio_delay_ms
        self.session_created_delay_ms = session_created_delay_ms
        self.max_session_s = max_session_s
        self.truncate_shortfall_ms = truncate_shortfall_ms
        self.error_delay_ms = error_delay_ms
        self.auto_respond_after_tool_output = auto_respond_after_tool_output
        self.clock = clock or time.monotonic
        self.jitter_ms = jitter_ms
        self.rate_limits = {**DEFAULT_RATE_LIMITS, **(rate_limits or {})}
        self.record = record
        self.keep_closed = keep_closed
        self.wire = WireLog(wire_log, self.clock)
        self.sessions: list[EmulatedSession] = []  # every session, or only the open ones without keep_closed
        self._opened = 0  # sessions accepted so far: each one's index (its ids' seed)
        self.host = "127.0.0.1"
        self.port = 0
        self._server: Server | None = None
        self._audio: OrderedDict[tuple, asyncio.Task] = OrderedDict()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{PATH}"

    @property
    def base_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # Frames up to 32 MiB: a 15 MiB append is 20 MiB of base64, and must get the emulator's own error.
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_path,
            compression=None,
            max_size=32 * 1024 * 1024,
            ping_interval=20,
            ping_timeout=20,
        )
        self.host = host
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        log.info("Realtime emulator listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.wire.close()

    # --- fault hooks for every open session --------------------------------------------------------------
    def open_sessions(self) -> list[EmulatedSession]:
        return [s for s in self.sessions if not s.closed]

    async def close_all(self, code: int = 1011, reason: str = "") -> None:
        await asyncio.gather(*(s.close(code, reason) for s in self.open_sessions()), return_exceptions=True)

    async def drop_all(self) -> None:
        for s in self.open_sessions():
            await s.drop()

    def stall_all(self, seconds: float) -> None:
        for s in self.open_sessions():
            s.stall(seconds)

    # --- agent audio, shared by all sessions --------------------------------------------------------------
    async def speech(self, text: str, ms: int, fmt: str, voice_name: str) -> bytes:
        """Synthesized speech, once per distinct request (concurrent sessions share it), off the loop."""
        key = (text, ms, fmt, voice_name)
        task = self._audio.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(voice.render, text, ms, fmt, voice_name, self.seed))
            task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or self._audio.pop(key, None))
            self._audio[key] = task
            if len(self._audio) > _AUDIO_CACHE_SIZE:
                self._audio.popitem(last=False)
        else:
            self._audio.move_to_end(key)
        return await asyncio.shield(task)

    async def convert(self, pcm: bytes, fmt: str) -> bytes:
        return pcm[: len(pcm) // 2 * 2] if fmt == "audio/pcm" else await asyncio.to_thread(voice.from_pcm24, pcm, fmt)

    # --- connections -------------------------------------------------------------------------------------
    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path.rstrip("/")
        if path == models.PATH:
            return self._models(connection, request)
        if path != PATH:
            return connection.respond(404, f"Not found: {path}\n")
        return None

    def _models(self, connection: ServerConnection, request: Request) -> Response:
        """The REST model listing, with the same key rule as the WebSocket (plain HTTP, not an upgrade)."""
        refused = self._key_refusal(request.headers.get("Authorization", ""))
        if refused is None:
            status, body = 200, models.listing()
        else:
            code, message = refused
            # OpenAI's REST error has no code when the key is missing (the WebSocket's error event has one).
            status, body = 401, models.error(message, code if message != NO_KEY_MESSAGE else None)
        response = connection.respond(status, body)
        response.headers["Content-Type"] = "application/json"
        return response

    def _key_refusal(self, authorization: str) -> tuple[str, str] | None:
        """(code, message) when the Bearer key is missing or not accepted; None when it is."""
        key = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if not key:
            return "invalid_api_key", NO_KEY_MESSAGE
        if self.api_keys is not None and key not in self.api_keys:
            message = (
                f"Incorrect API key provided: {_mask(key)}. You can find "
                "your API key at https://platform.openai.com/account/api-keys."
            )
            return "invalid_api_key", message
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        headers: dict[str, str] = {}
        for name, value in request.headers.raw_items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        query = dict(parse_qsl(urlsplit(request.path).query))
        session = EmulatedSession(self, ws, headers, query, self._opened)
        self._opened += 1
        self.sessions.append(session)
        try:
            await self._serve(session, headers)
        finally:
            if not self.keep_closed:
                self.sessions.remove(session)

    async def _serve(self, session: EmulatedSession, headers: dict[str, str]) -> None:
        refused = self._key_refusal(headers.get("authorization", ""))
        if refused is not None:
            await self._reject(session, *refused, 3000)
        elif headers.get("openai-beta", "").replace(" ", "").startswith("realtime"):
            await self._reject(session, "beta_api_shape_disabled", BETA_MESSAGE, 4000)
        else:
            await session.run()

    @staticmethod
    async def _reject(session: EmulatedSession, code: str, message: str, close_code: int) -> None:
        """What production does: an `error` event, then a close whose reason is `type.code`."""
        try:
            await session.send(
                "error",
                error={
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": None,
                },
            )
        finally:
            session.closed = True
            session.close_code = close_code
        await session.ws.close(close_code, f"invalid_request_error.{code}")


def _mask(key: str) -> str:
    return key[:3] + "*" * max(4, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)
