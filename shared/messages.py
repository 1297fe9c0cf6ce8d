"""Typed records that cross process boundaries through Redis (msgspec structs, one encoder per shape).

Registry records live in Redis HASHes, whose values are strings; `to_hash`/`from_hash` convert."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

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
    capacity: int
    draining: bool = False


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
