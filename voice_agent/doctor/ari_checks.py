"""ARI: reachable, credentials, the Stasis app registered, the modules the configured profiles need, and the
dialplan contexts the config names (which Asterisk 22's ARI cannot list: said so, with the command to run)."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.config.schema import Config
from shared.masking import mask_url
from voice_agent.doctor.result import Outcome, fail, ok, skipped, warn
from voice_agent.doctor.runner import Probe

CREDENTIALS_FIX = "set asterisk.username / asterisk.password (ASTERISK_ARI_PASSWORD) to a user of ari.conf"
# Always: ARI itself and the Stasis application. Per transport of a profile in use: its channel driver.
BASE_MODULES = ("res_ari.so", "app_stasis.so")
TRANSPORT_MODULES = {
    "audiosocket": ("chan_audiosocket.so",),
    "rtp": ("chan_rtp.so", "res_rtp_asterisk.so"),
    "websocket": ("chan_websocket.so",),
}


def ari_base(config: Config) -> str:
    base = config.asterisk.ari_url.rstrip("/")
    return base if base.endswith("/ari") else base + "/ari"


async def ari_get(probe: Probe, path: str) -> tuple[int, Any]:
    """(status, decoded JSON or None) of one GET under /ari."""
    settings = probe.loaded.config.asterisk
    auth = aiohttp.BasicAuth(settings.username, settings.password)
    async with aiohttp.ClientSession(auth=auth) as http:
        async with http.get(ari_base(probe.loaded.config) + path) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:  # not ARI answering (an HTML error page): the status says enough
                body = None
            return response.status, body


def transports_in_use(config: Config) -> set[str]:
    names = {config.default_profile} | {c.profile or config.default_profile for c in config.contexts.values()}
    return {p.transport for p in (config.profile(n) for n in names) if p is not None}


async def check_connect(probe: Probe) -> Outcome:
    url = mask_url(ari_base(probe.loaded.config))
    try:
        status, body = await ari_get(probe, "/asterisk/info")
    except aiohttp.ClientError as exc:
        return fail(
            f"nothing answers at {url}: {exc}",
            "is Asterisk running with http.conf enabled=yes (bindaddr/bindport) and ari.conf enabled=yes? "
            "check asterisk.ari_url",
        )
    if status == 401:
        return fail(f"{url} refused the credentials (401): wrong ARI user or password", CREDENTIALS_FIX)
    if status != 200:
        return fail(f"{url}/asterisk/info answered HTTP {status}", "is res_ari loaded? is asterisk.ari_url right?")
    version = (body or {}).get("system", {}).get("version", "?")
    return ok(f"Asterisk {version} at {url}, credentials accepted")


async def check_app(probe: Probe) -> Outcome:
    app = probe.loaded.config.asterisk.app_name
    status, body = await ari_get(probe, "/applications")
    if status != 200:
        return fail(f"GET /ari/applications answered HTTP {status}", "is res_ari_applications loaded?")
    if app in {a.get("name") for a in body or []}:
        return ok(f"Stasis app {app!r} is registered (a controller is connected)")
    return warn(
        f"Stasis app {app!r} is not registered: no controller is connected now; calls sent to Stasis({app}) fail",
        "start the controller (voice-agent controller); asterisk.app_name must match the dialplan's Stasis()",
    )


async def check_modules(probe: Probe) -> Outcome:
    transports = sorted(transports_in_use(probe.loaded.config))
    needed = [*BASE_MODULES, *(m for t in transports for m in TRANSPORT_MODULES[t])]
    missing = []
    for name in needed:
        status, body = await ari_get(probe, f"/asterisk/modules/{name}")
        if status == 404 or (status == 200 and (body or {}).get("status") != "Running"):
            missing.append(name)
        elif status != 200:
            return fail(f"GET /ari/asterisk/modules/{name} answered HTTP {status}", "is res_ari_asterisk loaded?")
    uses = f"for {', '.join(transports)} profiles" if transports else ""
    if missing:
        return fail(
            f"not loaded: {', '.join(missing)} (needed {uses})".replace(" ()", ""),
            f"load them: asterisk -rx 'module load {missing[0]}' and add `load = {missing[0]}` to modules.conf",
        )
    return ok(f"loaded: {', '.join(needed)} {uses}".strip())


def contexts_in_use(config: Config) -> list[str]:
    found: list[str] = []
    if config.controller.fallback.action == "continue" and config.controller.fallback.context:
        found.append(config.controller.fallback.context)
    transfer = config.tools.transfer
    by_type = {"extension": transfer.extension_context, "queue": transfer.queue_context}
    by_type["ringgroup"] = transfer.ringgroup_context
    for destination in transfer.destinations.values():
        found.append(destination.dialplan_context or by_type[destination.type])
    found.append(config.tools.leave_voicemail.dialplan_context)
    return list(dict.fromkeys(found))


async def check_dialplan(probe: Probe) -> Outcome:
    contexts = contexts_in_use(probe.loaded.config)
    # Checked on Asterisk 22.10.1: ARI has no dialplan resource, and GET /asterisk/variable does not evaluate
    # functions such as DIALPLAN_EXISTS() (it answers an empty value). Only the CLI or AMI can tell.
    return skipped(
        f"contexts used: {', '.join(contexts)}; Asterisk's ARI cannot list the dialplan, so not checked",
        "on the Asterisk host: asterisk -rx 'dialplan show CONTEXT' for each",
    )
