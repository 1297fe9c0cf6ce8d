"""Typed ARI events (swagger `events.json`), decoded in one pass by a msgspec tagged union on `type`.

One struct per event the controller acts on. Scalars that swagger marks required are required here too, as are
the objects an event is about (its channel, bridge, playback or peer); a message that lacks them is a
`BadEvent`. Any other event type decodes to `OtherEvent` with its raw dict, so nothing is lost.
`decode_event` never raises.
"""

from __future__ import annotations

from typing import Any

import msgspec

from controller.ari import json_text
from controller.ari.resources import Bridge, Channel, Playback


class _Event(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    timestamp: str = ""
    application: str = ""
    asterisk_id: str = ""


class StasisStart(_Event, tag="StasisStart", frozen=True):
    channel: Channel
    args: list[str] = []  # appArgs split on commas; externalMedia's `data`
    replace_channel: Channel | None = None


class StasisEnd(_Event, tag="StasisEnd", frozen=True):
    channel: Channel


class ChannelStateChange(_Event, tag="ChannelStateChange", frozen=True):
    channel: Channel


class ChannelHangupRequest(_Event, tag="ChannelHangupRequest", frozen=True):
    channel: Channel
    cause: int | None = None  # with soft=True a soft-hangup bitmask (32 = ARI DELETE), not Q.850
    soft: bool | None = None
    tech_cause: int | None = None


class ChannelDestroyed(_Event, tag="ChannelDestroyed", frozen=True):
    channel: Channel
    cause: int
    cause_txt: str
    tech_cause: int | None = None


class ChannelVarset(_Event, tag="ChannelVarset", frozen=True):
    variable: str
    value: str
    channel: Channel | None = None  # None for a global variable


class ChannelDtmfReceived(_Event, tag="ChannelDtmfReceived", frozen=True):
    channel: Channel
    digit: str
    duration_ms: int


class ChannelEnteredBridge(_Event, tag="ChannelEnteredBridge", frozen=True):
    bridge: Bridge
    channel: Channel


class ChannelLeftBridge(_Event, tag="ChannelLeftBridge", frozen=True):
    bridge: Bridge
    channel: Channel


class BridgeDestroyed(_Event, tag="BridgeDestroyed", frozen=True):
    bridge: Bridge


class Dial(_Event, tag="Dial", frozen=True):
    peer: Channel
    dialstatus: str  # "" first, then RINGING / ANSWER / BUSY …; no final event when a ringing leg is cancelled
    caller: Channel | None = None
    dialstring: str = ""  # empty on every Dial after the first
    forward: str = ""
    forwarded: Channel | None = None


class PlaybackStarted(_Event, tag="PlaybackStarted", frozen=True):
    playback: Playback


class PlaybackFinished(_Event, tag="PlaybackFinished", frozen=True):
    playback: Playback


class ApplicationMoveFailed(_Event, tag="ApplicationMoveFailed", frozen=True):
    channel: Channel
    destination: str
    args: list[str] = []


KnownEvent = (
    StasisStart
    | StasisEnd
    | ChannelStateChange
    | ChannelHangupRequest
    | ChannelDestroyed
    | ChannelVarset
    | ChannelDtmfReceived
    | ChannelEnteredBridge
    | ChannelLeftBridge
    | BridgeDestroyed
    | Dial
    | PlaybackStarted
    | PlaybackFinished
    | ApplicationMoveFailed
)

KNOWN_TYPES = frozenset(cls.__struct_config__.tag for cls in KnownEvent.__args__)


class OtherEvent(msgspec.Struct, frozen=True):
    """An event type the controller does not act on (ChannelConnectedLine, ChannelDialplan, …)."""

    type: str
    raw: dict[str, Any]


class BadEvent(msgspec.Struct, frozen=True):
    """A message that is not a valid event: not JSON, not an object, no type, or a known type that lacks or
    mistypes a field."""

    reason: str
    type: str | None = None


Event = KnownEvent | OtherEvent | BadEvent

_decode_known = msgspec.json.Decoder(KnownEvent).decode
_decode_any = msgspec.json.Decoder().decode


def decode_event(data: bytes | str) -> Event:
    try:
        return json_text.decode(_decode_known, data)  # a caller name that is not UTF-8 must not drop the call
    except msgspec.ValidationError as exc:
        error = str(exc)
    except msgspec.DecodeError as exc:
        return BadEvent(f"not JSON: {exc}")
    except RecursionError:  # msgspec's depth guard: arrays or objects nested deeper than the stack allows
        return BadEvent("nested too deeply")
    # Not one of ours, or one of ours with a bad shape: look at the raw object to tell which.
    try:
        raw = json_text.decode(_decode_any, data)
    except msgspec.DecodeError as exc:  # the typed pass stops at the first mistyped field: the rest may be garbage
        return BadEvent(f"not JSON: {exc}")
    except RecursionError:  # nested too deeply inside a field the typed pass never looked into
        return BadEvent("nested too deeply")
    if not isinstance(raw, dict):
        return BadEvent(f"not an object: {type(raw).__name__}")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind:
        return BadEvent("no event type")
    if kind in KNOWN_TYPES:
        return BadEvent(error, kind)
    return OtherEvent(kind, raw)


def event_type(event: Event) -> str:
    if isinstance(event, BadEvent):
        return event.type or ""
    if isinstance(event, OtherEvent):
        return event.type
    return str(event.__struct_config__.tag)


def _target_key(target_uri: str) -> str | None:
    # "channel:<id>" / "bridge:<id>": key a playback by what it plays on, so it is ordered with that object.
    _, sep, ident = target_uri.partition(":")
    return ident if sep and ident else None


def default_key(event: Event) -> str:
    """Events of one key are handled in order: the channel id, else the bridge id, else the playback's target,
    else "global"."""
    if isinstance(event, OtherEvent):
        raw = event.raw
        for name in ("channel", "peer", "bridge"):
            obj = raw.get(name)
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                return obj["id"]
        playback = raw.get("playback")
        if isinstance(playback, dict) and isinstance(playback.get("target_uri"), str):
            return _target_key(playback["target_uri"]) or "global"
        return "global"
    channel = getattr(event, "channel", None)
    if channel is not None:
        return channel.id
    if isinstance(event, Dial):
        return event.peer.id
    bridge = getattr(event, "bridge", None)
    if bridge is not None:
        return bridge.id
    if isinstance(event, (PlaybackStarted, PlaybackFinished)):
        return _target_key(event.playback.target_uri) or "global"
    return "global"
