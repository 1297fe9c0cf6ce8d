"""Stasis applications and event delivery.

An app exists while an events WebSocket names it; when its last socket closes it stays registered but
inactive only while it still owns channels, and is destroyed once it owns nothing (trace 07). Delivery rules
without subscribeAll: an app gets the events of channels it is subscribed to (while in its Stasis, or from
creation for channels ARI created for it) and of bridges it holds a reference on; a reference is taken when
one of its channels enters the bridge and dropped when that channel leaves by removeChannel, a move, continue
or the bridge's destruction - but not when it leaves by hanging up, which is why BridgeDestroyed reaches the
app only when the last channel hung up inside the bridge (trace 08). With subscribeAll it gets everything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Iterable

from sim.asterisk.state import Bridge, Channel

log = logging.getLogger("sim.asterisk")


class EventSocket:
    """One /ari/events WebSocket: an ordered outbox drained by a single writer task."""

    def __init__(self, ws, apps: list[str], subscribe_all: bool):
        self.ws = ws
        self.apps = apps
        self.subscribe_all = subscribe_all
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False
        self.sent = 0

    def send(self, text: str) -> None:
        if not self.closed:
            self.queue.put_nowait(text)

    async def writer(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None or self.closed:
                return
            try:
                await self.ws.send_str(text)
                self.sent += 1
            except (ConnectionError, RuntimeError):
                self.closed = True
                return


class StasisApp:
    def __init__(self, name: str):
        self.name = name
        self.sockets: list[EventSocket] = []
        self.subscribe_all = False
        self.channels: dict[str, Channel] = {}  # subscribed channels (channel_ids)
        self.bridge_refs: dict[str, int] = defaultdict(int)
        self.events_allowed: list[dict] = []
        self.events_disallowed: list[dict] = []
        self.missed = 0

    @property
    def active(self) -> bool:
        return bool(self.sockets)

    def owns_nothing(self) -> bool:
        return not self.channels

    def wants(self, event_type: str) -> bool:
        if self.events_allowed and not any(f.get("type") == event_type for f in self.events_allowed):
            return False
        return not any(f.get("type") == event_type for f in self.events_disallowed)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "channel_ids": list(self.channels),
            "bridge_ids": [b for b, n in self.bridge_refs.items() if n > 0],
            "endpoint_ids": [],
            "device_names": [],
            "events_allowed": list(self.events_allowed),
            "events_disallowed": list(self.events_disallowed),
        }


class AppRegistry:
    def __init__(self, asterisk_id: str, record: bool = True):
        self.asterisk_id = asterisk_id
        self.record = record  # keep every delivered event in sent_events (off for long-running processes)
        self.apps: dict[str, StasisApp] = {}
        self.sent_events: dict[str, list[dict]] = defaultdict(list)
        self.sockets: list[EventSocket] = []

    def get(self, name: str) -> StasisApp | None:
        return self.apps.get(name)

    # --- WebSocket lifecycle -------------------------------------------------------------------------------
    def attach(self, sock: EventSocket) -> None:
        self.sockets.append(sock)
        for name in sock.apps:
            app = self.apps.get(name)
            if app is None:
                app = self.apps[name] = StasisApp(name)
                log.info("Creating Stasis app '%s'", name)
            app.sockets.append(sock)
            app.subscribe_all = app.subscribe_all or sock.subscribe_all

    def detach(self, sock: EventSocket) -> None:
        sock.closed = True
        sock.queue.put_nowait(None)
        if sock in self.sockets:
            self.sockets.remove(sock)
        for name in sock.apps:
            app = self.apps.get(name)
            if app is None or sock not in app.sockets:
                continue
            app.sockets.remove(sock)
            if not app.sockets:
                app.subscribe_all = False
                log.info("Deactivating Stasis app '%s'", name)
                self.maybe_destroy(app)

    def maybe_destroy(self, app: StasisApp) -> None:
        if not app.active and app.owns_nothing() and self.apps.get(app.name) is app:
            log.info("Destroying Stasis app %s", app.name)
            del self.apps[app.name]

    # --- subscriptions -------------------------------------------------------------------------------------
    def subscribe(self, app_name: str, channel: Channel) -> None:
        app = self.apps.get(app_name)
        if app is not None:
            app.channels[channel.id] = channel

    def unsubscribe(self, app_name: str, channel: Channel) -> None:
        app = self.apps.get(app_name)
        if app is not None and app.channels.pop(channel.id, None) is not None:
            self.maybe_destroy(app)

    def forget_channel(self, channel: Channel) -> None:
        for app in list(self.apps.values()):
            if app.channels.pop(channel.id, None) is not None:
                self.maybe_destroy(app)

    def bridge_ref(self, app_name: str | None, bridge: Bridge, delta: int) -> None:
        app = self.apps.get(app_name) if app_name else None
        if app is not None:
            app.bridge_refs[bridge.id] = max(0, app.bridge_refs[bridge.id] + delta)

    def forget_bridge(self, bridge: Bridge) -> None:
        for app in self.apps.values():
            app.bridge_refs.pop(bridge.id, None)

    # --- delivery ------------------------------------------------------------------------------------------
    def publish(
        self, event: dict, *, channels: Iterable[Channel] = (), bridge: Bridge | None = None, apps: Iterable[str] = ()
    ) -> None:
        ids = {c.id for c in channels}
        direct = set(apps)
        for app in list(self.apps.values()):
            if not (
                app.subscribe_all
                or app.name in direct
                or any(i in app.channels for i in ids)
                or (bridge is not None and app.bridge_refs.get(bridge.id, 0) > 0)
            ):
                continue
            if not app.wants(event["type"]):
                continue
            if not app.active:
                app.missed += 1  # "Inactive Stasis app '...' missed message"
                continue
            self.deliver(app, event)

    def deliver(self, app: StasisApp, event: dict) -> None:
        message = dict(event)
        if "asterisk_id" not in message:
            message["asterisk_id"] = self.asterisk_id
        message["application"] = app.name
        if self.record:
            self.sent_events[app.name].append(message)
        # Like Asterisk 22 (tests/realpbx/test_two_app_connections.py): a second connection for an app takes its
        # events over; the older one stays open and hears nothing more.
        app.sockets[-1].send(json.dumps(message, separators=(",", ":")))

    def stamp(self) -> float:
        return time.monotonic()
