"""A test's own Stasis app on a real Asterisk: the ARI events WebSocket, read in the background, and waits for
events by type and fields."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import websockets

from sim.real_asterisk import RealAsterisk


class AriEvents:
    def __init__(self, ast: RealAsterisk, app: str):
        self.ast, self.app = ast, app
        self.events: list[dict] = []
        self._changed = asyncio.Condition()
        self._ws = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> AriEvents:
        query = urllib.parse.urlencode({"app": self.app, "api_key": f"{self.ast.user}:{self.ast.password}"})
        url = self.ast.ari_url.replace("http", "ws", 1) + f"/ari/events?{query}"
        self._ws = await asyncio.wait_for(websockets.connect(url), 5)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        await self._ws.close()
        self._reader.cancel()

    async def _read(self) -> None:
        async for message in self._ws:
            async with self._changed:
                self.events.append(json.loads(message))
                self._changed.notify_all()

    async def wait(self, type_: str, timeout: float = 5.0, **fields) -> dict:
        """The first event of `type_` whose fields match (`channel__id="x"` is event["channel"]["id"] == "x")."""

        def match() -> dict | None:
            return next(
                (
                    e
                    for e in self.events
                    if e["type"] == type_ and all(_get(e, key.split("__")) == value for key, value in fields.items())
                ),
                None,
            )

        async with self._changed:
            try:
                return await asyncio.wait_for(self._changed.wait_for(match), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"no {type_} {fields} within {timeout}s on app {self.app}; got {[e['type'] for e in self.events]}"
                ) from None


def _get(event: dict, path: list[str]):
    for key in path:
        event = event.get(key) if isinstance(event, dict) else None
    return event
