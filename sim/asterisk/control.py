"""The control API of the simulator, outside /ari (for the demo and load tests that run it as a process).

    POST /sim/calls                {context, exten, caller_name, caller_number, variables, audio_wav, rate,
                                    send_silence, echo_db}                       -> 201 {"id": channel id}
    GET  /sim/calls/{id}           state, trail, stasis_status, in_stasis, heard_ms, heard_dbfs, bridge
    GET  /sim/calls/{id}/voice     {answered_t, voiced: [[t0, t1], ...]}: when the caller's audio started and
                                   when it heard speech (time.monotonic() of this host: the harness on the same
                                   machine compares it with its own clock)
    GET  /sim/calls/{id}/heard     {answered_t, windows: [[t, dBFS], ...]}: the level of every 5 ms the caller
                                   heard, timed from its chunk's arrival (bench/bargein.py measures on it)
    POST /sim/calls/{id}/hangup    the caller hangs up                          -> 204
    POST /sim/calls/{id}/dtmf      {digits}                                     -> 204
    POST /sim/calls/{id}/save      {path}: write what the caller heard as WAV   -> 200 {path, ms}
    GET  /sim/state                channel / bridge counts, apps, calls, voicemails
    GET  /sim/voicemails           recorded messages
    POST /sim/drop-event-sockets   {code}: close every /ari/events socket       -> 204

Same credentials as ARI (Basic or api_key).
"""

from __future__ import annotations

import os
import wave

from aiohttp import web

from sim.asterisk.audio import CallerAudio, spans
from sim.asterisk.core import AsteriskCore, SimCall
from sim.asterisk.rest import authenticate
from sim.asterisk.websocket import EventsEndpoint

WAVS_KEPT = 4


class ControlApi:
    def __init__(self, sim: AsteriskCore, events: EventsEndpoint):
        self.sim = sim
        self.events = events
        # path -> ((mtime, size), its audio): a load test's callers all speak one WAV, read and cut into
        # frames once; each call reads a fresh() copy. The last few files only.
        self._wavs: dict[str, tuple[tuple[int, int], CallerAudio]] = {}

    def caller_audio(self, path: str) -> CallerAudio:
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_size)
        known = self._wavs.get(path)
        if known is None or known[0] != version:
            known = self._wavs[path] = (version, CallerAudio.from_wav(path))
            while len(self._wavs) > WAVS_KEPT:
                del self._wavs[next(iter(self._wavs))]
        return known[1].fresh()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sim/calls", self.place)
        app.router.add_get("/sim/calls/{id}", self.get)
        app.router.add_get("/sim/calls/{id}/voice", self.voice)
        app.router.add_get("/sim/calls/{id}/heard", self.heard)
        app.router.add_post("/sim/calls/{id}/hangup", self.hangup)
        app.router.add_post("/sim/calls/{id}/dtmf", self.dtmf)
        app.router.add_post("/sim/calls/{id}/save", self.save)
        app.router.add_get("/sim/state", self.state)
        app.router.add_get("/sim/voicemails", self.voicemails)
        app.router.add_post("/sim/drop-event-sockets", self.drop)

    def _auth(self, request: web.Request) -> None:
        if authenticate(request, self.sim.users) is None:
            raise web.HTTPUnauthorized(text='{"message": "Authentication required"}', content_type="application/json")

    async def _body(self, request: web.Request) -> dict:
        self._auth(request)
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"message": "invalid JSON"}', content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"message": "a JSON object expected"}', content_type="application/json")
        return body

    def _call(self, request: web.Request) -> SimCall:
        self._auth(request)
        call = self.sim.sim_calls.get(request.match_info["id"])
        if call is None:
            raise web.HTTPNotFound(text='{"message": "Call not found"}', content_type="application/json")
        return call

    async def place(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            audio = self.caller_audio(str(body["audio_wav"])) if body.get("audio_wav") else None
            call = await self.sim.place_call(
                context=body.get("context", "from-ai-agent-openai"),
                exten=str(body.get("exten", "s")),
                caller_name=body.get("caller_name", "Alice"),
                caller_number=str(body.get("caller_number", "5551234")),
                variables=body.get("variables"),
                audio=audio,
                rate=int(body.get("rate", 8000)),
                send_silence=bool(body.get("send_silence", True)),
                echo_db=body.get("echo_db"),
            )
        except (TypeError, ValueError, OSError, wave.Error) as exc:
            return web.json_response({"message": str(exc)}, status=400)
        return web.json_response({"id": call.channel_id}, status=201)

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self._call(request).to_json())

    async def voice(self, request: web.Request) -> web.Response:
        call = self._call(request)
        endpoint = call.endpoint
        return web.json_response(
            {
                "answered_t": getattr(endpoint, "started_t", None),
                "voiced": [list(span) for span in spans(getattr(endpoint, "voiced", []))],
            }
        )

    async def heard(self, request: web.Request) -> web.Response:
        call = self._call(request)
        return web.json_response(
            {
                "answered_t": getattr(call.endpoint, "started_t", None),
                "windows": [[round(t, 4), round(db, 1)] for t, db in call.heard.levels()],
            }
        )

    async def hangup(self, request: web.Request) -> web.Response:
        await self._call(request).hangup()
        return web.Response(status=204)

    async def dtmf(self, request: web.Request) -> web.Response:
        call = self._call(request)
        body = await self._body(request)
        call.send_dtmf(str(body.get("digits", "")))
        return web.Response(status=204)

    async def save(self, request: web.Request) -> web.Response:
        call = self._call(request)
        body = await self._body(request)
        if not body.get("path"):
            return web.json_response({"message": "path is required"}, status=400)
        call.heard.save_wav(body["path"], body.get("rate"))
        return web.json_response({"path": body["path"], "ms": round(call.heard.duration_ms, 1)})

    async def state(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response(self.sim.state())

    async def voicemails(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response(
            [
                {
                    "mailbox": v.mailbox,
                    "context": v.context,
                    "path": str(v.path),
                    "duration_ms": round(v.duration_ms, 1),
                    "caller_number": v.caller_number,
                }
                for v in self.sim.voicemails
            ]
        )

    async def drop(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        await self.events.drop_all(int(body.get("code", 1006)))
        return web.Response(status=204)
