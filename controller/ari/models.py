"""Every ARI model and event type in one import: `from controller.ari.models import Channel, StasisStart`.

The resources live in `resources.py`, the events and their decoder in `event_types.py`.
"""

from __future__ import annotations

from controller.ari.event_types import (
    KNOWN_TYPES,
    ApplicationMoveFailed,
    BadEvent,
    BridgeDestroyed,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelEnteredBridge,
    ChannelHangupRequest,
    ChannelLeftBridge,
    ChannelStateChange,
    ChannelVarset,
    Dial,
    Event,
    KnownEvent,
    OtherEvent,
    PlaybackFinished,
    PlaybackStarted,
    StasisEnd,
    StasisStart,
    decode_event,
    default_key,
    event_type,
)
from controller.ari.resources import (
    AsteriskInfo,
    Bridge,
    BuildInfo,
    CallerID,
    Channel,
    DialplanCEP,
    Module,
    Playback,
    SystemInfo,
    Variable,
)

__all__ = [
    "KNOWN_TYPES", "ApplicationMoveFailed", "AsteriskInfo", "BadEvent", "Bridge", "BridgeDestroyed", "BuildInfo",
    "CallerID", "Channel", "ChannelDestroyed", "ChannelDtmfReceived", "ChannelEnteredBridge",
    "ChannelHangupRequest", "ChannelLeftBridge", "ChannelStateChange", "ChannelVarset", "Dial", "DialplanCEP",
    "Event", "KnownEvent", "Module", "OtherEvent", "Playback", "PlaybackFinished", "PlaybackStarted",
    "StasisEnd", "StasisStart", "SystemInfo", "Variable", "decode_event", "default_key", "event_type",
]
