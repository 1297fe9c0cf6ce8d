"""ARI resource models (swagger 1.1 `models` of channels, bridges, playbacks, asterisk), decoded with msgspec.

Only the fields the controller reads are declared; unknown fields are ignored because Asterisk adds fields
over versions (`protocol_id`, `tenantid`, `caller_rdnis` …). Everything but the id has a default, so a
snapshot trimmed by an older Asterisk still decodes.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct, field


class CallerID(Struct):
    name: str = ""
    number: str = ""


class DialplanCEP(Struct):
    context: str = ""
    exten: str = ""
    priority: int = 0
    app_name: str = ""
    app_data: str = ""


class Channel(Struct):
    id: str
    name: str = ""
    state: str = ""
    caller: CallerID = field(default_factory=CallerID)
    connected: CallerID = field(default_factory=CallerID)
    accountcode: str = ""
    dialplan: DialplanCEP | None = None
    creationtime: str = ""
    language: str = ""
    # None = the key was absent (ari.conf has no `channelvars`); unset listed variables come as "".
    channelvars: dict[str, str] | None = None


class Bridge(Struct):
    id: str
    technology: str = ""
    bridge_type: str = ""
    bridge_class: str = ""
    creator: str = ""
    name: str = ""
    channels: list[str] = []
    creationtime: str = ""


class Playback(Struct):
    id: str
    media_uri: str = ""
    target_uri: str = ""
    state: str = ""
    language: str = ""
    next_media_uri: str | None = None


class SystemInfo(Struct):
    version: str = ""
    entity_id: str = ""


class BuildInfo(Struct):
    os: str = ""
    kernel: str = ""
    options: str = ""
    machine: str = ""
    date: str = ""
    user: str = ""


class AsteriskInfo(Struct):
    """`GET /asterisk/info`: each part is present only when asked for (or when `only` is not given)."""

    system: SystemInfo | None = None
    build: BuildInfo | None = None
    config: dict[str, Any] | None = None
    status: dict[str, Any] | None = None


class Module(Struct):
    name: str
    description: str = ""
    use_count: int = 0
    status: str = ""  # "Running" / "Not Running"
    support_level: str = ""

    @property
    def running(self) -> bool:
        return self.status.strip().lower() in ("running", "")


class Variable(Struct):
    value: str = ""
