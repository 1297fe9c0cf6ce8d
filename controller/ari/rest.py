"""ARI REST calls over one aiohttp session.

Every parameter goes in the query string, as the golden traces did (Asterisk accepts both); the only JSON
body is `{"variables": …}`, which has no query form. A status the method maps (e.g. 404 on `get_channel`)
becomes its return value; any other non-2xx raises `AriError` with Asterisk's `message`; a connection
failure or timeout raises `AriUnavailable`. The password lives only in the session's auth; it is never in a
log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NotRequired, TypedDict, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from controller.ari import json_text
from controller.ari.errors import AriError, AriUnavailable
from controller.ari.resources import AsteriskInfo, Bridge, Channel, Module, Playback, Variable
from shared.metrics import ARI_REQUEST_SECONDS as REQUEST_SECONDS
from shared.metrics import ARI_REQUESTS as REQUESTS

log = logging.getLogger("ari")

T = TypeVar("T")
# The largest answer read: GET /channels of a busy Asterisk is about 1 KB a channel. A longer body (a broken or
# hostile server) is refused as it streams in, not held whole.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Asterisk serves at most http.conf's `sessionlimit` HTTP connections at once (100 when unset; the shipped
# deploy/asterisk/http.conf sets 200) and closes any beyond it before answering ("HTTP session count exceeded"
# in its log). The pool stays below Asterisk's default, leaving room for the events WebSocket, a standby
# controller, `voice-agent doctor` and other ARI clients: a burst beyond it waits for a free connection (a few
# ms each) instead of being refused. A 100-call ramp at 25 calls a second used 7 at most.
MAX_CONNECTIONS = 64
# Connections Asterisk closed without an answer are a warning at most this often (a burst refuses many).
CLOSED_WARNING_EVERY_S = 60.0
# The statuses ARI's swagger documents, plus the server errors a proxy or a restarting Asterisk answers; any
# other is counted by its class ("4xx"), so a broken server cannot mint label values.
_STATUS_LABELS = {code: str(code) for code in (200, 204, 400, 401, 403, 404, 409, 412, 422, 500, 501, 502, 503, 504)}
Params = dict[str, str | int | bool | None]


class MediaTransport(TypedDict):
    """How an externalMedia leg reaches its far end (`external_media`'s transport arguments)."""

    external_host: str  # host:port, or "" for WebSocket server mode
    encapsulation: str
    transport: str
    connection_type: NotRequired[str]


_decoders: dict[Any, msgspec.json.Decoder] = {}
_encode = msgspec.json.Encoder().encode


def _decoder(kind: Any) -> msgspec.json.Decoder:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


def seg(value: str) -> str:
    """One path segment: ids are ours or Asterisk's, but a stray '/' or '?' must not change the route."""
    return quote(value, safe="")


def query(params: Params) -> dict[str, str]:
    """Query parameters as Asterisk reads them: None dropped, booleans as true/false, ints as decimal."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def ari_base(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/ari") else base + "/ari"


def _error_message(body: bytes) -> str:
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested deeper than the stack allows
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return body[:200].decode("utf-8", "replace").strip()


def _decode_body(kind: Any, body: bytes, status: int, http_method: str, path: str) -> Any:
    """A 2xx answer's body as `kind`; AriError when it is not one (not JSON, mistyped, nested too deeply)."""
    try:
        return json_text.decode(_decoder(kind).decode, body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise AriError(status, f"unexpected response body: {exc}", http_method, path) from None
    except RecursionError:  # msgspec's depth guard, in a free-form field (AsteriskInfo.config)
        raise AriError(status, "unexpected response body: nested too deeply", http_method, path) from None


def status_label(status: int) -> str:
    """The `status` label of va_ari_requests_total: a documented status as itself, any other by its class."""
    label = _STATUS_LABELS.get(status)
    if label is not None:
        return label
    return f"{status // 100}xx" if 100 <= status <= 599 else "invalid"


class AriRest:
    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 5.0,
        max_connections: int = MAX_CONNECTIONS,
        max_body_bytes: int = MAX_BODY_BYTES,
        gate: Callable[[], Awaitable[None]] | None = None,
        client_id: str = "",
    ):
        self.base = ari_base(base_url)
        agent = f"asterisk-ai-voice-agent ({client_id})" if client_id else "asterisk-ai-voice-agent"
        # Awaited before every request; raises (an AriError) when this process may not act on Asterisk now: a
        # controller that does not hold the leadership lease (controller/leadership.py).
        self.gate = gate
        self.username = username
        self._headers = {"Authorization": basic_auth(username, password), "User-Agent": agent}
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self._closed_unanswered = 0  # since the last warning about them
        self._closed_warned_at = -CLOSED_WARNING_EVERY_S

    def __repr__(self) -> str:
        return f"AriRest({self.base!r}, user={self.username!r})"

    async def __aenter__(self) -> "AriRest":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use: a ClientSession belongs to the running loop.
        if self._session is None or self._session.closed:
            # Keep-alive connections for concurrent call setups, no more than Asterisk accepts (MAX_CONNECTIONS).
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # --- the one request path ---------------------------------------------------------------------------

    async def _call(
        self,
        name: str,
        http_method: str,
        path: str,
        params: Params | None = None,
        *,
        variables: dict[str, str] | None = None,
        allow: frozenset[int] = frozenset(),
    ) -> tuple[int, bytes]:
        """Send one request; return (status, body) for 2xx and for the statuses in `allow`, raise otherwise."""
        if self.gate is not None:
            await self.gate()
        kwargs: dict[str, Any] = {}
        if params:
            kwargs["params"] = query(params)
        if variables is not None:
            kwargs["data"] = _encode({"variables": variables})
            kwargs["headers"] = {"Content-Type": "application/json"}
        started = time.perf_counter()
        try:
            async with self._http().request(http_method, self.base + path, **kwargs) as resp:
                status = resp.status
                body = await self._read_body(resp, http_method, path)
        except AriError:  # the body was over the limit
            self._count(name, "body_too_long", started)
            raise
        except asyncio.TimeoutError:
            self._count(name, "timeout", started)
            raise AriUnavailable(0, f"no answer within {self.timeout:g}s", http_method, path) from None
        except aiohttp.ServerDisconnectedError:
            self._count(name, "unavailable", started)
            raise AriUnavailable(0, self._closed_without_answer(), http_method, path) from None
        except aiohttp.ClientError as exc:
            self._count(name, "unavailable", started)
            raise AriUnavailable(0, f"{type(exc).__name__}: {exc}", http_method, path) from None
        self._count(name, status_label(status), started)
        log.debug("ARI %s %s -> %d (%.1f ms)", http_method, path, status, (time.perf_counter() - started) * 1000)
        if 200 <= status < 300 or status in allow:
            return status, body
        raise AriError(status, _error_message(body), http_method, path)

    def _closed_without_answer(self) -> str:
        """Asterisk closed the connection before answering: what the request's error says, and a warning (at most
        every CLOSED_WARNING_EVERY_S) naming the usual cause, which Asterisk itself logs only on its side."""
        why = "Asterisk closed the connection without answering (http.conf sessionlimit reached, or restarting)"
        self._closed_unanswered += 1
        now = time.monotonic()
        if now - self._closed_warned_at >= CLOSED_WARNING_EVERY_S:
            log.warning(
                "ARI: Asterisk closed %d connection(s) without answering: it refuses HTTP connections beyond "
                "http.conf's sessionlimit (100 when unset; its log says 'HTTP session count exceeded'), or it is "
                "restarting. This controller opens up to %d: set sessionlimit well above that (shipped: 200)",
                self._closed_unanswered,
                self.max_connections,
            )
            self._closed_unanswered = 0
            self._closed_warned_at = now
        return why

    async def _read_body(self, resp: aiohttp.ClientResponse, http_method: str, path: str) -> bytes:
        limit = self.max_body_bytes
        too_long = f"an answer body over the {limit}-byte limit"
        if resp.content_length is not None and resp.content_length > limit:
            raise AriError(resp.status, f"{too_long} ({resp.content_length} bytes announced)", http_method, path)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            body += chunk
            if len(body) > limit:
                raise AriError(resp.status, too_long, http_method, path)
        return bytes(body)

    @staticmethod
    def _count(name: str, status: str, started: float) -> None:
        REQUESTS.labels(name, status).inc()
        REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def _json(
        self,
        kind: type[T] | Any,
        name: str,
        http_method: str,
        path: str,
        params: Params | None = None,
        *,
        variables: dict[str, str] | None = None,
    ) -> T:
        status, body = await self._call(name, http_method, path, params, variables=variables)
        return _decode_body(kind, body, status, http_method, path)

    async def _optional(self, kind: type[T], name: str, path: str, params: Params | None = None) -> T | None:
        """GET that maps 404 to None."""
        status, body = await self._call(name, "GET", path, params, allow=frozenset({404}))
        if status == 404:
            return None
        return _decode_body(kind, body, status, "GET", path)

    async def _gone_ok(self, name: str, http_method: str, path: str, params: Params | None = None) -> bool:
        """A removal: True if done, False if the object was already gone (404)."""
        status, _ = await self._call(name, http_method, path, params, allow=frozenset({404}))
        return status != 404

    # --- asterisk ------------------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("ping", "GET", "/asterisk/ping")

    async def info(self, only: str | None = None) -> AsteriskInfo:
        """`only`: build, system, config, status, or several comma-separated."""
        return await self._json(AsteriskInfo, "info", "GET", "/asterisk/info", {"only": only})

    async def module(self, name: str) -> Module | None:
        """A loaded module (e.g. "chan_websocket.so"), or None when it is not loaded (404)."""
        return await self._optional(Module, "module", f"/asterisk/modules/{seg(name)}")

    # --- channels: reading ---------------------------------------------------------------------------------

    async def list_channels(self) -> list[Channel]:
        return await self._json(list[Channel], "list_channels", "GET", "/channels")

    async def get_channel(self, cid: str) -> Channel | None:
        return await self._optional(Channel, "get_channel", f"/channels/{seg(cid)}")

    async def get_variable(self, cid: str, name: str) -> str | None:
        """The value, or None when the variable is not set. A channel that does not exist raises (404
        "Provided channel was not found"): the caller must tell "unset" from "gone"."""
        path = f"/channels/{seg(cid)}/variable"
        status, body = await self._call("get_variable", "GET", path, {"variable": name}, allow=frozenset({404}))
        if status == 404:
            message = _error_message(body)
            if "channel" in message.lower():
                raise AriError(404, message, "GET", path)
            return None
        return _decode_body(Variable, body, status, "GET", path).value

    # --- channels: control ---------------------------------------------------------------------------------

    async def set_variable(self, cid: str, name: str, value: str) -> None:
        await self._call("set_variable", "POST", f"/channels/{seg(cid)}/variable", {"variable": name, "value": value})

    async def answer(self, cid: str) -> None:
        await self._call("answer", "POST", f"/channels/{seg(cid)}/answer")

    async def ring(self, cid: str) -> None:
        await self._call("ring", "POST", f"/channels/{seg(cid)}/ring")

    async def ring_stop(self, cid: str) -> None:
        await self._call("ring_stop", "DELETE", f"/channels/{seg(cid)}/ring")

    async def hangup(self, cid: str, reason: str = "normal") -> bool:
        """False if the channel was already gone (404)."""
        return await self._gone_ok("hangup", "DELETE", f"/channels/{seg(cid)}", {"reason": reason})

    async def continue_in_dialplan(
        self, cid: str, context: str, extension: str, priority: int = 1, label: str | None = None
    ) -> None:
        await self._call(
            "continue_in_dialplan",
            "POST",
            f"/channels/{seg(cid)}/continue",
            {"context": context, "extension": extension, "priority": priority, "label": label},
        )

    async def start_moh(self, cid: str, moh_class: str | None = None) -> None:
        await self._call("start_moh", "POST", f"/channels/{seg(cid)}/moh", {"mohClass": moh_class})

    async def stop_moh(self, cid: str) -> None:
        await self._call("stop_moh", "DELETE", f"/channels/{seg(cid)}/moh")

    async def play(self, cid: str, media: str, playback_id: str | None = None, lang: str | None = None) -> Playback:
        """`media`: "sound:hello-world", "tone:ring", … (several comma-separated play in sequence)."""
        return await self._json(
            Playback,
            "play",
            "POST",
            f"/channels/{seg(cid)}/play",
            {"media": media, "playbackId": playback_id, "lang": lang},
        )

    async def stop_playback(self, pid: str) -> bool:
        return await self._gone_ok("stop_playback", "DELETE", f"/playbacks/{seg(pid)}")

    async def dial(self, cid: str, caller: str | None = None, timeout: int | None = None) -> None:
        await self._call("dial", "POST", f"/channels/{seg(cid)}/dial", {"caller": caller, "timeout": timeout})

    # --- channels: creating --------------------------------------------------------------------------------

    async def external_media(
        self,
        *,
        app: str,
        channel_id: str,
        external_host: str,
        format: str,
        encapsulation: str = "rtp",
        transport: str = "udp",
        data: str | None = None,
        connection_type: str | None = None,
        direction: str | None = None,
        variables: dict[str, str] | None = None,
        transport_data: str | None = None,
    ) -> Channel:
        """AudioSocket: encapsulation="audiosocket", transport="tcp", data=<uuid> (required); Asterisk connects
        during the POST, so the server must already listen (else 500). `data` becomes StasisStart.args."""
        params: Params = {
            "app": app,
            "channelId": channel_id,
            "external_host": external_host or None,
            "format": format,
            "encapsulation": encapsulation,
            "transport": transport,
            "data": data,
            "connection_type": connection_type,
            "direction": direction,
            "transport_data": transport_data,
        }
        return await self._json(
            Channel, "external_media", "POST", "/channels/externalMedia", params, variables=variables
        )

    async def create_channel(
        self,
        *,
        endpoint: str,
        app: str,
        channel_id: str,
        app_args: str | None = None,
        originator: str | None = None,
        formats: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> Channel:
        """A leg that enters Stasis (state Down) without dialling; `dial` rings it. `originator` and `formats`
        are mutually exclusive (400)."""
        params: Params = {
            "endpoint": endpoint,
            "app": app,
            "channelId": channel_id,
            "appArgs": app_args,
            "originator": originator,
            "formats": formats,
        }
        return await self._json(Channel, "create_channel", "POST", "/channels/create", params, variables=variables)

    async def originate(
        self,
        *,
        endpoint: str,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        app: str | None = None,
        app_args: str | None = None,
        caller_id: str | None = None,
        timeout: int | None = None,
        channel_id: str | None = None,
        formats: str | None = None,
        variables: dict[str, str] | None = None,
        label: str | None = None,
        originator: str | None = None,
    ) -> Channel:
        """Either a dialplan target (context/extension/priority|label) or a Stasis app (app/app_args)."""
        params: Params = {
            "endpoint": endpoint,
            "context": context,
            "extension": extension,
            "priority": priority,
            "label": label,
            "app": app,
            "appArgs": app_args,
            "callerId": caller_id,
            "timeout": timeout,
            "channelId": channel_id,
            "originator": originator,
            "formats": formats,
        }
        return await self._json(Channel, "originate", "POST", "/channels", params, variables=variables)

    # --- bridges -------------------------------------------------------------------------------------------

    async def list_bridges(self) -> list[Bridge]:
        return await self._json(list[Bridge], "list_bridges", "GET", "/bridges")

    async def get_bridge(self, bid: str) -> Bridge | None:
        return await self._optional(Bridge, "get_bridge", f"/bridges/{seg(bid)}")

    async def create_bridge(self, bridge_id: str, type: str = "mixing", name: str | None = None) -> Bridge:
        """`type`: comma-separated attributes (mixing, holding, dtmf_events, proxy_media, video_sfu …)."""
        return await self._json(
            Bridge, "create_bridge", "POST", "/bridges", {"type": type, "bridgeId": bridge_id, "name": name}
        )

    async def destroy_bridge(self, bid: str) -> bool:
        return await self._gone_ok("destroy_bridge", "DELETE", f"/bridges/{seg(bid)}")

    async def add_channel(
        self,
        bid: str,
        *channel_ids: str,
        role: str | None = None,
        absorb_dtmf: bool | None = None,
        mute: bool | None = None,
    ) -> None:
        """A channel already in another bridge is moved (204)."""
        if not channel_ids:
            raise ValueError("add_channel needs at least one channel id")
        await self._call(
            "add_channel",
            "POST",
            f"/bridges/{seg(bid)}/addChannel",
            {"channel": ",".join(channel_ids), "role": role, "absorbDTMF": absorb_dtmf, "mute": mute},
        )

    async def remove_channel(self, bid: str, *channel_ids: str) -> None:
        if not channel_ids:
            raise ValueError("remove_channel needs at least one channel id")
        await self._call(
            "remove_channel", "POST", f"/bridges/{seg(bid)}/removeChannel", {"channel": ",".join(channel_ids)}
        )
