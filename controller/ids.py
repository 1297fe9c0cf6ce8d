"""Ids of the objects the controller creates in Asterisk, and how to tell them apart from callers.

Every id is pre-assigned (the REST answer and the new channel's StasisStart travel on different sockets, in
no fixed order) and derived from the call id, so a channel or bridge names its call: events of our own legs
are ordered with the call's caller channel, and reconcile finds our orphans by id alone. The call id is a
UUID because AudioSocket's `data` must be one.
"""

from __future__ import annotations

import re
import uuid

_OURS = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-(em\d*|br|xfer\d+)$")
# Channels that only ever come from externalMedia or snoop: never a caller, whatever their args say.
MEDIA_PREFIXES = ("UnicastRTP/", "AudioSocket/", "WebSocket/", "Snoop/")


def new_call_id() -> str:
    return str(uuid.uuid4())


def media_channel_id(call_id: str, attempt: int = 0) -> str:
    """The media leg of a call's setup attempt: `-em`, then `-em1`, `-em2` … for retries on other workers."""
    return f"{call_id}-em{attempt or ''}"


def bridge_id(call_id: str) -> str:
    return f"{call_id}-br"


def transfer_channel_id(call_id: str, n: int) -> str:
    return f"{call_id}-xfer{n}"


def owner(object_id: str) -> tuple[str, str] | None:
    """(call id, kind: em | emN | br | xferN) for an object we created, else None."""
    m = _OURS.match(object_id)
    return (m.group(1), m.group(2)) if m else None
