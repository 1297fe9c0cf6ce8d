"""chan_websocket (Asterisk ≥ 22.6 WebSocket media) control protocol, sans-I/O.

BINARY messages carry raw media in the channel's format; TEXT messages carry control. What this module
knows was read in Asterisk 22.10.1's `channels/chan_websocket.c` and checked against a running 22.10.1:

- Events (Asterisk → us), plain text `NAME key:value key:value` (the default) or JSON `{"event": NAME, …}`
  (dial option `f(json)`, ARI `transport_data=f(json)`, or chan_websocket.conf `control_message_format`):
  MEDIA_START (connection_id, channel, channel_id, format, optimal_frame_size, ptime; JSON adds
  channel_variables), MEDIA_XOFF (queue reached 900 frames), MEDIA_XON (back under 800), QUEUE_DRAINED,
  MEDIA_MARK_PROCESSED <id>, MEDIA_BUFFERING_COMPLETED <id>, DTMF_END digit:<d>, STATUS (queue_length,
  xon_level, xoff_level, queue_full, bulk_media, media_paused), ERROR error_text:<text>.
- Commands (us → Asterisk): ANSWER, HANGUP, START_MEDIA_BUFFERING, STOP_MEDIA_BUFFERING [id], MARK_MEDIA
  [id], FLUSH_MEDIA, GET_STATUS, REPORT_QUEUE_DRAINED, PAUSE_MEDIA, CONTINUE_MEDIA (and, JSON only,
  SET_MEDIA_DIRECTION). A TEXT message longer than 128 bytes is ignored with a warning; an unknown command
  is ignored (plain text) — nothing comes back for either. In JSON mode a plain-text command gets
  `ERROR "Unable to parse JSON command"`.
- Media toward Asterisk is cut into `optimal_frame_size` frames (20 ms: ulaw 160 B, slin 320, slin16 640,
  slin24 960) and queued (max 1000 frames; beyond it whole messages are ignored) and played one frame per
  20 ms tick. Outside START/STOP_MEDIA_BUFFERING, **the remainder of a message that is not a multiple of the
  frame size is dropped** (a 170-byte ulaw message plays 160 bytes), so we always send whole frames.
- FLUSH_MEDIA empties the queue, **marks included**: a MARK_MEDIA behind flushed audio is never
  acknowledged. GET_STATUS is answered at once (not queued), so GET_STATUS then FLUSH_MEDIA in one write
  tells exactly how many frames the flush dropped.
- A message over 65,535 bytes (header included) closes the socket with 1009 and hangs the channel up.

This module parses events into typed structs and formats commands; `ControlState` tracks what the I/O shell
needs between them (started, flow control, GET_STATUS answers in order). It does no I/O.
"""

from __future__ import annotations

import collections
import re
from typing import Union

import msgspec

MAX_TEXT = 128  # chan_websocket ignores longer TEXT messages
MAX_MESSAGE = 65535  # res_http_websocket: header + payload above this closes with 1009
FRAME_MS = 20
XOFF_LEVEL, XON_LEVEL, QUEUE_MAX = 900, 800, 1000

# Formats the product negotiates over WebSocket (controller/ari/capabilities.py WEBSOCKET_FORMATS).
RATE_BY_FORMAT = {"ulaw": 8000, "slin": 8000, "slin16": 16000, "slin24": 24000}
BYTES_PER_SAMPLE = {"ulaw": 1, "slin": 2, "slin16": 2, "slin24": 2}


def frame_size(fmt: str) -> int:
    """Bytes of one 20 ms frame, as Asterisk computes optimal_frame_size for these codecs."""
    return RATE_BY_FORMAT[fmt] // 50 * BYTES_PER_SAMPLE[fmt]


class ControlError(ValueError):
    """A TEXT message we cannot read as a chan_websocket event."""


# ------------------------------------------------------------------ events (Asterisk -> us)


class MediaStart(msgspec.Struct, frozen=True):
    connection_id: str = ""
    channel: str = ""
    channel_id: str = ""
    format: str = ""
    optimal_frame_size: int = 0
    ptime: int = FRAME_MS


class MediaXoff(msgspec.Struct, frozen=True):
    pass


class MediaXon(msgspec.Struct, frozen=True):
    pass


class QueueDrained(msgspec.Struct, frozen=True):
    pass


