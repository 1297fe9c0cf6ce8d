"""What this Asterisk can carry: AudioSocket and its formats, WebSocket media, RTP formats.

Read once at startup (and after a reconnect) from `GET /asterisk/info` and the two channel-driver modules.
Version rules from Asterisk's ChangeLogs, checked against the release tags:
- AudioSocket wideband kinds (slin16/slin24 …) came in 20.17 / 21.12 / 22.7 / 23.1; before, 8 kHz slin only.
- chan_websocket (WebSocket media) came in 20.16 / 21.11 / 22.6 / 23.0.
A major release newer than the table keeps everything; a loaded module is still required.
"""

from __future__ import annotations

import asyncio
import logging
import re

from msgspec import Struct

log = logging.getLogger("ari")

# First release with the feature, per major branch; majors below the table's lowest lack it.
AUDIOSOCKET_WIDEBAND_SINCE = {20: (20, 17), 21: (21, 12), 22: (22, 7), 23: (23, 1)}
WEBSOCKET_MEDIA_SINCE = {20: (20, 16), 21: (21, 11), 22: (22, 6), 23: (23, 0)}

AUDIOSOCKET_NARROW = ("slin",)
AUDIOSOCKET_WIDE = ("slin", "slin16", "slin24")
WEBSOCKET_FORMATS = ("ulaw", "slin", "slin16", "slin24")
# Sample rate of each format name, to find "the best lower one".
RATES = {
    "ulaw": 8000,
    "alaw": 8000,
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin48": 48000,
}
_LINEAR = frozenset(name for name in RATES if name.startswith("slin"))

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


class TransportUnavailable(ValueError):
    """The transport cannot be used with this Asterisk (module not loaded or version too old)."""


def parse_version(version: str) -> tuple[int, ...]:
    """ "22.10.1" → (22, 10, 1); "certified-20.7-cert3" → (20, 7); "GIT-master-abc" → ()."""
    match = _VERSION.search(version)
    if not match:
        return ()
    return tuple(int(part) for part in match.groups() if part is not None)


def has_feature(version: tuple[int, ...], since: dict[int, tuple[int, int]]) -> bool | None:
    """True/False from the per-branch table; None when the version could not be read."""
    if not version:
        return None
    major = version[0]
    if major > max(since):
        return True
    first = since.get(major)
    if first is None:
        return False  # older than the table, or a skipped branch
    return tuple(version[:2]) >= first


class Capabilities(Struct, frozen=True):
    version: str
    version_tuple: tuple[int, ...]
    audiosocket: bool
    audiosocket_formats: tuple[str, ...]
    websocket_media: bool
    rtp_formats: tuple[str, ...] = ("ulaw", "slin")  # slin16 over RTP is one-way on 22.10 (sim/asterisk/rtp.py)
    entity_id: str = ""

    def formats(self, transport: str) -> tuple[str, ...]:
        """The formats usable on a transport ("audiosocket", "rtp", "websocket"); () if it is unavailable."""
        if transport == "audiosocket":
            return self.audiosocket_formats if self.audiosocket else ()
        if transport == "rtp":
            return self.rtp_formats
        if transport == "websocket":
            return WEBSOCKET_FORMATS if self.websocket_media else ()
        raise ValueError(f"unknown media transport {transport!r}")

    def best_format(self, transport: str, wanted: str) -> str:
        """`wanted` if the transport carries it, else the best one below it: the highest sample rate not above
        the wanted one, linear or companded like `wanted` where there is a choice. Raises TransportUnavailable
        when the transport cannot be used at all."""
        available = self.formats(transport)
        if not available:
            raise TransportUnavailable(f"{transport} media is not available on Asterisk {self.version}")
        if wanted in available:
            return wanted
        rate = RATES.get(wanted, 8000)
        lower = [name for name in available if RATES.get(name, 8000) <= rate] or [min(available, key=_rate)]
        linear = wanted in _LINEAR
        return max(lower, key=lambda name: (_rate(name), (name in _LINEAR) == linear))


def _rate(name: str) -> int:
    return RATES.get(name, 8000)


def capabilities_from(
    version: str, audiosocket_loaded: bool, websocket_loaded: bool, entity_id: str = ""
) -> Capabilities:
    """The pure rules, separate from the REST calls."""
    parsed = parse_version(version)
    wide = has_feature(parsed, AUDIOSOCKET_WIDEBAND_SINCE)
    ws_ok = has_feature(parsed, WEBSOCKET_MEDIA_SINCE)
    if wide is None:
        log.warning("cannot read Asterisk version %r: assuming 8 kHz AudioSocket only", version)
    return Capabilities(
        version=version,
        version_tuple=parsed,
        audiosocket=audiosocket_loaded,
        audiosocket_formats=AUDIOSOCKET_WIDE if wide else AUDIOSOCKET_NARROW,
        # An unreadable version (a git build) trusts the module; a known-old one never has chan_websocket media.
        websocket_media=websocket_loaded and ws_ok is not False,
        entity_id=entity_id,
    )


async def probe(rest) -> Capabilities:  # rest: AriRest (untyped to keep this module free of aiohttp)
    info, audiosocket, websocket = await asyncio.gather(
        rest.info("system"), rest.module("chan_audiosocket.so"), rest.module("chan_websocket.so")
    )
    system = info.system
    if system is None or not system.version:
        raise ValueError("GET /asterisk/info?only=system returned no version")
    caps = capabilities_from(
        system.version,
        audiosocket is not None and audiosocket.running,
        websocket is not None and websocket.running,
        system.entity_id,
    )
    log.info(
        "Asterisk %s: audiosocket=%s %s, websocket media=%s",
        caps.version,
        caps.audiosocket,
        ",".join(caps.audiosocket_formats),
        caps.websocket_media,
    )
    return caps
