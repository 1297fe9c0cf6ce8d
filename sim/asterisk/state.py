"""The live objects of the simulated Asterisk (channels, bridges, playbacks) and their JSON snapshots, shaped
and key-ordered exactly as Asterisk 22.10.1 prints them (see the golden traces)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from sim.asterisk.ids import ast_time

AudioSink = Callable[[bytes, int], None]


class Hungup(Exception):
    """Raised inside a channel's dialplan task when the channel is hung up."""


def settle(done: asyncio.Future[None]) -> None:
    """Resolve `done` unless it already is (a playback's end callback may come after a cancel)."""
    if not done.done():
        done.set_result(None)


@dataclass(eq=False)
class Channel:
    id: str
    name: str
    tech: str  # Local, PJSIP, UnicastRTP, AudioSocket
    state: str = "Down"
    caller_name: str = ""
    caller_number: str = ""
    connected_name: str = ""
    connected_number: str = ""
    context: str = "default"
    exten: str = "s"
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    language: str = "en"
    accountcode: str = ""
    creationtime: str = field(default_factory=ast_time)
    variables: dict[str, str] = field(default_factory=dict)
    # Stasis
    stasis_app: str | None = None  # the app whose Stasis() the channel is in
    stasis_args: list[str] = field(default_factory=list)
    # Resolved with where the channel goes: a (context, exten, priority), another app (pbx.MoveTo) or None.
    stasis_leave: asyncio.Future | None = None
    subscribed: set[str] = field(default_factory=set)  # apps subscribed to it outside Stasis (ARI-created)
    ari_created: bool = False
    dialstring: str | None = None  # /channels/create: what /dial will dial
    dialing: bool = False
    # topology
    bridge: Bridge | None = None
    local_peer: Channel | None = None
    local_half: int = 0  # 1 or 2 for Local channels
    hidden: bool = False  # far end of a PJSIP/phone leg: never listed
    # media
    media: Any = None  # deliver(pcm, rate) / send_dtmf(d) / close(): caller, RTP or AudioSocket
    input_sink: AudioSink | None = None  # a dialplan app consuming what the channel hears from its outside
    moh: bool = False
    ringback: bool = False  # hearing a ring tone (ring indication or a ringing Dial)
    # life
    hangup_cause: int = 16
    hanging_up: bool = False
    destroyed: bool = False
    dialplan_task: asyncio.Task | None = None
    trail: list[str] = field(default_factory=list)
    stasis_status: str = ""
    stasis_start_t: float | None = None
    stasis_delay_s: float | None = None  # drawn wait between the ARI answer that made it and its Stasis entry
    dtmf_sink: Callable[[str], None] | None = None
    watch: Any = None  # who is dialing this channel (ringing / answer / busy callbacks)
    pinned: set[str] = field(default_factory=set)  # variables a test fixed: dialplan Set() leaves them alone
    pbx_run: bool = False  # ran dialplan applications (not only an ARI Stasis life)
    restore_app: tuple[str, str] = ("", "")  # the dialplan app its snapshot shows once the dialplan is over
    callerid_dirty: bool = False  # a Local ;2 half owes a ChannelCallerId after its ;1's line changed
    device_busy: bool = False  # counted INUSE in device state
    on_destroy: list[Callable[[Channel], None]] = field(default_factory=list)
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def flag(self, name: str) -> asyncio.Event:
        """A named one-shot event (e.g. 'stasis', 'answered', 'ended') for waiters."""
        if name not in self.events:
            self.events[name] = asyncio.Event()
        return self.events[name]

    @property
    def in_stasis(self) -> bool:
        return self.stasis_app is not None

    def far_end(self) -> Channel:
        """The other half of a Local pair or of a phone (an error for a channel that has none)."""
        if self.local_peer is None:
            raise ValueError(f"channel {self.name} has no other half")
        return self.local_peer

    def set_location(self, context: str, exten: str, priority: int, app_name: str = "", app_data: str = "") -> None:
        self.context, self.exten, self.priority = context, exten, priority
        self.app_name, self.app_data = app_name, app_data

    def snapshot(self, channelvars: tuple[str, ...] | None, override_vars: dict[str, str] | None = None) -> dict:
        snap = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": "",
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": self.connected_name, "number": self.connected_number},
            "accountcode": self.accountcode,
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": self.creationtime,
            "language": self.language,
        }
        if override_vars is not None:
            snap["channelvars"] = override_vars
        elif channelvars:
            snap["channelvars"] = {name: self.variables.get(name, "") for name in channelvars}
        return snap

    def __repr__(self) -> str:
        return f"<Channel {self.id} {self.name} {self.state}>"


@dataclass(eq=False)
class Bridge:
    id: str
    bridge_type: str = "mixing"  # mixing | holding
    name: str = ""
    flags: tuple[str, ...] = ("mixing",)
    bridge_class: str = "stasis"
    creator: str = "Stasis"
    creationtime: str = field(default_factory=ast_time)
    members: list[Channel] = field(default_factory=list)
    stasis: bool = True  # False: an internal bridge of Dial()/Queue(), not listed
    destroyed: bool = False
    moh: bool = False
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def technology(self) -> str:
        if self.bridge_type == "holding":
            return "holding_bridge"
        return "simple_bridge" if len(self.members) <= 2 else "softmix"

    @property
    def channels(self) -> list[Channel]:
        return list(self.members)

    def snapshot(self) -> dict:
        return {
            "id": self.id,
            "technology": self.technology,
            "bridge_type": self.bridge_type,
            "bridge_class": self.bridge_class,
            "creator": self.creator,
            "name": self.name,
            "channels": [c.id for c in self.members],
            "creationtime": self.creationtime,
            "video_mode": "talker" if self.bridge_type == "mixing" else "none",
        }

    def __repr__(self) -> str:
        return f"<Bridge {self.id} {[c.id for c in self.members]}>"


@dataclass(eq=False)
class Playback:
    id: str
    media: list[str]
    target_uri: str
    app: str | None
    language: str = "en"
    state: str = "queued"
    index: int = 0
    task: asyncio.Task | None = None

    @property
    def media_uri(self) -> str:
        return self.media[min(self.index, len(self.media) - 1)]

    def snapshot(self) -> dict:
        snap: dict[str, Any] = {"id": self.id, "media_uri": self.media_uri}
        if self.index + 1 < len(self.media):
            snap["next_media_uri"] = self.media[self.index + 1]
        snap.update({"target_uri": self.target_uri, "language": self.language, "state": self.state})
        return snap
