"""A small ARI application of the test tools' own (callers on a real Asterisk): an HTTP session with Basic auth,
its Stasis app's events WebSocket read by one task, and REST calls that raise with Asterisk's answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import aiohttp


class AriAppError(Exception):
    pass


class AriApp:
    """Async context manager; subclasses handle each event in `on_event` (called on the reader task)."""

    error = AriAppError

    def __init__(self, ari_url: str, user: str, password: str, app: str):
        self.ari_url = ari_url.rstrip("/")
        self.app = app
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self):
        self._http = aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=10))
        ws_url = self.ari_url.replace("http", "ws", 1) + f"/ari/events?app={self.app}"
        self._ws = await self._http.ws_connect(ws_url, heartbeat=10)
        self._reader = asyncio.create_task(self._read(), name=f"{self.app}-events")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.before_close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def before_close(self) -> None:
        """Hang up what the app made (subclasses)."""

    def on_event(self, event: dict) -> None:
        """One ARI event of the app (subclasses)."""

    async def request(self, method: str, path: str, params: dict | None = None, body: dict | None = None):
        assert self._http is not None
        async with self._http.request(method, self.ari_url + "/ari" + path, params=params, json=body) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise self.error(f"ARI {method} {path} -> {resp.status}: {text.strip()}")
            return json.loads(text) if text else None

    async def delete(self, path: str) -> None:
        """DELETE an object that may be gone already."""
        with contextlib.suppress(AriAppError, aiohttp.ClientError, asyncio.TimeoutError):
            await self.request("DELETE", path)

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.on_event(json.loads(message.data))
