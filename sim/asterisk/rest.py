"""ARI REST resources under /ari: routing (404 `Resource not found`, 405 `Invalid method`), authentication
(HTTP Basic or `?api_key=user:pass`, else 401 `Authentication required`) and the operations the product
uses, with Asterisk 22.10.1's checks, order of checks and messages (res/ari/resource_*.c and trace 04)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from sim.asterisk.calls import split_host_port
from sim.asterisk.core import AsteriskCore
from sim.asterisk.errors import AriError, GENERIC_500, bad_request, conflict, not_found
from sim.asterisk.ids import ast_time
from sim.asterisk.params import Params
from sim.asterisk.state import Bridge, Channel


log = logging.getLogger("sim.asterisk")

Handler = Callable[[Params, dict[str, str]], Awaitable[Any]]

HANGUP_REASONS = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}
FORMATS = {
    "ulaw",
    "alaw",
    "gsm",
    "g722",
    "g726",
    "g729",
    "ilbc",
    "lpc10",
    "speex",
    "speex16",
    "speex32",
    "opus",
    "slin",
    "slin12",
    "slin16",
    "slin24",
    "slin32",
    "slin44",
    "slin48",
    "slin96",
    "slin192",
    "adpcm",
    "g719",
    "siren7",
    "siren14",
    "testlaw",
    "h264",
    "vp8",
    "vp9",
    "t140",
    "none",
}
BRIDGE_TYPES = {"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"}
MODULES = {
    "app_dial.so": ("Dialing Application", "core"),
    "app_queue.so": ("True Call Queueing", "core"),
    "app_stasis.so": ("Stasis dialplan application", "core"),
    "app_voicemail.so": ("Comedian Mail (Voicemail System)", "core"),
    "chan_audiosocket.so": ("AudioSocket Channel", "extended"),
    "chan_pjsip.so": ("PJSIP Channel Driver", "core"),
    "chan_rtp.so": ("RTP Media Channel", "core"),
    "chan_websocket.so": ("Websocket Media Channel", "core"),
    "res_ari.so": ("Asterisk RESTful Interface", "core"),
    "res_audiosocket.so": ("AudioSocket support", "extended"),
    "res_musiconhold.so": ("Music On Hold Resource", "core"),
    "res_stasis.so": ("Stasis application support", "core"),
}


def authenticate(request: web.Request, users: dict[str, str]) -> str | None:
    """The ARI user of `request` (HTTP Basic, or `?api_key=user:pass`), or None."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if users.get(user) == password:
            return user
    api_key = request.query.get("api_key")
    if api_key:
        user, _, password = api_key.partition(":")
        if users.get(user) == password:
            return user
    return None


@dataclass
class RestRecord:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    t: float = field(default_factory=time.monotonic)
    response: Any = None
    client: str = ""  # the User-Agent: which controller sent it (tests of a standby controller)


class Route:
    def __init__(self, template: str, methods: dict[str, Handler]):
        self.template = template
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self.regex = re.compile(f"^{pattern}$")
        self.methods = methods
        self.literal = "{" not in template


