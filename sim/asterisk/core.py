"""`AsteriskCore`: the simulated Asterisk 22.10.1 without its HTTP side - the PBX core, the dialplan and its
interpreter, Stasis apps, chan_websocket's media connections, simulated callers (`place_call`) and what ARI
reads (users, version, global variables). The ARI REST resources (sim/asterisk/rest.py), the events WebSocket
(sim/asterisk/websocket.py) and the control API (sim/asterisk/control.py) work on it; `AsteriskSim`
(sim/asterisk/server.py) serves them."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from sim.asterisk.apps import AppRegistry
from sim.asterisk.calls import Calls
from sim.asterisk.dialplan import Dialplan
from sim.asterisk.ids import IdSource, ast_time, random_entity_id
from sim.asterisk.interpreter import Interpreter
from sim.asterisk.pbx import Pbx
from sim.asterisk.stasis_delay import DEFAULT_MS, StasisDelay
from sim.asterisk.state import Bridge, Channel
from sim.asterisk.websocket_media import WebSocketMediaServer


class SimCall:
    """A simulated caller (a SIP phone or trunk call into the PBX) and what it heard."""

    def __init__(self, sim: AsteriskCore, channel: Channel, endpoint):
        self.sim = sim
        self.channel = channel
        self.endpoint = endpoint

    @property
    def channel_id(self) -> str:
        return self.channel.id

    @property
    def heard(self):
        return self.endpoint.heard

    @property
    def trail(self) -> list[str]:
        return self.channel.trail

    @property
    def stasis_status(self) -> str:
        return self.channel.stasis_status

    @property
    def stasis_start_t(self) -> float | None:
        return self.channel.stasis_start_t

    @property
    def ended(self) -> bool:
        return self.channel.destroyed

    @property
    def state(self) -> str:
        return "ended" if self.channel.destroyed else self.channel.state

    async def wait_stasis(self, timeout: float = 5.0) -> bool:
        """True once the call entered a Stasis app; False on timeout or if Stasis() failed or it ended."""
        ch = self.channel
        waits = [asyncio.ensure_future(ch.flag(n).wait()) for n in ("stasis", "stasis_done", "ended")]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return ch.flag("stasis").is_set()

    async def wait_ended(self, timeout: float = 5.0) -> bool:
        try:
            await asyncio.wait_for(self.channel.flag("ended").wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def hangup(self) -> None:
        """The caller hangs up (remote hangup: ChannelHangupRequest cause 16 without `soft`)."""
        if not self.channel.destroyed:
            self.sim.pbx.hangup(self.channel, 16, soft=False)

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        for d in digit:
            self.sim.pbx.dtmf_in(self.channel, d, duration_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.channel_id,
            "name": self.channel.name,
            "state": self.state,
            "stasis_status": self.stasis_status,
            "in_stasis": self.channel.in_stasis,
            "trail": list(self.trail),
            "heard_ms": round(self.heard.duration_ms, 1),
            "heard_dbfs": round(self.heard.rms_dbfs(), 1) if len(self.heard) else None,
            "bridge": self.channel.bridge.id if self.channel.bridge else None,
        }


class AsteriskCore:
    """A simulated Asterisk 22.10.1, HTTP aside.

    users: ARI credentials; version: `system.version` of /asterisk/info; channelvars: ari.conf `channelvars`
    (in every channel snapshot, unset -> ""); dialplan: None (the default plan), a dict or a YAML path of
    {context: {exten: ["App(args)", ...]}}; rtp_port_range: UnicastRTP ports; workdir: voicemail WAVs
    (default: a temporary directory); stasis_delay_ms: (MIN, MAX) ms between the answer to originate,
    /channels/create or externalMedia and the channel's entry into Stasis (see sim.asterisk.stasis_delay),
    drawn per channel from an RNG seeded with `seed`; time_scale: factor on dialplan timers (Wait, ring/dial
    timeouts, the Local Answer() media wait) and prompt lengths, so tests need not wait in real time; record: keep
    `sent_events` (and the server's `rest_log`; off for long-running processes).

    Views: channels / bridges (live objects), sent_events[app], voicemails, sim_calls.
    Known simplifications: a bridge with more than two members forwards each stream to every other member
    instead of mixing; chan_websocket is simulated in server mode only (sim/asterisk/websocket_media.py);
    snoop/record are not simulated.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        version: str = "22.10.1",
        channelvars: tuple[str, ...] | list[str] = ("AI_CONTEXT", "AI_PROVIDER"),
        dialplan: dict | str | Path | None = None,
        rtp_port_range: tuple[int, int] = (20000, 20999),
        workdir: str | Path | None = None,
        *,
        time_scale: float = 1.0,
        entity_id: str | None = None,
        voicemail_max_s: float = 120.0,
        record: bool = True,
        keep_ended_calls: int = 1000,
        stasis_delay_ms: tuple[float, float] | None = None,
        seed: int | None = None,
    ):
        self.users = dict(users or {"asterisk": "secret"})
        self.version = version
        self.entity_id = entity_id or random_entity_id()
        self.startup_time = ast_time()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="asterisk-sim-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ids = IdSource()
        self.record = record  # rest_log / sent_events kept (tests); a long-running process turns it off
        self.keep_ended_calls = keep_ended_calls
        self.apps = AppRegistry(self.entity_id, record=record)
        self.pbx = Pbx(
            apps=self.apps,
            ids=self.ids,
            channelvars=tuple(channelvars),
            time_scale=time_scale,
            stasis_delay=StasisDelay(*(stasis_delay_ms or DEFAULT_MS), seed=seed),
        )
        self.dialplan = Dialplan.load(dialplan)
        self.calls = Calls(self.pbx, self.dialplan, rtp_port_range=rtp_port_range)
        self.interpreter = Interpreter(
            self.pbx, self.calls, self.dialplan, workdir=self.workdir, voicemail_max_s=voicemail_max_s
        )
        self.calls.run_dialplan = self.interpreter.run
        self.websocket_media = WebSocketMediaServer()  # chan_websocket's /media/<connection id>
        self.global_vars: dict[str, str] = {}
        self.sim_calls: dict[str, SimCall] = {}

    # --- views -------------------------------------------------------------------------------------------
    @property
    def channels(self) -> dict[str, Channel]:
        return {c.id: c for c in self.pbx.visible_channels()}

    @property
    def bridges(self) -> dict[str, Bridge]:
        return {b.id: b for b in self.pbx.bridges.values() if b.stasis}

    @property
    def sent_events(self) -> dict[str, list[dict]]:
        return self.apps.sent_events

    @property
    def voicemails(self):
        return self.interpreter.voicemails

    @property
    def time_scale(self) -> float:
        return self.pbx.time_scale

    def remove_workdir(self) -> None:
        """The temporary work directory, when it was ours."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # --- simulated callers -------------------------------------------------------------------------------
    async def place_call(
        self,
        context: str = "from-ai-agent-openai",
        exten: str = "s",
        caller_name: str = "Alice",
        caller_number: str = "5551234",
        variables: dict[str, str | None] | None = None,
        audio=None,
        rate: int = 8000,
        send_silence: bool = True,
        echo_db: float | None = None,
    ) -> SimCall:
        """A call from a phone/trunk into `context,exten,1`. `variables` are set on the channel and win over the
        dialplan's Set() (a None value keeps the variable unset). The caller's audio starts when the call is
        answered; what reaches the caller is recorded in `call.heard`."""
        from sim.asterisk.audio import CallerEndpoint

        ch = Channel(
            id=self.ids.unique_id(),
            name=f"PJSIP/{caller_number or 'anonymous'}-{self.ids.tech_seq('PJSIP')}",
            tech="PJSIP",
            state="Ring",
            caller_name=caller_name,
            caller_number=caller_number,
        )
        ch.set_location(context, exten, 1)
        for key, value in (variables or {}).items():
            ch.pinned.add(key)
            if value is not None:
                ch.variables[key] = value
        endpoint = CallerEndpoint(
            audio,
            rate,
            send_silence=send_silence,
            echo_db=echo_db,
            on_audio=lambda pcm, r: self.pbx.read_from(ch, pcm, r),
        )
        ch.media = endpoint
        self.pbx.register(ch)
        call = SimCall(self, ch, endpoint)
        self.sim_calls[ch.id] = call
        ended = [cid for cid, c in self.sim_calls.items() if c.ended]
        for cid in ended[: max(0, len(ended) - self.keep_ended_calls)]:
            del self.sim_calls[cid]  # what they heard is memory: keep only the most recent ended calls

        async def start_audio_on_answer() -> None:
            await ch.flag("answered").wait()
            if not ch.destroyed:
                endpoint.start()

        self.pbx.spawn(start_audio_on_answer(), name="caller-audio")
        self.pbx.run(ch, self.interpreter.run(ch, context, exten, 1), name="caller")
        await asyncio.sleep(0)
        return call

    def state(self) -> dict[str, Any]:
        return {
            "channels": len(self.channels),
            "bridges": len(self.bridges),
            "apps": {
                name: {"active": app.active, "channels": list(app.channels)} for name, app in self.apps.apps.items()
            },
            "calls": {cid: c.state for cid, c in self.sim_calls.items()},
            "voicemails": len(self.voicemails),
            "t": time.time(),
        }
