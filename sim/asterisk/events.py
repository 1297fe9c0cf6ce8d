"""Builders for ARI event messages, with the key order Asterisk 22.10.1 uses (observed in the traces).

Each builder returns the event without `asterisk_id` / `application`: the delivery layer appends those
(last, as Asterisk does) for every app that receives it."""

from __future__ import annotations

from typing import Any

from sim.asterisk.ids import ast_time

CAUSE_TXT = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    21: "Call Rejected",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    58: "Bearer capability not available",
    127: "Interworking, unspecified",
}


def _ev(type_: str, **fields: Any) -> dict:
    return {"type": type_, "timestamp": ast_time(), **fields}


def stasis_start(args: list[str], channel: dict) -> dict:
    return _ev("StasisStart", args=list(args), channel=channel)


def stasis_end(channel: dict) -> dict:
    return _ev("StasisEnd", channel=channel)


def channel_event(type_: str, channel: dict) -> dict:
    """ChannelCreated, ChannelStateChange, ChannelConnectedLine and the other {type, timestamp, channel} ones."""
    return _ev(type_, channel=channel)


def channel_varset(variable: str, value: str, channel: dict) -> dict:
    return {"variable": variable, "value": value, **_ev("ChannelVarset", channel=channel)}


def channel_dialplan(app: str, app_data: str, channel: dict) -> dict:
    return _ev("ChannelDialplan", dialplan_app=app, dialplan_app_data=app_data, channel=channel)


def channel_caller_id(channel: dict) -> dict:
    return _ev(
        "ChannelCallerId",
        caller_presentation=0,
        caller_presentation_txt="Presentation Allowed, Not Screened",
        channel=channel,
    )


def hangup_request(cause: int, soft: bool, channel: dict) -> dict:
    head: dict[str, Any] = {"cause": cause}
    if soft:
        head["soft"] = True
    return {**head, **_ev("ChannelHangupRequest", channel=channel)}


def channel_destroyed(cause: int, channel: dict) -> dict:
    return _ev("ChannelDestroyed", cause=cause, cause_txt=CAUSE_TXT.get(cause, "Unknown"), channel=channel)


def dtmf_received(digit: str, duration_ms: int, channel: dict) -> dict:
    return _ev("ChannelDtmfReceived", digit=digit, duration_ms=duration_ms, channel=channel)


def dial(dialstatus: str, dialstring: str, peer: dict, caller: dict | None = None) -> dict:
    fields: dict[str, Any] = {}
    if caller is not None:
        fields["caller"] = caller
    fields.update(dialstatus=dialstatus, forward="", dialstring=dialstring, peer=peer)
    return _ev("Dial", **fields)


def bridge_event(type_: str, bridge: dict) -> dict:
    """BridgeCreated / BridgeDestroyed."""
    return _ev(type_, bridge=bridge)


def bridge_channel_event(type_: str, bridge: dict, channel: dict) -> dict:
    """ChannelEnteredBridge / ChannelLeftBridge."""
    return _ev(type_, bridge=bridge, channel=channel)


def playback_event(type_: str, playback: dict) -> dict:
    return _ev(type_, playback=playback)


def device_state_changed(name: str, state: str) -> dict:
    return {
        "type": "DeviceStateChanged",
        "application": "",
        "timestamp": ast_time(),
        "device_state": {"name": name, "state": state},
    }