class AriRest:
    def __init__(self, sim: AsteriskCore):
        self.sim = sim
        self.pbx = sim.pbx
        self.calls = sim.calls
        self.log: list[RestRecord] = []  # every request, when sim.record
        r = self._route
        r("/asterisk/info", GET=self.asterisk_info)
        r("/asterisk/ping", GET=self.asterisk_ping)
        r("/asterisk/modules", GET=self.modules)
        r("/asterisk/modules/{moduleName}", GET=self.module)
        r("/asterisk/variable", GET=self.global_var_get, POST=self.global_var_set)
        r("/applications", GET=self.applications)
        r("/applications/{applicationName}", GET=self.application)
        r("/applications/{applicationName}/subscription", POST=self.app_subscribe, DELETE=self.app_unsubscribe)
        r("/applications/{applicationName}/eventFilter", PUT=self.app_filter)
        r("/channels", GET=self.channels_list, POST=self.originate)
        r("/channels/create", POST=self.channel_create)
        r("/channels/externalMedia", POST=self.external_media)
        r("/channels/{channelId}", GET=self.channel_get, POST=self.originate, DELETE=self.channel_hangup)
        r("/channels/{channelId}/continue", POST=self.channel_continue)
        r("/channels/{channelId}/answer", POST=self.channel_answer)
        r("/channels/{channelId}/ring", POST=self.channel_ring, DELETE=self.channel_ring_stop)
        r("/channels/{channelId}/progress", POST=self.channel_noop)
        r("/channels/{channelId}/hold", POST=self.channel_noop, DELETE=self.channel_noop)
        r("/channels/{channelId}/mute", POST=self.channel_noop, DELETE=self.channel_noop)
        r("/channels/{channelId}/silence", POST=self.channel_noop, DELETE=self.channel_noop)
        r("/channels/{channelId}/moh", POST=self.channel_moh, DELETE=self.channel_moh_stop)
        r("/channels/{channelId}/play", POST=self.channel_play)
        r("/channels/{channelId}/play/{playbackId}", POST=self.channel_play)
        r("/channels/{channelId}/variable", GET=self.channel_var_get, POST=self.channel_var_set)
        r("/channels/{channelId}/dial", POST=self.channel_dial)
        r("/channels/{channelId}/dtmf", POST=self.channel_dtmf)
        r("/channels/{channelId}/redirect", POST=self.channel_redirect)
        r("/channels/{channelId}/move", POST=self.channel_move)
        r("/channels/{channelId}/rtp_statistics", GET=self.channel_rtp_stats)
        r("/bridges", GET=self.bridges_list, POST=self.bridge_create)
        r("/bridges/{bridgeId}", GET=self.bridge_get, POST=self.bridge_create_with_id, DELETE=self.bridge_destroy)
        r("/bridges/{bridgeId}/addChannel", POST=self.bridge_add)
        r("/bridges/{bridgeId}/removeChannel", POST=self.bridge_remove)
        r("/bridges/{bridgeId}/moh", POST=self.bridge_moh, DELETE=self.bridge_moh_stop)
        r("/bridges/{bridgeId}/play", POST=self.bridge_play)
        r("/bridges/{bridgeId}/play/{playbackId}", POST=self.bridge_play)
        r("/playbacks/{playbackId}", GET=self.playback_get, DELETE=self.playback_stop)
        r("/playbacks/{playbackId}/control", POST=self.playback_control)
        r("/events", GET=self.events_without_upgrade)

    routes: list[Route]

    def _route(self, template: str, **methods: Handler) -> None:
        if not hasattr(self, "routes"):
            self.routes = []
        self.routes.append(Route(template, methods))

    # --- HTTP plumbing -----------------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> str | None:
        return authenticate(request, self.sim.users)

    def resolve(self, path: str, method: str) -> tuple[Handler | None, dict[str, str], int]:
        candidates = [(r, m) for r in self.routes if (m := r.regex.match(path))]
        candidates.sort(key=lambda found: not found[0].literal)
        if not candidates:
            return None, {}, 404
        for route, match in candidates:
            if method in route.methods:
                return route.methods[method], match.groupdict(), 200
        return None, {}, 405

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info.get("tail", "")
        query = {k: request.query.getall(k) for k in request.query.keys()}
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        status, payload, headers = await self._dispatch(request, path, query, body)
        record = RestRecord(
            request.method,
            path,
            {k: v[0] for k, v in query.items()},
            body,
            status,
            response=payload,
            client=request.headers.get("User-Agent", ""),
        )
        if self.sim.record:
            self.log.append(record)
        if status == 204 or payload is None:
            return web.Response(status=status, headers=headers)
        return web.Response(
            status=status,
            text=json.dumps(payload, separators=(",", ":")),
            content_type="application/json",
            headers=headers,
        )

    async def _dispatch(
        self, request: web.Request, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if self.authenticate(request) is None:
            return (
                401,
                {"message": "Authentication required"},
                {"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'},
            )
        handler, match, code = self.resolve(path, request.method)
        if handler is None:
            return code, {"message": "Resource not found" if code == 404 else "Invalid method"}, {}
        params = Params(query, body)
        try:
            result = await handler(params, match)
        except AriError as exc:
            return exc.status, {"message": exc.message}, {}
        except Exception:
            log.exception("ARI %s %s failed", request.method, path)
            return 500, {"message": GENERIC_500}, {}
        if isinstance(result, tuple):
            return result
        if result is None:
            return 204, None, {}
        return 200, result, {}

    # --- lookups shared by the handlers ------------------------------------------------------------------
    def control(self, channel_id: str) -> Channel:
        """find_control(): 404 for an unknown channel, 409 for one outside Stasis."""
        ch = self.pbx.find(channel_id)
        if ch is None:
            raise not_found("Channel not found")
        if not ch.in_stasis:
            raise conflict("Channel not in Stasis application")
        return ch

    @staticmethod
    def state_valid(ch: Channel) -> None:
        """channel_state_invalid(): outbound channels still Down/Ringing cannot be manipulated yet."""
        if ch.state in ("Down", "Rsrved", "Ringing"):
            raise AriError(412, "Channel in invalid state")

    def bridge(self, bridge_id: str) -> Bridge:
        bridge = self.pbx.bridges.get(bridge_id)
        if bridge is None or not bridge.stasis:
            raise not_found("Bridge not found")
        return bridge

    def snap(self, ch: Channel) -> dict:
        return self.pbx.snap(ch)

    # --- /asterisk ---------------------------------------------------------------------------------------
    async def asterisk_info(self, p: Params, m: dict) -> dict:
        sim = self.sim
        sections = {
            "build": {
                "os": "Linux",
                "kernel": "6.1.0-sim",
                "options": "",
                "machine": "x86_64",
                "date": "2026-08-07 00:00:00 UTC",
                "user": "asterisk",
            },
            "system": {"version": sim.version, "entity_id": sim.entity_id},
            "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""}},
            "status": {"startup_time": sim.startup_time, "last_reload_time": sim.startup_time},
        }
        only = p.list("only")
        return {k: v for k, v in sections.items() if not only or k in only}

    async def asterisk_ping(self, p: Params, m: dict) -> dict:
        return {"asterisk_id": self.sim.entity_id, "ping": "pong", "timestamp": ast_time()}

    async def modules(self, p: Params, m: dict) -> list:
        return [self._module(name) for name in sorted(MODULES)]

    def _module(self, name: str) -> dict:
        description, level = MODULES[name]
        return {"name": name, "description": description, "use_count": 0, "status": "Running", "support_level": level}

    async def module(self, p: Params, m: dict) -> dict:
        # As Asterisk 22.10.1 answers (res/ari/resource_asterisk.c): found the way `module show` finds a module
        # (case-insensitive, ".so" optional), else 404; then described only under its exact file name, else 409.
        name = m["moduleName"]
        if name in MODULES:
            return self._module(name)
        stem = name.lower().removesuffix(".so")
        if any(known.removesuffix(".so") == stem for known in MODULES):
            raise conflict("Module information could not be retrieved")
        raise not_found("Module could not be found in running modules")

    async def global_var_get(self, p: Params, m: dict) -> dict:
        name = p.get("variable")
        if not name:
            raise bad_request("Variable name is required")
        return {"value": self.sim.global_vars.get(name, "")}

    async def global_var_set(self, p: Params, m: dict) -> None:
        name = p.get("variable")
        if not name:
            raise bad_request("Variable name is required")
        self.sim.global_vars[name] = p.get("value") or ""

    # --- /applications -----------------------------------------------------------------------------------
    async def applications(self, p: Params, m: dict) -> list:
        return [app.to_json() for app in self.sim.apps.apps.values()]

    def _app(self, name: str):
        app = self.sim.apps.get(name)
        if app is None:
            raise not_found("Application not found")
        return app

    async def application(self, p: Params, m: dict) -> dict:
        return self._app(m["applicationName"]).to_json()

    async def app_subscribe(self, p: Params, m: dict) -> dict:
        app = self._app(m["applicationName"])
        sources = p.list("eventSource")
        if not sources:
            raise bad_request("Missing parameter eventSource")
        for source in sources:
            kind, _, ident = source.partition(":")
            if kind == "channel":
                ch = self.pbx.find(ident)
                if ch is None:
                    raise AriError(422, "Event source does not exist")
                app.channels[ch.id] = ch
            elif kind == "bridge":
                bridge = self.pbx.bridges.get(ident)
                if bridge is None:
                    raise AriError(422, "Event source does not exist")
                app.bridge_refs[bridge.id] += 1
            elif kind not in ("endpoint", "deviceState"):
                raise bad_request("Invalid event source URI scheme")
        return app.to_json()

    async def app_unsubscribe(self, p: Params, m: dict) -> dict:
        app = self._app(m["applicationName"])
        for source in p.list("eventSource"):
            kind, _, ident = source.partition(":")
            if kind == "channel":
                app.channels.pop(ident, None)
            elif kind == "bridge":
                app.bridge_refs.pop(ident, None)
        return app.to_json()

    async def app_filter(self, p: Params, m: dict) -> dict:
        app = self._app(m["applicationName"])
        body = p.body.get("filter", p.body) if p.body else {}
        allowed, disallowed = body.get("allowed", []), body.get("disallowed", [])
        if not isinstance(allowed, list) or not isinstance(disallowed, list):
            raise bad_request("Invalid format definition")
        app.events_allowed, app.events_disallowed = allowed, disallowed
        return app.to_json()

    # --- /channels: listing, originate, create, externalMedia --------------------------------------------
    async def channels_list(self, p: Params, m: dict) -> list:
        return [self.snap(ch) for ch in self.pbx.visible_channels()]

    async def channel_get(self, p: Params, m: dict) -> dict:
        ch = self.pbx.find(m["channelId"])
        if ch is None:
            raise not_found("Channel not found")
        return self.snap(ch)

    def _formats(self, p: Params) -> str | None:
        formats = p.get("formats")
        if not formats:
            return None
        names = [f.strip() for f in formats.split(",")]
        for name in names:
            if name not in FORMATS:
                raise bad_request(f"Provided format ({name}) was not found")
        return names[0]

    async def originate(self, p: Params, m: dict) -> dict:
        variables = p.variables()
        channel_id = m.get("channelId") or p.get("channelId")
        other_id = p.get("otherChannelId")
        for ident in (channel_id, other_id):
            if ident and len(ident) > 128:
                raise bad_request("Uniqueid length exceeds maximum of 128")
        endpoint = p.get("endpoint")
        if not endpoint:
            raise bad_request("Endpoint must be specified")
        if p.get("originator") and p.get("formats"):
            raise bad_request("Originator and formats can't both be specified")
        tech, _, device = endpoint.partition("/")
        if not tech or not device:
            raise bad_request("Invalid endpoint specified")
        app, extension = p.get("app"), p.get("extension")
        if not app and not extension:
            raise bad_request("Application or extension must be specified")
        context = p.get("context") or "default"
        priority = p.int("priority", 0) or 1
        label = p.get("label")
        if not app and label:
            if label.isdigit():
                priority = int(label)
            else:
                found = self.sim.dialplan.find_label(context, extension or "s", label)
                if found is None:
                    raise not_found("Requested label can not be found")
                priority = found
        originator = p.get("originator")
        if originator and self.pbx.find(originator) is None:
            raise bad_request("Provided originator channel was not found")
        fmt = self._formats(p)
        ch = await self.calls.originate(
            endpoint,
            app=app,
            app_args=p.get("appArgs"),
            context=context,
            extension=extension,
            priority=priority,
            caller_id=p.get("callerId"),
            timeout=p.int("timeout", 30),
            variables=variables,
            channel_id=channel_id,
            other_id=other_id,
            fmt=fmt,
        )
        return self.snap(ch)

    async def channel_create(self, p: Params, m: dict) -> dict:
        variables = p.variables()
        if p.get("originator") and p.get("formats"):
            raise bad_request("Originator and formats can't both be specified")
        endpoint, app = p.get("endpoint"), p.get("app")
        if not endpoint:
            raise bad_request("Endpoint must be specified")
        if not app:
            raise bad_request("Application name is required")
        originator = self.pbx.find(p.get("originator") or "") if p.get("originator") else None
        fmt = self._formats(p)
        ch = await self.calls.create(
            endpoint,
            app=app,
            app_args=p.get("appArgs"),
            variables=variables,
            channel_id=p.get("channelId"),
            other_id=p.get("otherChannelId"),
            originator=originator,
            fmt=fmt,
        )
        return self.snap(ch)

    async def external_media(self, p: Params, m: dict) -> dict:
        variables = p.variables()
        app = p.get("app")
        if not app:
            raise bad_request("app cannot be empty")
        encapsulation = (p.get("encapsulation") or "rtp").lower()
        transport = (p.get("transport") or "udp").lower()
        connection_type = (p.get("connection_type") or "client").lower()
        host_port = p.get("external_host")
        if not host_port and not (transport == "websocket" and connection_type == "server"):
            raise bad_request("external_host is required for all but websocket server connections")
        fmt = p.get("format")
        if not fmt:
            raise bad_request("format cannot be empty")
        if encapsulation == "audiosocket" and transport != "tcp":
            # Checked on 22.10.1: audiosocket over udp is a 400.
            raise bad_request("The encapsulation and/or transport is not supported")
        if transport == "websocket" and encapsulation != "none":
            raise bad_request("encapsulation must be 'none' for websocket transport")
        if transport != "websocket" and connection_type == "server":
            raise bad_request("'server' connection_type can only be used with the websocket transport")
        if (encapsulation, transport) == ("none", "websocket"):
            if connection_type != "server":  # a websocket_client.conf connection: none configured here
                raise bad_request("external_host must be a valid websocket_client connection id.")
            from sim.asterisk import websocket_media

            return await websocket_media.external_media(
                self.calls,
                self.sim.websocket_media,
                app=app,
                fmt=fmt,
                data=p.get("data"),
                channel_id=p.get("channelId"),
                variables=variables,
                transport_data=p.get("transport_data"),
            )
        if (encapsulation, transport) not in (("rtp", "udp"), ("audiosocket", "tcp")):
            raise AriError(501, "The encapsulation and/or transport is not supported")
        if not host_port or split_host_port(host_port) is None:
            raise bad_request("external_host must be <host>:<port>")
        data = p.get("data")
        if encapsulation == "audiosocket" and not data:
            raise bad_request("data can not be empty")
        return await self.calls.external_media(
            app=app,
            host_port=host_port,
            encapsulation=encapsulation,
            fmt=fmt,
            data=data,
            channel_id=p.get("channelId"),
            variables=variables,
        )

    # --- /channels/{id} operations -----------------------------------------------------------------------
    async def channel_hangup(self, p: Params, m: dict) -> None:
        ch = self.pbx.find(m["channelId"])
        if ch is None:
            raise not_found("Channel not found")
        reason, reason_code = p.get("reason"), p.get("reason_code")
        if reason and reason_code:
            raise bad_request("The reason and reason_code can't both be specified")
        if reason_code:
            try:
                cause = int(reason_code)
            except ValueError:
                raise bad_request("Invalid reason for hangup reason code provided") from None
        elif reason:
            if reason not in HANGUP_REASONS:
                raise bad_request("Invalid reason for hangup reason provided")
            cause = HANGUP_REASONS[reason]
        else:
            cause = 16
        self.pbx.hangup(ch, cause, soft=True)

    async def channel_continue(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        context_arg, exten_arg = p.get("context"), p.get("extension")
        if not context_arg:
            context, exten = ch.context, exten_arg or ch.exten
        else:
            context, exten = context_arg, exten_arg or "s"
        label, priority = p.get("label"), p.int("priority", 0)
        if label:
            if label.lstrip("-").isdigit():
                prio = int(label)
            else:
                found = self.sim.dialplan.find_label(context, exten, label)
                if found is None:
                    raise not_found("Requested label can not be found")
                prio = found
            if prio == 0:
                raise bad_request("Requested priority is illegal")
        elif priority:
            prio = priority
        elif not context_arg and not exten_arg:
            prio = ch.priority + 1
        else:
            prio = 1
        self.pbx.continue_in_dialplan(ch, (context, exten, prio))

    async def channel_answer(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        self.sim.interpreter.answer(ch)

    async def channel_ring(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        self.pbx.set_ringback(ch, True)

    async def channel_ring_stop(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        self.pbx.set_ringback(ch, False)

    async def channel_noop(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)

    async def channel_moh(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        self.pbx.set_moh(ch, True)

    async def channel_moh_stop(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        self.pbx.set_moh(ch, False)

    def _play(self, p: Params, m: dict, target: Channel | Bridge, app: str | None, language: str):
        media = p.list("media")
        if not media:
            raise bad_request("Missing parameter media")
        if p.int("skipms", 3000) < 0:
            raise bad_request("skipms cannot be negative")
        if p.int("offsetms", 0) < 0:
            raise bad_request("offsetms cannot be negative")
        playback_id = m.get("playbackId") or p.get("playbackId") or self.pbx.ids.token(16)
        if playback_id in self.pbx.playbacks:
            raise AriError(409, "Playback with the given ID already exists")  # not in the traces
        playback = self.pbx.play(target, media, playback_id, app, p.get("lang") or language)
        return 201, playback.snapshot(), {"Location": f"/playbacks/{playback_id}"}

    async def channel_play(self, p: Params, m: dict):
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        return self._play(p, m, ch, ch.stasis_app, ch.language)

    async def channel_var_get(self, p: Params, m: dict) -> dict:
        name = p.get("variable")
        if not name:
            raise bad_request("Variable name is required")
        ch = self.pbx.find(m["channelId"])
        if ch is None:
            raise not_found("Provided channel was not found")
        if name.endswith(")"):
            value = self.sim.interpreter.lookup(ch, name)
            known = name.upper() in (
                "CALLERID(NUM)",
                "CALLERID(NAME)",
                "CALLERID(ALL)",
                "CHANNEL(NAME)",
                "CHANNEL(STATE)",
                "CHANNEL(LANGUAGE)",
            )
            if not known:
                raise AriError(500, "Unable to read provided function")
            return {"value": value}
        if name not in ch.variables:
            raise not_found("Provided variable was not found")
        return {"value": ch.variables[name]}

    async def channel_var_set(self, p: Params, m: dict) -> None:
        name = p.get("variable")
        if not name:
            raise bad_request("Variable name is required")
        ch = self.control(m["channelId"])
        self.pbx.set_var(ch, name, p.get("value") or "")

    async def channel_dial(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        caller = self.pbx.find(p.get("caller") or "") if p.get("caller") else None
        if ch.state not in ("Down", "Rsrved"):
            raise conflict("Channel is not in the 'Down' state")
        if not ch.ari_created or not ch.dialstring:
            raise conflict("Dialing a channel not created by ARI")
        if ch.dialing:
            raise conflict("Channel is already being dialed")  # not in the traces
        if caller is not None:
            ch.connected_name, ch.connected_number = caller.caller_name, caller.caller_number
        self.calls.stasis_dial(ch, caller, p.int("timeout", 0))

    async def channel_dtmf(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        digits = p.get("dtmf")
        if not digits:
            raise bad_request("DTMF is required")
        between = p.int("between", 100) / 1000

        async def send() -> None:
            import asyncio

            for i, digit in enumerate(digits):
                if i:
                    await asyncio.sleep(between)
                self.pbx.dtmf_out(ch, digit, p.int("duration", 100))

        self.pbx.spawn(send(), name="send-dtmf")

    async def channel_redirect(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        self.state_valid(ch)
        endpoint = p.get("endpoint")
        if not endpoint:
            raise AriError(400, "Required parameter 'endpoint' not provided.")
        tech, sep, resource = endpoint.partition("/")
        if not sep or not tech:
            raise AriError(422, f"Endpoint parameter '{endpoint}' does not contain tech/resource")
        if not resource:
            raise AriError(422, f"No resource provided in endpoint parameter '{endpoint}'")
        if tech.lower() != ch.tech.lower():
            raise AriError(422, f"Endpoint technology '{tech}' does not match channel technology '{ch.tech}'")
        exten, _, context = resource.partition("@")
        self.pbx.continue_in_dialplan(ch, (context or ch.context, exten, 1))

    async def channel_move(self, p: Params, m: dict) -> None:
        ch = self.control(m["channelId"])
        app = p.get("app")
        if not app:
            raise bad_request("Missing parameter app")
        target = self.sim.apps.get(app)
        if target is None or not target.active:
            from sim.asterisk import events as ev

            event = ev._ev("ApplicationMoveFailed", channel=self.snap(ch), destination=app, args=p.list("appArgs"))
            self.pbx.emit(event, channels=[ch])
            return
        self.pbx.move_to_app(ch, app, p.list("appArgs"))

    async def channel_rtp_stats(self, p: Params, m: dict) -> None:
        ch = self.pbx.find(m["channelId"])
        if ch is None:
            raise not_found("Channel not found")
        if ch.tech in ("UnicastRTP", "AudioSocket", "Local"):
            raise not_found("RTP info not found")
        raise AriError(403, "Unsupported channel type")

    # --- /bridges ----------------------------------------------------------------------------------------
    async def bridges_list(self, p: Params, m: dict) -> list:
        return [b.snapshot() for b in self.pbx.bridges.values() if b.stasis]

    async def bridge_get(self, p: Params, m: dict) -> dict:
        return self.bridge(m["bridgeId"]).snapshot()

    def _types(self, p: Params) -> list[str]:
        types = p.list("type") or ["mixing"]
        if any(t not in BRIDGE_TYPES for t in types):
            raise AriError(500, "Unable to create bridge")
        return types

    async def bridge_create(self, p: Params, m: dict) -> dict:
        bridge_id = p.get("bridgeId")
        if bridge_id and bridge_id in self.pbx.bridges:
            raise conflict(f"Bridge with id '{bridge_id}' already exists")
        types = self._types(p)
        return self.pbx.create_bridge(bridge_id or self.pbx.ids.token(16), types, p.get("name") or "").snapshot()

    async def bridge_create_with_id(self, p: Params, m: dict) -> dict:
        bridge_id = m["bridgeId"]
        existing = self.pbx.bridges.get(bridge_id)
        if existing is not None:  # POST /bridges/{id} on an existing bridge is an update
            if p.get("name") and p.get("name") != existing.name:
                raise AriError(500, "Changing bridge name is not implemented")
            if p.get("type"):
                raise AriError(500, "Supplying a bridge type when updating a bridge is not allowed.")
            return existing.snapshot()
        types = self._types(p)
        return self.pbx.create_bridge(bridge_id, types, p.get("name") or "").snapshot()

    async def bridge_destroy(self, p: Params, m: dict) -> None:
        self.pbx.destroy_bridge(self.bridge(m["bridgeId"]))

    def _bridge_channels(self, p: Params) -> list[Channel]:
        ids = p.list("channel")
        if not ids:
            raise bad_request("Missing parameter channel")
        out = []
        for ident in ids:
            ch = self.pbx.find(ident)
            if ch is None:
                raise bad_request("Channel not found")
            if not ch.in_stasis:
                raise AriError(422, "Channel not in Stasis application")
            out.append(ch)
        return out

    async def bridge_add(self, p: Params, m: dict) -> None:
        bridge = self.bridge(m["bridgeId"])
        for ch in self._bridge_channels(p):
            self.pbx.add_to_bridge(bridge, ch)
            if bridge.moh:
                self.pbx.set_moh(ch, True)

    async def bridge_remove(self, p: Params, m: dict) -> None:
        bridge = self.bridge(m["bridgeId"])
        channels = self._bridge_channels(p)
        for ch in channels:
            if ch.bridge is not bridge:
                raise AriError(422, "Channel not in this bridge")
        for ch in channels:
            self.pbx.leave_bridge(ch, "remove")

    async def bridge_moh(self, p: Params, m: dict) -> None:
        bridge = self.bridge(m["bridgeId"])
        bridge.moh = True
        for ch in bridge.members:
            self.pbx.set_moh(ch, True)

    async def bridge_moh_stop(self, p: Params, m: dict) -> None:
        bridge = self.bridge(m["bridgeId"])
        bridge.moh = False
        for ch in bridge.members:
            self.pbx.set_moh(ch, False)

    async def bridge_play(self, p: Params, m: dict):
        bridge = self.bridge(m["bridgeId"])
        app = next((c.stasis_app for c in bridge.members if c.stasis_app), None)
        return self._play(p, m, bridge, app, "en")

    # --- /playbacks --------------------------------------------------------------------------------------
    def _playback(self, playback_id: str):
        playback = self.pbx.playbacks.get(playback_id)
        if playback is None:
            raise not_found("Playback not found")
        return playback

    async def playback_get(self, p: Params, m: dict) -> dict:
        return self._playback(m["playbackId"]).snapshot()

    async def playback_stop(self, p: Params, m: dict) -> None:
        self.pbx.stop_playback(self._playback(m["playbackId"]))

    async def playback_control(self, p: Params, m: dict) -> None:
        self._playback(m["playbackId"])
        operation = p.get("operation")
        if operation not in ("restart", "pause", "unpause", "reverse", "forward"):
            raise bad_request("Invalid operation")

    async def events_without_upgrade(self, p: Params, m: dict):
        raise bad_request("Invalid request: missing WebSocket upgrade")
