"""Making channels: requesting one per technology (Local pairs, PJSIP phones, UnicastRTP and AudioSocket media
legs), ARI originate, /channels/create + /dial, externalMedia, and the far-end signals (ringing, answer, busy)
that a dialled leg's watcher turns into Dial events or a Dial() result."""

from __future__ import annotations

import asyncio
import logging
import uuid as uuid_module
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sim.asterisk import events as ev
from sim.asterisk.dialplan import Dialplan
from sim.asterisk.errors import AriError, conflict, internal
from sim.asterisk.state import Channel

if TYPE_CHECKING:
    from sim.asterisk.pbx import Pbx

log = logging.getLogger("sim.asterisk")

ID_EXISTS = "Channel with given unique ID already exists"

# Runs a channel's dialplan from (context, extension, priority): the interpreter's `run`.
DialplanRunner = Callable[[Channel, str, str, int], Coroutine[Any, Any, None]]


def parse_caller_id(text: str | None) -> tuple[str, str]:
    """'Alice <5551234>' -> ('Alice', '5551234'); '5551234' -> ('', '5551234')."""
    if not text:
        return "", ""
    text = text.strip()
    if "<" in text and text.endswith(">"):
        name, _, number = text[:-1].partition("<")
        return name.strip().strip('"'), number.strip()
    if text.replace("+", "").isdigit():
        return "", text
    return text, ""


