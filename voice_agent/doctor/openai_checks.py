"""OpenAI: the key (present, not a placeholder), the guide's `GET /v1/models` test with it, the configured
model listed, then the Realtime handshake the media worker makes (its latency is the network's to the API)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import aiohttp
import msgspec

from media_worker.realtime.client import ClientSettings, Connection, RealtimeError
from shared.config.ga_session import effective_model
from shared.config.placeholders import is_placeholder
from shared.masking import mask_url
from voice_agent.doctor.result import Outcome, fail, ok, warn
from voice_agent.doctor.runner import Probe

KEY_FIX = "put your key in OPENAI_API_KEY (.env) or providers.openai_realtime.api_key (platform.openai.com/api-keys)"


class _Error(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _Error


class _Model(msgspec.Struct):
    id: str


class _Listing(msgspec.Struct):
    data: list[_Model]


def models_url(base_url: str) -> str:
    """`wss://api.openai.com/v1/realtime` → `https://api.openai.com/v1/models` (ws → http, wss → https)."""
    parts = urlsplit(base_url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"{mask_url(base_url)} is not a ws(s):// URL")
    prefix = parts.path.split("/v1", 1)[0] if "/v1" in parts.path else ""
    return f"{scheme}://{parts.netloc}{prefix}/v1/models"


async def check_key(probe: Probe) -> Outcome:
    key = probe.loaded.config.providers.openai_realtime.api_key
    if not key:
        return fail("no API key", KEY_FIX)
    if is_placeholder(key):
        return fail("the API key is a placeholder, not a key", KEY_FIX)
    return ok("an API key is set")


async def check_models(probe: Probe) -> Outcome:
    provider = probe.loaded.config.providers.openai_realtime
    url = models_url(provider.base_url)
    headers = ClientSettings.from_config(provider).headers()
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(url, headers=headers) as response:
                status, body = response.status, await response.read()
        except aiohttp.ClientError as exc:
            return fail(
                f"cannot reach {url}: {exc}",
                "check this host's network, DNS and proxy toward the API, and providers.openai_realtime.base_url",
            )
    if status == 200:
        ids = {m.id for m in msgspec.json.decode(body, type=_Listing).data}
        model = effective_model(provider.model)
        if model in ids:
            return ok(f"the key is accepted; {model} is available ({len(ids)} models listed)")
        realtime = sorted(i for i in ids if "realtime" in i)
        return fail(
            f"the key is accepted but {model} is not among its models",
            f"set providers.openai_realtime.model to one of: {', '.join(realtime) or '(no realtime model listed)'}",
        )
    error = _error(body)
    said = f": {error.message}" if error.message else ""
    if status == 401:
        return fail(f"the key is wrong: {url} answered 401 ({error.code or 'unauthorized'}){said}", KEY_FIX)
    if status == 429 and error.code == "insufficient_quota":
        return fail(f"the key has no quota left (429 insufficient_quota){said}", "add credit at platform.openai.com")
    if status == 429:
        return warn(f"rate-limited (429){said}", "try again in a minute; check the project's rate limits")
    if status == 403:
        return fail(f"the key may not use this API (403){said}", "check the key's project, organization and region")
    return fail(f"{url} answered HTTP {status}{said}", "check providers.openai_realtime.base_url")


def _error(body: bytes) -> _Error:
    try:
        return msgspec.json.decode(body, type=_ErrorBody).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Error(message=" ".join(body.decode("utf-8", "replace").split())[:200])


async def check_realtime(probe: Probe) -> Outcome:
    provider = probe.loaded.config.providers.openai_realtime
    settings = ClientSettings.from_config(provider, open_timeout_s=probe.timeout_s, handshake_timeout_s=probe.timeout_s)
    started = time.monotonic()
    try:
        connection = await Connection.open(settings)
    except RealtimeError as exc:
        refused = exc.failure
        if refused is not None and refused.kind.blocks_the_key:  # an `error` event or 401/403/429 instead of a session
            return fail(f"the Realtime API answered the handshake with {refused.detail or refused.reason}", KEY_FIX)
        return fail(f"the Realtime handshake failed: {exc}", "see the openai.models line; check base_url")
    elapsed_ms = (time.monotonic() - started) * 1000
    try:
        first = msgspec.json.decode(connection.first_frame)
    finally:
        await connection.close()
    kind = first.get("type") if isinstance(first, dict) else None
    if kind == "session.created":
        return ok(f"session.created in {elapsed_ms:.0f} ms (connect + TLS + handshake: the network's latency)")
    message = first.get("error", {}).get("message", "") if kind == "error" else f"a {kind!r} frame"
    return fail(f"the Realtime API answered the handshake with {message}", KEY_FIX)
