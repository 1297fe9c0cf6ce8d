"""What a real Asterisk 22 does with two events WebSockets for one Stasis app: the situation of a controller that
was paused (SIGSTOP) while a standby took over and connected, and that then wakes up and exits.

Why it matters (docs/ARCHITECTURE.md, failure model): a standby never connects the app's WebSocket, so two
connections exist only in that split-brain window; the fence keeps the old leader from acting, and this test
shows what Asterisk itself delivers to whom meanwhile, and that the old connection closing does not take the
app away from the new leader."""

from __future__ import annotations

import asyncio
import json

import websockets

from controller.ari.events import events_url
from controller.ari.rest import basic_auth
from sim.real_asterisk import RealAsterisk
from tests.realpbx.pbx_harness import agents_dialplan  # noqa: F401  (fixture)

APP = "va-probe-two-connections"


class Socket:
    def __init__(self, ast: RealAsterisk):
        self.url = events_url(ast.ari_url, APP)
        self.headers = {"Authorization": basic_auth(ast.user, ast.password)}
        self.events: list[dict] = []
        self.ws: websockets.ClientConnection | None = None
        self.reader: asyncio.Task | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, proxy=None)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self.events.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass

    def seen(self, kind: str, channel: str) -> bool:
        return any(e["type"] == kind and e.get("channel", {}).get("id") == channel for e in self.events)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def _until(predicate, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_the_newer_connection_gets_the_events_and_the_older_closing_leaves_the_app_up(
    real_asterisk: RealAsterisk, agents_dialplan: str
):
    old, new = Socket(real_asterisk), Socket(real_asterisk)
    await old.open()
    await new.open()
    first = "va-probe-two-1"
    try:
        status, _ = await asyncio.to_thread(
            real_asterisk.ari,
            "POST",
            f"/channels/{first}?endpoint=Local/6001@{agents_dialplan}&app={APP}&timeout=10",
        )
        assert status == 200
        assert await _until(lambda: new.seen("StasisStart", first) or old.seen("StasisStart", first))
        await asyncio.sleep(0.5)  # anything the other socket would get comes within this
        delivered = {"old": old.seen("StasisStart", first), "new": new.seen("StasisStart", first)}
        print(f"two connections, StasisStart delivered to: {delivered}")
        # Asterisk 22.10.1: to the newest connection only (the app's handler is replaced; the older socket
        # stays open and hears nothing more)
        assert delivered == {"old": False, "new": True}

        await old.close()  # the deposed leader exits
        await asyncio.sleep(0.3)
        await asyncio.to_thread(real_asterisk.ari, "DELETE", f"/channels/{first}")
        assert await _until(lambda: new.seen("StasisEnd", first)), "the app stopped delivering to the new leader"

        second = "va-probe-two-2"
        status, _ = await asyncio.to_thread(
            real_asterisk.ari,
            "POST",
            f"/channels/{second}?endpoint=Local/6001@{agents_dialplan}&app={APP}&timeout=10",
        )
        assert status == 200
        assert await _until(lambda: new.seen("StasisStart", second)), "no StasisStart after the old socket closed"
        await asyncio.to_thread(real_asterisk.ari, "DELETE", f"/channels/{second}")
        assert await _until(lambda: new.seen("StasisEnd", second))
    finally:
        await old.close()
        await new.close()
