"""Asterisk's WebSocket media URL (chan_websocket server mode), shared by the controller and the workers."""

from __future__ import annotations

from urllib.parse import urlsplit


def media_url(base: str, connection_id: str) -> str:
    """ws(s)://host:port[/prefix]/media/<id> from Asterisk's HTTP base URL (the ARI URL, with or without its
    /ari path, or an explicit media URL)."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"{base!r} is not an http(s):// or ws(s):// URL")
    if not connection_id or "/" in connection_id:
        raise ValueError(f"bad media connection id {connection_id!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/ari"):
        path = path[: -len("/ari")]
    if path.endswith("/media"):
        path = path[: -len("/media")]
    return f"{scheme}://{parts.netloc}{path}/media/{connection_id}"


def redact(url: str) -> str:
    """The media URL with its connection id (the stream's only credential) cut to 8 characters, for logs."""
    head, sep, cid = url.rpartition("/media/")
    return f"{head}/media/{cid[:8]}…" if sep and cid else url