class MarkProcessed(msgspec.Struct, frozen=True):
    correlation_id: str = ""


class BufferingCompleted(msgspec.Struct, frozen=True):
    correlation_id: str = ""


class DtmfEnd(msgspec.Struct, frozen=True):
    digit: str = ""


class Status(msgspec.Struct, frozen=True):
    queue_length: int = 0
    xon_level: int = XON_LEVEL
    xoff_level: int = XOFF_LEVEL
    queue_full: bool = False
    bulk_media: bool = False
    media_paused: bool = False


class Error(msgspec.Struct, frozen=True):
    error_text: str = ""


class Unknown(msgspec.Struct, frozen=True):
    """An event this version does not know (a newer Asterisk): reported, never fatal."""

    name: str
    text: str


Event = Union[
    MediaStart, MediaXoff, MediaXon, QueueDrained, MarkProcessed, BufferingCompleted, DtmfEnd, Status, Error, Unknown
]

_EVENTS: dict[str, type] = {
    "MEDIA_START": MediaStart,
    "MEDIA_XOFF": MediaXoff,
    "MEDIA_XON": MediaXon,
    "QUEUE_DRAINED": QueueDrained,
    "MEDIA_MARK_PROCESSED": MarkProcessed,
    "MEDIA_BUFFERING_COMPLETED": BufferingCompleted,
    "DTMF_END": DtmfEnd,
    "STATUS": Status,
    "ERROR": Error,
}
# Events whose plain-text form is `NAME <id>` rather than key:value pairs.
_ID_EVENTS = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})
_BOOL = {"true": True, "false": False}
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def parse_event(text: str | bytes) -> Event:
    """One TEXT message (plain-text or JSON) → its event. Raises ControlError for what is neither."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ControlError(f"control message is not UTF-8: {exc}") from None
    text = text.strip()
    if not text:
        raise ControlError("empty control message")
    if text[0] == "{":
        return _parse_json(text)
    return _parse_plain(text)


def _parse_json(text: str) -> Event:
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ControlError(f"control message is not JSON: {exc}") from None
    except RecursionError:  # msgspec's depth guard: arrays or objects nested deeper than the stack allows
        raise ControlError("control message is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise ControlError(f"JSON control message without an event name: {text[:80]!r}")
    name = data["event"]
    cls = _EVENTS.get(name)
    if cls is None:
        return Unknown(name, text)
    fields = {f.name for f in msgspec.structs.fields(cls)}
    try:
        return msgspec.convert({k: v for k, v in data.items() if k in fields}, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ControlError(f"{name}: {exc}") from None


def _parse_plain(text: str) -> Event:
    name, _, rest = text.partition(" ")
    cls = _EVENTS.get(name)
    if cls is None:
        if not _NAME.fullmatch(name):
            raise ControlError(f"not a chan_websocket event: {text[:80]!r}")
        return Unknown(name, text)
    if name in _ID_EVENTS:
        return cls(correlation_id=rest.strip())
    if name == "ERROR":
        # `ERROR channel_id:<id> error_text:<free text with spaces>`
        _, found, error_text = rest.partition("error_text:")
        return Error(error_text=error_text if found else rest)
    values: dict[str, object] = {}
    fields = {f.name: f.type for f in msgspec.structs.fields(cls)}
    for pair in rest.split():
        key, sep, value = pair.partition(":")
        if not sep or key not in fields:
            continue
        kind = fields[key]
        if kind is int:
            try:
                values[key] = int(value)
            except ValueError:
                raise ControlError(f"{name}: {key} is not a number: {value!r}") from None
        elif kind is bool:
            values[key] = _BOOL.get(value, False)
        else:
            values[key] = value
    return cls(**values)


# ------------------------------------------------------------------ commands (us -> Asterisk)

COMMANDS = frozenset(
    {
        "ANSWER",
        "HANGUP",
        "START_MEDIA_BUFFERING",
        "STOP_MEDIA_BUFFERING",
        "MARK_MEDIA",
        "FLUSH_MEDIA",
        "GET_STATUS",
        "REPORT_QUEUE_DRAINED",
        "PAUSE_MEDIA",
        "CONTINUE_MEDIA",
    }
)
_json_encoder = msgspec.json.Encoder()


def command(name: str, correlation_id: str = "", *, json: bool = False) -> bytes:
    """One command as the TEXT payload Asterisk reads. Raises ValueError for what Asterisk would ignore
    silently: an unknown command, an id with whitespace, or a message over 128 bytes."""
    if name not in COMMANDS:
        raise ValueError(f"unknown chan_websocket command {name!r}")
    if correlation_id and (correlation_id.split() != [correlation_id]):
        raise ValueError(f"correlation id {correlation_id!r} must be one word")
    if json:
        body: dict[str, str] = {"command": name}
        if correlation_id:
            body["correlation_id"] = correlation_id
        data = _json_encoder.encode(body)
    else:
        data = (f"{name} {correlation_id}" if correlation_id else name).encode("ascii")
    if len(data) > MAX_TEXT:
        raise ValueError(f"{name}: {len(data)} bytes; chan_websocket ignores control messages over {MAX_TEXT}")
    return data


# ------------------------------------------------------------------ the control state machine


class ControlState:
    """What one media WebSocket's control messages mean for the sender, without I/O.

    `receive(text)` returns the event and updates the state; the shell decides what to do with it.
    - started: MEDIA_START seen (format and frame size known; Asterisk answers the channel right after); our
      commands follow its control format (plain text or JSON).
    - paused: between MEDIA_XOFF and MEDIA_XON — media sent then is dropped by us, not by Asterisk.
    - flush(): the two commands of a barge-in (GET_STATUS, FLUSH_MEDIA); the next STATUS answers it, and
      `flushed_frames` tells how many unplayed frames Asterisk dropped (for exact truncation).
    """

    __slots__ = (
        "json",
        "started",
        "paused",
        "format",
        "frame_size",
        "channel_id",
        "connection_id",
        "flushed_frames",
        "errors",
        "_status_waiters",
        "max_pending",
        "_get_status",
        "_flush_media",
        "hangup_command",
        "answered",
    )

    def __init__(self, *, json: bool = False, max_pending: int = 16):
        self.json = json
        self.started = False
        self.paused = False
        self.format = ""
        self.frame_size = 0
        self.channel_id = ""
        self.connection_id = ""
        self.flushed_frames: int | None = None  # queue length dropped by the last flush, once known
        self.answered = ""  # what the last STATUS answered: "flush", "query", or "" (unasked)
        self.errors = 0
        self.max_pending = max_pending
        # What each outstanding GET_STATUS was for: "flush" (a barge-in) or "query"; answered in order.
        self._status_waiters: collections.deque[str] = collections.deque()
        self._set_format(json)

    def _set_format(self, json: bool) -> None:
        self.json = json
        self._get_status = command("GET_STATUS", json=json)
        self._flush_media = command("FLUSH_MEDIA", json=json)
        self.hangup_command = command("HANGUP", json=json)

    def receive(self, text: str | bytes) -> Event:
        event = parse_event(text)
        if isinstance(event, MediaStart):
            # Asterisk reads commands in the format it writes events in (chan_websocket.conf or `f(json)`):
            # follow MEDIA_START's, so a JSON-configured Asterisk does not refuse our plain-text commands.
            json = text.lstrip()[:1] in ("{", b"{")
            if json != self.json:
                self._set_format(json)
            self.started = True
            self.format = event.format
            self.frame_size = event.optimal_frame_size
            self.channel_id = event.channel_id
            self.connection_id = event.connection_id
        elif isinstance(event, MediaXoff):
            self.paused = True
        elif isinstance(event, MediaXon):
            self.paused = False
        elif isinstance(event, Status):
            self.paused = event.queue_full
            self.answered = self._status_waiters.popleft() if self._status_waiters else ""
            if self.answered == "flush":
                self.flushed_frames = event.queue_length
        elif isinstance(event, Error):
            self.errors += 1
        return event

    def flush(self) -> list[bytes]:
        """Barge-in: ask the queue length, then drop the queue (both in one write)."""
        self.flushed_frames = None
        if len(self._status_waiters) >= self.max_pending:
            return [self._flush_media]  # Asterisk stopped answering: flush without the count
        self._status_waiters.append("flush")
        return [self._get_status, self._flush_media]

    def status(self) -> bytes | None:
        """GET_STATUS for a queue-depth sample (None while too many are unanswered)."""
        if len(self._status_waiters) >= self.max_pending:
            return None
        self._status_waiters.append("query")
        return self._get_status
