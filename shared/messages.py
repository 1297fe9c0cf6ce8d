"""Typed records that cross process boundaries through Redis (msgspec structs, one encoder per shape).

Registry records live in Redis HASHes, whose values are strings; `to_hash`/`from_hash` convert."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from redis.typing import EncodableT, FieldT

T = TypeVar("T", bound=msgspec.Struct)


class ProcessInfo(msgspec.Struct, kw_only=True):
    """What every registered process says about itself."""

    id: str
    role: str
    hostname: str
    pid: int
    version: str
    started_ms: int
    health_url: str = ""


class WorkerInfo(ProcessInfo, kw_only=True):
    """A media worker's registration: where Asterisk sends media, and how many calls it takes."""

    media_host: str
    audiosocket_port: int
    rtp_port_min: int
    rtp_port_max: int
    capacity: int  # what admission reads: the configured capacity, or fewer while the worker limits itself
    draining: bool = False
    capacity_configured: int = 0  # media_worker.capacity (0: a worker from before it was written)
    load_state: str = "ok"  # ok | saturated | overloaded (media_worker/load_governor.py)
    load_reason: str = ""  # the measurement behind a state other than ok


def to_hash(record: msgspec.Struct) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in msgspec.to_builtins(record).items():
        out[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


def from_hash(data: dict[str, Any], cls: type[T]) -> T:
    """Decode a HASH into `cls`; extra fields (counters owned by other writers) are ignored."""
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in data.items()
    }
    names = {f.encode_name for f in msgspec.structs.fields(cls)}
    return msgspec.convert({k: v for k, v in decoded.items() if k in names}, cls, strict=False)


class CallPlan(msgspec.Struct, kw_only=True):
    """Everything a media worker needs to hold one conversation; written by the controller at admission,
    before Asterisk connects the media, so the worker can prime its Realtime session meanwhile."""

    call_id: str
    caller_channel: str
    context: str
    provider: str
    profile: str
    transport: str  # audiosocket | rtp | websocket
    format: str  # what Asterisk sends: slin, slin16, slin24, ulaw
    provider_format: str  # pcm16 | g711_ulaw
    caller_name: str = ""
    caller_number: str = ""
    greeting: str = ""
    instructions: str = ""
    tools: list[str] = []
    voice: str | None = None
    created_ms: int = 0


class Assignment(msgspec.Struct, kw_only=True):
    """The worker-inbox message that hands a call to a worker (`type` = "assign")."""

    call_id: str
    epoch: int
    rtp_port: int = 0  # the reserved port when transport is rtp
    plan: CallPlan
    # How often the call has been moved to another worker after it was up (its worker died or gave it up).
    # Above 0 the worker resumes the conversation: no greeting, the call log replayed into the new Realtime
    # session, then a short "the line dropped" reply. 0 (and old messages without the field): a new call.
    moves: int = 0
    # Redis time (ms) the previous worker was last heard from (its last heartbeat; the move itself when it was
    # still beating): where the takeover gap is measured from.
    lost_at_ms: int = 0


class MediaReady(msgspec.Struct, kw_only=True):
    """Worker-inbox message (`type` = "media"), WebSocket media only: the controller created the media channel
    (externalMedia, connection_type=server); the worker connects to `url` and Asterisk then answers it.

    `url` is ws(s)://<Asterisk HTTP>/media/<connection id>; the connection id is the only credential of the
    media stream, so the URL is never logged whole."""

    call_id: str
    epoch: int
    url: str
    channel_id: str = ""


class MediaBridged(msgspec.Struct, kw_only=True):
    """Worker-inbox message (`type` = "media_bridged"), WebSocket media only: the media channel is in the
    caller's bridge, so what the worker sends from now on is heard (before, Asterisk plays it into nothing).
    A caller who stays silent sends no frame that could tell the worker so."""

    call_id: str
    epoch: int


# The call record's field a media worker sets to its epoch just before it hangs up a call's media leg on purpose:
# a media leg that ends without it lost its worker (a crash), and the controller moves the call instead of
# sending the caller to the fallback.
WORKER_HANGUP_FIELD = "worker_hangup_epoch"

# CallEnded.reason when the call was not torn down but moved to another worker: the session stops without
# hanging anything up and without writing its figures over the new worker's.
MOVED = "moved"

# ControlRequest.reason of a hang-up at `limits.max_call_duration_s`; it becomes the call's end reason.
TIME_LIMIT = "time_limit"


class CallEnded(msgspec.Struct, kw_only=True):
    """Worker-inbox message (`type` = "end"): the controller tore the call down (or moved it: `MOVED`); stop its
    session."""

    call_id: str
    reason: str


class MediaPeer(msgspec.Struct, kw_only=True):
    """Worker-inbox message (`type` = "media_peer"): where Asterisk takes the call's media. ExternalMedia RTP
    reports its own address and port in the channel's UNICASTRTP_LOCAL_ADDRESS/PORT: with it the worker sends
    from its first frame, so a caller who stays silent still hears the greeting, and hears nobody else on the
    port. An empty host: the controller learnt no address, the worker latches to the first packet."""

    call_id: str
    host: str
    port: int


_inbox_encoder = msgspec.json.Encoder()


def inbox_fields(kind: str, message: msgspec.Struct) -> dict[FieldT, EncodableT]:
    """A worker-inbox stream entry: its type and the message as JSON."""
    return {"type": kind.encode(), "data": _inbox_encoder.encode(message)}


class ControlRequest(msgspec.Struct, kw_only=True):
    """A media worker asks the controller to act on a call (`va:controller:inbox`, type "control").

    `request_id` is idempotent: the controller executes a request id once, however often it is delivered."""

    request_id: str
    call_id: str
    worker_id: str
    # transfer | cancel_transfer | hangup | voicemail; media_failed: the worker cannot take the call's media
    # (RTP: its port would not open), so the controller frees the slot and retries or falls back
    action: str
    destination: str = ""  # transfer: a key of tools.transfer.destinations (nothing else is ever dialled)
    reason: str = ""


class ControlReply(msgspec.Struct, kw_only=True):
    """The controller's answer, in the worker's inbox (type "control_result"). A transfer gets a first reply
    `ringing` (final=False) and then its outcome (final=True)."""

    request_id: str
    call_id: str
    ok: bool
    # transfer: ringing | answered | busy | no_answer | cancelled | refused | failed;
    # cancel_transfer: cancelled | nothing_to_cancel; hangup / voicemail: done | failed
    status: str
    message: str = ""
    final: bool = True