def split_host_port(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class Watch:
    """Callbacks of whoever dials a channel; the far end (a Local ;2 half or a phone) signals through these."""

    def ringing(self) -> None: ...
    def answered(self) -> None: ...
    def busy(self) -> None: ...
    def timeout(self) -> None: ...


class Calls:
    def __init__(
        self,
        pbx: Pbx,
        dialplan: Dialplan,
        *,
        rtp_port_range: tuple[int, int],
        bind_host: str = "127.0.0.1",
        connect_timeout: float = 2.0,
    ):
        self.pbx = pbx
        self.dialplan = dialplan
        self.rtp_port_range = rtp_port_range
        self.bind_host = bind_host
        self.connect_timeout = connect_timeout
        # The interpreter dials through us and we start the dialplan of what answers: it is handed in once both
        # exist (until then a dialled far end runs no dialplan).
        self.run_dialplan: DialplanRunner | None = None

    # --- requesting channels -----------------------------------------------------------------------------
    async def request(
        self, endpoint: str, channel_id: str | None = None, other_id: str | None = None, fmt: str | None = None
    ) -> Channel:
        tech, _, resource = endpoint.partition("/")
        if self.pbx.id_in_use(channel_id) or self.pbx.id_in_use(other_id):
            raise conflict(ID_EXISTS)
        kind = tech.lower()
        if kind == "local":
            return self.local_pair(resource, channel_id, other_id)
        if kind in ("pjsip", "sip", "iax2", "dahdi"):
            return self.phone(tech, resource, channel_id)
        if kind == "unicastrtp":
            host, _, opts = resource.partition("/")
            return await self.rtp_leg(host, _codec(opts) or fmt or "ulaw", channel_id)
        if kind == "audiosocket":
            parts = resource.split("/")
            if len(parts) < 2:
                raise internal()
            return await self.audiosocket_leg(
                parts[0], parts[1], _codec("/".join(parts[2:])) or fmt or "slin", channel_id
            )
        # Asterisk 22.10 answers an unknown technology with the "already exists" conflict (trace 04)
        raise conflict(ID_EXISTS)

    def local_pair(self, resource: str, near_id: str | None = None, far_id: str | None = None) -> Channel:
        target = resource.split("/")[0]
        exten, _, context = target.partition("@")
        context = context or "default"
        base = f"Local/{exten}@{context}-{self.pbx.ids.tech_seq('Local')}"
        near = Channel(id=near_id or self.pbx.ids.unique_id(), name=base + ";1", tech="Local", local_half=1)
        far = Channel(id=far_id or self.pbx.ids.unique_id(), name=base + ";2", tech="Local", state="Ring", local_half=2)
        near.local_peer, far.local_peer = far, near
        near.set_location(context, exten, 1)
        far.set_location(context, exten, 1)
        near.dialstring = target
        self.pbx.register(near)
        self.pbx.register(far)
        return near

    def phone(self, tech: str, resource: str, channel_id: str | None = None) -> Channel:
        """A phone or trunk: one visible channel; its far end is a hidden half that runs the phone's behaviour
        ([agents] or [from-internal] extension of that name, else [sim-phone])."""
        device = resource.split("/")[0]
        target = resource.split("/")[-1]
        name = f"{tech}/{device}-{self.pbx.ids.tech_seq(tech)}"
        near = Channel(id=channel_id or self.pbx.ids.unique_id(), name=name, tech=tech, local_half=1)
        far = Channel(
            id="far-" + self.pbx.ids.token(6), name=name + ";far", tech=tech, state="Ring", local_half=2, hidden=True
        )
        near.local_peer, far.local_peer = far, near
        for context in ("agents", "from-internal"):
            if self.dialplan.exists(context, target):
                far.set_location(context, target, 1)
                break
        else:
            far.set_location("sim-phone", "s", 1)
        near.set_location("default", "s", 1)
        near.dialstring = resource
        self.pbx.channels[far.id] = far
        self.pbx.register(near)
        return near

    async def rtp_leg(self, host_port: str, fmt: str, channel_id: str | None) -> Channel:
        from sim.asterisk.rtp import PT_BY_FORMAT, RtpLeg

        addr = split_host_port(host_port)
        if addr is None or fmt not in PT_BY_FORMAT:
            raise internal()
        ch = Channel(
            id=channel_id or self.pbx.ids.unique_id(),
            name=f"UnicastRTP/{host_port}-{self.pbx.ids.pointer()}",
            tech="UnicastRTP",
        )
        leg = RtpLeg(
            addr[0],
            addr[1],
            fmt,
            on_audio=lambda pcm, rate: self.pbx.read_from(ch, pcm, rate),
            bind_host=self.bind_host,
            port_range=self.rtp_port_range,
        )
        try:
            await leg.open()
        except OSError as exc:
            log.warning("UnicastRTP %s: %s", host_port, exc)
            raise internal() from None
        ch.media = leg
        ch.dialstring = f"{host_port}/c({fmt})"
        self.pbx.register(ch)
        self.pbx.set_var(ch, "UNICASTRTP_LOCAL_ADDRESS", str(leg.local_address))
        self.pbx.set_var(ch, "UNICASTRTP_LOCAL_PORT", str(leg.local_port))
        return ch

    async def audiosocket_leg(self, host_port: str, data: str, fmt: str, channel_id: str | None) -> Channel:
        from sim.asterisk.audiosocket import KIND_BY_FORMAT, AudioSocketConnectError, AudioSocketLeg

        addr = split_host_port(host_port)
        if addr is None or fmt not in KIND_BY_FORMAT:
            raise internal()
        ch = Channel(
            id=channel_id or self.pbx.ids.unique_id(), name=f"AudioSocket/{host_port}-{data}", tech="AudioSocket"
        )

        def on_hangup(reason: str) -> None:
            # 0x00 (or EOF / error) from the worker: the channel ends without a ChannelHangupRequest (trace 03)
            self.pbx.hangup(ch, 16, soft=False, request_event=False)

        leg = AudioSocketLeg(
            addr[0],
            addr[1],
            data,
            fmt,
            on_audio=lambda pcm, rate: self.pbx.read_from(ch, pcm, rate),
            on_hangup=on_hangup,
            connect_timeout=self.connect_timeout,
        )
        try:
            await leg.open()  # Asterisk connects during the request: refused -> 500, no channel left
        except AudioSocketConnectError as exc:
            log.warning("Failed to connect to AudioSocket service %s: %s", host_port, exc)
            raise internal() from None
        ch.media = leg
        ch.dialstring = f"{host_port}/{data}"
        self.pbx.register(ch)
        self.pbx.set_var(ch, "AUDIOSOCKET_UUID", data)
        self.pbx.set_var(ch, "AUDIOSOCKET_SERVICE", host_port)
        return ch

    # --- dialling ----------------------------------------------------------------------------------------
    def dial_out(self, near: Channel, watch: Watch, timeout_s: float | None) -> None:
        """Start ringing the far end of `near`; media legs answer at once."""
        near.watch = watch
        near.dialing = True
        far = near.local_peer
        if far is None:  # a media leg: calling it sends the AudioSocket UUID, and it answers at once
            call_media(near)
            watch.answered()
            return
        if self.run_dialplan is not None:
            self.pbx.run(far, self.run_dialplan(far, far.context, far.exten, far.priority), name="far")
        if timeout_s and timeout_s > 0:
            self.pbx.spawn(self._dial_timer(near, watch, timeout_s), name="dial-timeout")

    async def _dial_timer(self, near: Channel, watch: Watch, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s * self.pbx.time_scale)
        if near.watch is watch and near.state != "Up" and not near.destroyed:
            watch.timeout()

    def far_ringing(self, far: Channel) -> None:
        near = far.local_peer
        if near is not None and near.watch is not None and near.state == "Down":
            near.watch.ringing()

    def far_answer(self, far: Channel) -> None:
        self.pbx.set_state(far, "Up")
        near = far.local_peer
        if near is None or near.destroyed or near.state == "Up":
            return
        if near.watch is not None:
            watch, near.watch = near.watch, None
            watch.answered()
        else:
            self.pbx.set_state(near, "Up")

    def far_busy(self, far: Channel) -> None:
        near = far.local_peer
        if near is not None and near.watch is not None and near.state != "Up":
            watch, near.watch = near.watch, None
            watch.busy()

    # --- ARI operations ----------------------------------------------------------------------------------
    async def originate(
        self,
        endpoint: str,
        *,
        app: str | None,
        app_args: str | None,
        context: str | None,
        extension: str | None,
        priority: int,
        caller_id: str | None,
        timeout: int,
        variables: dict[str, str],
        channel_id: str | None,
        other_id: str | None,
        fmt: str | None = None,
    ) -> Channel:
        near = await self.request(endpoint, channel_id, other_id, fmt)
        pbx = self.pbx
        pbx.set_dialplan_app(near, "AppDial2", "(Outgoing Line)")  # ast_dial's placeholder application
        near.restore_app = ("AppDial2", "(Outgoing Line)")
        name, number = parse_caller_id(caller_id)
        if name or number:
            near.caller_name, near.caller_number = name, number
            pbx.emit(ev.channel_caller_id(pbx.snap(near)), channels=[near])
            near.connected_name, near.connected_number = name, number
            pbx.emit(ev.channel_event("ChannelConnectedLine", pbx.snap(near)), channels=[near])
            far = near.local_peer
            if far is not None and not far.hidden:
                pbx.emit(ev.channel_caller_id(pbx.snap(far)), channels=[far])
                pbx.emit(ev.channel_event("ChannelConnectedLine", pbx.snap(far)), channels=[far])
        for key, value in variables.items():
            pbx.set_var(near, key, value)
        if app:
            pbx.apps.subscribe(app, near)
            if near.local_peer is not None and not near.local_peer.hidden:
                pbx.apps.subscribe(app, near.local_peer)  # "Subscribe to the Local channel peer also"
        watch = OriginateWatch(
            self,
            near,
            app=app,
            app_args=app_args,
            context=context or "default",
            extension=extension or "s",
            priority=priority,
        )
        # ast_dial_run() (Dial event, the far end's dialplan, and Stasis on answer) runs in ari_originate_dial(),
        # a thread started after the response
        pbx.spawn(
            self._originate_dial(near, watch, timeout if timeout > 0 else (None if timeout == -1 else 30)),
            name="originate-dial",
        )
        return near

    async def _originate_dial(self, near: Channel, watch: Watch, timeout_s: float | None) -> None:
        await self.pbx.ari_thread_start(near)
        if near.hanging_up or near.destroyed:
            return  # hung up before the thread ran: ast_call() refuses a hung-up channel, nothing is dialled
        pbx = self.pbx
        pbx.emit(ev.dial("", near.dialstring or "", pbx.snap(near)), channels=[near])
        if near.tech == "Local":  # calling the Local pair puts its device in use (after Dial, trace 01)
            near.device_busy = near.far_end().device_busy = True
            pbx.device_state(pbx.device_name(near), "INUSE")
            pbx.device_state(pbx.device_name(near), "INUSE")
        self.dial_out(near, watch, timeout_s)

    async def create(
        self,
        endpoint: str,
        *,
        app: str,
        app_args: str | None,
        variables: dict[str, str],
        channel_id: str | None,
        other_id: str | None,
        originator: Channel | None,
        fmt: str | None = None,
    ) -> Channel:
        near = await self.request(endpoint, channel_id, other_id, fmt)
        near.ari_created = True
        for key, value in variables.items():
            self.pbx.set_var(near, key, value)
        if originator is not None and app:
            self.pbx.apps.subscribe(app, originator)
        self.pbx.apps.subscribe(app, near)
        args = app_args.split(",") if app_args else []
        data = app + ("," + app_args if app_args else "")
        self.pbx.run(near, self._created_life(near, app, args, data), name="created")
        return near

    async def _created_life(self, ch: Channel, app: str, args: list[str], data: str) -> None:
        await self.pbx.ari_thread_start(ch)  # ari_channel_thread(): pbx_exec(Stasis) after the response
        await self.ari_stasis(ch, app, args, data, dialplan_event=True)

    async def ari_stasis(self, ch: Channel, app: str, args: list[str], data: str, *, dialplan_event: bool) -> None:
        """An ARI-made channel's whole life: Stasis(app), then it is hung up (res_ari's channel thread)."""
        before = (ch.app_name, ch.app_data)
        self.pbx.set_dialplan_app(ch, "Stasis", data, event=dialplan_event)
        try:
            await self.pbx.run_stasis(ch, app, args)
        finally:
            ch.app_name, ch.app_data = before

    def stasis_dial(self, near: Channel, caller: Channel | None, timeout: int) -> None:
        watch = StasisDialWatch(self, near, caller)
        self.pbx.emit(
            ev.dial("", near.dialstring or "", self.pbx.snap(near), self.pbx.snap(caller) if caller else None),
            channels=[near],
        )
        self.dial_out(near, watch, timeout if timeout > 0 else None)

    async def external_media(
        self,
        *,
        app: str,
        host_port: str,
        encapsulation: str,
        fmt: str,
        data: str | None,
        channel_id: str | None,
        variables: dict[str, str],
    ) -> dict:
        if self.pbx.id_in_use(channel_id):
            raise internal()  # externalMedia reports a duplicate id as a 500 (console: do_ids_conflict)
        if encapsulation == "audiosocket":
            ch = await self.audiosocket_leg(host_port, data or "", fmt, channel_id)
        else:
            ch = await self.rtp_leg(host_port, fmt, channel_id)
        ch.ari_created = True
        for key, value in variables.items():
            self.pbx.set_var(ch, key, value)
        self.pbx.set_dialplan_app(ch, "AppDial2", "(Outgoing Line)")
        # the answer carries the channel's own variables (transport ones), newest first, not the ari.conf set
        response = ch.snapshot(None, override_vars=dict(reversed(list(ch.variables.items()))))
        self.pbx.apps.subscribe(app, ch)
        self.pbx.run(ch, self._external_life(ch, app, data), name="external")
        return response

    async def _external_life(self, ch: Channel, app: str, data: str | None) -> None:
        """externalMedia goes through the originate path: the response is sent once the channel exists, then
        ari_originate_dial() dials it (the media leg answers at once) and runs Stasis on it. A DELETE before
        that cancels this task: the channel ends without Dial events or StasisStart."""
        await self.pbx.ari_thread_start(ch)
        dialstring = ch.dialstring or ""
        self.pbx.emit(ev.dial("", dialstring, self.pbx.snap(ch)), channels=[ch])
        call_media(ch)
        self.pbx.set_state(ch, "Up")
        self.pbx.emit(ev.dial("ANSWER", dialstring, self.pbx.snap(ch)), channels=[ch])
        args = data.split(",") if data else []
        stasis_data = app + ("," + data if data else "")
        await self.ari_stasis(ch, app, args, stasis_data, dialplan_event=False)


def call_media(ch: Channel) -> None:
    identify = getattr(ch.media, "identify", None)  # AudioSocket only; an RTP leg has nothing to send
    if identify is not None:
        identify()


def _codec(opts: str) -> str | None:
    opts = opts.strip()
    if opts.startswith("c(") and opts.endswith(")"):
        return opts[2:-1]
    return None


class OriginateWatch(Watch):
    """ast_dial for POST /channels: Dial events keep the dialstring; on answer the channel runs Stasis(app)
    or the dialplan at context/extension/priority; unanswered or busy legs are hung up."""

    def __init__(
        self,
        calls: Calls,
        near: Channel,
        *,
        app: str | None,
        app_args: str | None,
        context: str,
        extension: str,
        priority: int,
    ):
        self.calls, self.near = calls, near
        self.app, self.app_args = app, app_args
        self.context, self.extension, self.priority = context, extension, priority

    def _dial(self, status: str) -> None:
        pbx = self.calls.pbx
        pbx.emit(ev.dial(status, self.near.dialstring or "", pbx.snap(self.near)), channels=[self.near])

    def ringing(self) -> None:
        self.calls.pbx.set_state(self.near, "Ringing")
        self._dial("RINGING")

    def answered(self) -> None:
        pbx, near = self.calls.pbx, self.near
        near.dialing = False
        pbx.set_state(near, "Up")
        self._dial("ANSWER")
        if self.app:
            args = self.app_args.split(",") if self.app_args else []
            data = self.app + ("," + self.app_args if self.app_args else "")
            near.ari_created = True
            pbx.run(near, self.calls.ari_stasis(near, self.app, args, data, dialplan_event=False), name="originated")
        elif self.calls.run_dialplan is not None:
            near.set_location(self.context, self.extension, self.priority)
            pbx.run(near, self.calls.run_dialplan(near, self.context, self.extension, self.priority))

    def busy(self) -> None:
        self._dial("BUSY")
        self.calls.pbx.hangup(self.near, 17, soft=False, request_event=False)

    def timeout(self) -> None:
        self._dial("NOANSWER")
        self.calls.pbx.hangup(self.near, 19, soft=False, request_event=False)


class StasisDialWatch(Watch):
    """POST /channels/{id}/dial: Dial events after the first carry an empty dialstring; a cancelled (hung up)
    leg gets no final Dial event (trace 05b). After BUSY/NOANSWER the far end is released and the leg stays
    in Stasis for the app to hang up."""

    def __init__(self, calls: Calls, near: Channel, caller: Channel | None):
        self.calls, self.near, self.caller = calls, near, caller

    def _dial(self, status: str) -> None:
        pbx = self.calls.pbx
        if self.near.destroyed or self.near.hanging_up:
            return
        pbx.emit(
            ev.dial(status, "", pbx.snap(self.near), pbx.snap(self.caller) if self.caller else None),
            channels=[self.near],
        )

    def ringing(self) -> None:
        self.calls.pbx.set_state(self.near, "Ringing")
        self._dial("RINGING")

    def answered(self) -> None:
        self.near.dialing = False
        self.calls.pbx.set_state(self.near, "Up")
        self._dial("ANSWER")

    def _release_far(self) -> None:
        self.near.dialing = False
        self.near.watch = None
        far = self.near.local_peer
        if far is not None and not far.destroyed:
            far.local_peer = None  # the leg itself stays (in Stasis) until the app hangs it up
            self.near.local_peer = None
            self.calls.pbx.hangup(far, 16, soft=False)

    def busy(self) -> None:
        self._dial("BUSY")
        self._release_far()

    def timeout(self) -> None:
        self._dial("NOANSWER")
        self._release_far()


class DialResult(Watch):
    """The dialplan Dial() application's view of one callee."""

    def __init__(self, on_change: Callable[[str], None]):
        self.on_change = on_change

    def ringing(self) -> None:
        self.on_change("RINGING")

    def answered(self) -> None:
        self.on_change("ANSWER")

    def busy(self) -> None:
        self.on_change("BUSY")

    def timeout(self) -> None:
        self.on_change("NOANSWER")


def new_uuid() -> str:
    return str(uuid_module.uuid4())


__all__ = ["AriError", "Calls", "parse_caller_id", "split_host_port", "new_uuid"]
