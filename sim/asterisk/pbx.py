"""The core of the simulated Asterisk: channel life (state, variables, Stasis, hangup, destruction), bridges,
audio and DTMF routing, playbacks. Every change publishes its ARI events in the order Asterisk 22.10.1 does.

Audio: `write_to(ch)` is what the channel's far end hears (a caller's ear, the worker's socket, or - for a
Local half - what its other half reads); `read_from(ch)` is what the channel hears from its far end, which goes
to a dialplan app consuming it (VoiceMail) and to the other members of its bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any, Callable, Coroutine, Iterable

from sim.asterisk import events as ev
from sim.asterisk.apps import AppRegistry
from sim.asterisk.ids import IdSource
from sim.asterisk.stasis_delay import StasisDelay
from sim.asterisk.state import Bridge, Channel, Hungup, Playback, settle
from sim.asterisk.tones import ToneClock, media_pcm

log = logging.getLogger("sim.asterisk")
SHUTDOWN_WAIT_S = 5.0  # how long shutdown waits for its cancelled tasks

Jump = tuple[str, str, int]


class MoveTo:
    def __init__(self, app: str, args: list[str]):
        self.app, self.args = app, args


class Pbx:
    def __init__(
        self,
        *,
        apps: AppRegistry,
        ids: IdSource,
        channelvars: tuple[str, ...],
        time_scale: float = 1.0,
        stasis_delay: StasisDelay | None = None,
    ):
        self.apps = apps
        self.ids = ids
        self.channelvars = tuple(channelvars)
        self.time_scale = time_scale
        self.stasis_delay = stasis_delay or StasisDelay()
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.playbacks: dict[str, Playback] = {}
        self._clocks: dict[str, ToneClock] = {}
        self._bridge_clocks: dict[str, ToneClock] = {}
        self._tasks: set[asyncio.Task] = set()

    # --- basics ------------------------------------------------------------------------------------------
    def snap(self, ch: Channel) -> dict:
        snap = ch.snapshot(self.channelvars)
        if ch.local_half == 2 and ch.local_peer is not None:
            # a Local ;2 half shows its ;1's connected party as caller and vice versa (trace 05, GET /channels)
            near = ch.local_peer
            snap["caller"] = {"name": near.connected_name, "number": near.connected_number}
            snap["connected"] = {"name": near.caller_name, "number": near.caller_number}
        return snap

    def emit(
        self, event: dict, *, channels: Iterable[Channel] = (), bridge: Bridge | None = None, apps: Iterable[str] = ()
    ) -> None:
        channels = list(channels)
        if any(c.hidden for c in channels):
            return
        self.apps.publish(event, channels=channels, bridge=bridge, apps=apps)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds * self.time_scale))

    def spawn(self, coro: Coroutine, name: str = "sim-asterisk") -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def visible_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if not c.hidden]

    def find(self, channel_id: str) -> Channel | None:
        ch = self.channels.get(channel_id)
        if ch is None:  # Asterisk also finds channels by name
            ch = next((c for c in self.channels.values() if c.name == channel_id), None)
        return None if ch is None or ch.hidden else ch

    # --- channels ----------------------------------------------------------------------------------------
    def register(self, ch: Channel) -> Channel:
        self.channels[ch.id] = ch
        self.emit(ev.channel_event("ChannelCreated", self.snap(ch)), channels=[ch])
        return ch

    def id_in_use(self, channel_id: str | None) -> bool:
        return bool(channel_id) and channel_id in self.channels

    def set_state(self, ch: Channel, state: str) -> None:
        if ch.state == state or ch.destroyed:
            return
        ch.state = state
        self.emit(ev.channel_event("ChannelStateChange", self.snap(ch)), channels=[ch])
        if state == "Up":
            ch.flag("answered").set()

    def set_var(self, ch: Channel, name: str, value: str, *, event: bool = True) -> None:
        ch.variables[name] = value
        if event and not ch.destroyed:
            self.emit(ev.channel_varset(name, value, self.snap(ch)), channels=[ch])

    def set_dialplan_app(self, ch: Channel, app: str, data: str, *, event: bool = True) -> None:
        ch.app_name, ch.app_data = app, data
        if event:
            self.emit(ev.channel_dialplan(app, data, self.snap(ch)), channels=[ch])

    def answer(self, ch: Channel) -> None:
        self.set_state(ch, "Up")

    def device_state(self, name: str, state: str) -> None:
        """DeviceStateChanged goes to subscribeAll apps only (no app subscribes to devices here)."""
        self.emit(ev.device_state_changed(name, state))

    @staticmethod
    def device_name(ch: Channel) -> str:
        """The device of a channel: its name without the `-<sequence>` / `-0x...` / `-<uuid>` suffix."""
        if ch.tech == "AudioSocket":
            return ch.name[: ch.name.index("-")] if "-" in ch.name else ch.name
        return ch.name.rsplit("-", 1)[0]

    def run(self, ch: Channel, coro: Coroutine, name: str = "channel") -> None:
        """Run a channel's dialplan (or Stasis-only life); the channel is destroyed when it returns."""
        ch.dialplan_task = self.spawn(self._life(ch, coro), name=f"{name}:{ch.name}")
        # A task cancelled before its first step (a hangup in the same loop turn) never awaits `coro`: close it,
        # or Python warns "coroutine ... was never awaited" (a no-op once it ran).
        ch.dialplan_task.add_done_callback(lambda _: coro.close())

    async def _life(self, ch: Channel, coro: Coroutine) -> None:
        try:
            await coro
        except (Hungup, asyncio.CancelledError):
            pass
        except Exception:  # a bug in the simulator must not leave a zombie channel behind
            log.exception("channel %s: dialplan error", ch.name)
        finally:
            if not ch.destroyed:
                self.destroy(ch)

    # --- Stasis ------------------------------------------------------------------------------------------
    async def ari_thread_start(self, ch: Channel) -> None:
        """The detached thread res_ari starts after answering the request that made `ch` (see stasis_delay):
        not scaled by time_scale, it is scheduling latency, not a dialplan timer."""
        ch.stasis_delay_s = self.stasis_delay.draw_s()
        await asyncio.sleep(ch.stasis_delay_s)

    async def run_stasis(self, ch: Channel, app_name: str, args: list[str]) -> Jump | None:
        """The Stasis() application: returns where a `continue` sends the channel; raises Hungup if it was
        hung up; returns None at once with STASISSTATUS=FAILED when the app is missing or inactive."""
        self.set_var(ch, "STASISSTATUS", "")
        app = self.apps.get(app_name)
        if app is None or not app.active:
            log.warning("Stasis app '%s' %s", app_name, "doesn't exist" if app is None else "not active")
            ch.stasis_status = "FAILED"
            self.set_var(ch, "STASISSTATUS", "FAILED")
            ch.flag("stasis_done").set()
            return None
        while True:
            ch.stasis_app, ch.stasis_args = app_name, list(args)
            self.apps.subscribe(app_name, ch)
            ch.stasis_leave = asyncio.get_running_loop().create_future()
            self.emit(ev.stasis_start(args, self.snap(ch)), channels=[ch])
            ch.stasis_start_t = ch.stasis_start_t or time.monotonic()
            ch.flag("stasis").set()
            jump = await ch.stasis_leave
            if not isinstance(jump, MoveTo) or ch.hanging_up:
                break
            app_name, args = jump.app, jump.args  # POST /channels/{id}/move: StasisEnd here, StasisStart there
            jump = None
        ch.stasis_status = "SUCCESS"
        self.set_var(ch, "STASISSTATUS", "SUCCESS")
        ch.flag("stasis_done").set()
        if ch.hanging_up:
            raise Hungup
        return jump

    def end_stasis(self, ch: Channel, jump: Jump | MoveTo | None = None) -> None:
        app_name = ch.stasis_app
        if app_name is None:
            return
        ch.stasis_app = None
        self.emit(ev.stasis_end(self.snap(ch)), channels=[ch])
        if not ch.ari_created:
            self.apps.unsubscribe(app_name, ch)  # a dialplan channel's subscription ends with StasisEnd
        if ch.stasis_leave is not None and not ch.stasis_leave.done():
            ch.stasis_leave.set_result(jump)

    def move_to_app(self, ch: Channel, app: str, args: list[str]) -> None:
        self.end_stasis(ch, MoveTo(app, args))

    def continue_in_dialplan(self, ch: Channel, jump: Jump) -> None:
        if ch.bridge is not None:
            self.leave_bridge(ch, "continue")
        self.end_stasis(ch, jump)

    # --- hangup ------------------------------------------------------------------------------------------
    def hangup(self, ch: Channel, cause: int = 16, *, soft: bool = True, request_event: bool = True) -> None:
        """soft=True: an ARI DELETE (ChannelHangupRequest cause 32 = AST_SOFTHANGUP_EXPLICIT, soft:true);
        soft=False: the far end went away (cause is the Q.850 cause, no `soft` key)."""
        if ch.hanging_up or ch.destroyed:
            return
        ch.hanging_up = True
        ch.hangup_cause = cause
        if request_event:
            self.emit(ev.hangup_request(32 if soft else cause, soft, self.snap(ch)), channels=[ch])
        if ch.bridge is not None:
            self.leave_bridge(ch, "hangup")
        if ch.in_stasis:
            self.end_stasis(ch)
            return  # Stasis() returns, sets STASISSTATUS=SUCCESS and the channel's life ends
        task = ch.dialplan_task
        if task is not None and not task.done():
            if task is not asyncio.current_task():
                task.cancel()
                # A task cancelled before its first step never runs `_life`, whose `finally` destroys the channel.
                task.add_done_callback(lambda _: self.destroy(ch))
        else:
            self.destroy(ch)

    def destroy(self, ch: Channel) -> None:
        if ch.destroyed:
            return
        ch.hanging_up = True
        if ch.bridge is not None:
            self.leave_bridge(ch, "hangup")
        if ch.in_stasis:
            self.end_stasis(ch)
        self._stop_audio(ch)
        if ch.pbx_run:
            # the channel's PBX thread ends with a soft hangup of its own (seen with subscribeAll, trace 01)
            self.emit(ev.hangup_request(16, True, self.snap(ch)), channels=[ch])
            ch.app_name, ch.app_data = ch.restore_app
        peer = ch.local_peer
        if peer is not None and not peer.destroyed and not peer.hanging_up:
            # A Local half hanging up queues the hangup on its other half, with its cause (a Dial() that found
            # the callee busy ends its channel with 17, and the half in Stasis reports that).
            self.hangup(peer, ch.hangup_cause, soft=False)
        if ch.local_half and ch.device_busy:
            for half in (ch, peer):
                if half is not None:
                    half.device_busy = False
            name = self.device_name(ch)
            self.device_state(name, "NOT_INUSE")
            self.device_state(name, "NOT_INUSE")
        self.emit(ev.channel_destroyed(ch.hangup_cause, self.snap(ch)), channels=[ch])
        ch.destroyed = True
        self.channels.pop(ch.id, None)
        self.apps.forget_channel(ch)
        for playback in [p for p in self.playbacks.values() if p.target_uri == f"channel:{ch.id}"]:
            self.stop_playback(playback)
        for callback in list(ch.on_destroy):
            with contextlib.suppress(Exception):
                callback(ch)
        ch.flag("ended").set()
        task = ch.dialplan_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _stop_audio(self, ch: Channel) -> None:
        clock = self._clocks.pop(ch.id, None)
        if clock is not None:
            clock.stop()
        media, ch.media = ch.media, None
        ch.input_sink = None
        if media is None:
            return
        close = getattr(media, "close", None) or getattr(media, "stop", None)
        if close is None:
            return
        result = close()
        if asyncio.iscoroutine(result):
            self.spawn(result, name="media-close")

    # --- audio and DTMF ----------------------------------------------------------------------------------
    def write_to(self, ch: Channel, pcm: bytes, rate: int) -> None:
        if ch.destroyed:
            return
        if ch.media is not None:
            ch.media.deliver(pcm, rate)
        elif ch.local_peer is not None and not ch.local_peer.destroyed:
            self.read_from(ch.local_peer, pcm, rate)

    def read_from(self, ch: Channel, pcm: bytes, rate: int) -> None:
        if ch.destroyed:
            return
        if ch.input_sink is not None:
            ch.input_sink(pcm, rate)
        bridge = ch.bridge
        if bridge is not None:
            # members on hold music or hearing ringback get that tone instead; with more than two members each
            # one receives every other member's stream as it comes (not summed into one mix)
            for member in bridge.members:
                if member is not ch and not member.moh and not member.ringback:
                    self.write_to(member, pcm, rate)

    def clock(self, ch: Channel) -> ToneClock:
        clock = self._clocks.get(ch.id)
        if clock is None:
            clock = self._clocks[ch.id] = ToneClock(lambda pcm, rate: self.write_to(ch, pcm, rate))
        return clock

    def set_moh(self, ch: Channel, on: bool) -> None:
        ch.moh = on
        self.clock(ch).set_moh(on)

    def set_ringback(self, ch: Channel, on: bool) -> None:
        ch.ringback = on
        self.clock(ch).set_ringback(on)

    def dtmf_in(self, ch: Channel, digit: str, duration_ms: int = 100) -> None:
        """The channel read a DTMF digit from its far end."""
        if ch.destroyed:
            return
        self.emit(ev.dtmf_received(digit, duration_ms, self.snap(ch)), channels=[ch])
        if ch.dtmf_sink is not None:
            ch.dtmf_sink(digit)
        if ch.bridge is not None:
            for member in ch.bridge.members:
                if member is not ch:
                    self.dtmf_out(member, digit, duration_ms)

    def dtmf_out(self, ch: Channel, digit: str, duration_ms: int = 100) -> None:
        """A DTMF digit written to the channel (AudioSocket sends it as kind 0x03; RTP legs do not forward it)."""
        send = getattr(ch.media, "send_dtmf", None) if ch.media is not None else None
        if send is not None:
            with contextlib.suppress(ValueError):
                send(digit)
        elif ch.media is None and ch.local_peer is not None:
            self.dtmf_in(ch.local_peer, digit, duration_ms)

    # --- bridges -----------------------------------------------------------------------------------------
    def create_bridge(self, bridge_id: str, types: list[str], name: str, *, stasis: bool = True) -> Bridge:
        bridge_type = "holding" if "holding" in types else "mixing"
        bridge = Bridge(id=bridge_id, bridge_type=bridge_type, name=name, flags=tuple(types), stasis=stasis)
        if not stasis:
            bridge.bridge_class, bridge.creator = "basic", "BridgeAPI"
        self.bridges[bridge_id] = bridge
        self.emit(ev.bridge_event("BridgeCreated", bridge.snapshot()), bridge=bridge)
        return bridge

    def add_to_bridge(self, bridge: Bridge, ch: Channel) -> None:
        if ch.bridge is bridge:
            return
        if ch.bridge is not None:
            self.leave_bridge(ch, "move")
        bridge.members.append(ch)
        ch.bridge = bridge
        if bridge.stasis:
            self.apps.bridge_ref(ch.stasis_app, bridge, +1)
        if ch.tech in ("UnicastRTP", "AudioSocket") and not ch.device_busy:
            ch.device_busy = True
            self.device_state(self.device_name(ch), "INUSE")
        self.emit(
            ev.bridge_channel_event("ChannelEnteredBridge", bridge.snapshot(), self.snap(ch)),
            channels=[ch],
            bridge=bridge,
        )
        if len(bridge.members) == 2:
            other = bridge.members[0]
            self.set_var(other, "BRIDGEPEER", ch.name)
            self.set_var(ch, "BRIDGEPEER", other.name)
            self._connect_line(ch, other.caller_name, other.caller_number)
            self._connect_line(other, ch.caller_name, ch.caller_number)

    def _connect_line(self, ch: Channel, name: str, number: str) -> None:
        if (ch.connected_name, ch.connected_number) == (name, number):
            return
        ch.connected_name, ch.connected_number = name, number
        self.emit(ev.channel_event("ChannelConnectedLine", self.snap(ch)), channels=[ch])
        if ch.local_half == 1 and ch.local_peer is not None:
            ch.local_peer.callerid_dirty = True  # its ;2 half reports it when its dialplan next moves on

    def leave_bridge(self, ch: Channel, why: str) -> None:
        """why: remove | move | continue | destroy keep the app's bridge reference count honest; hangup
        leaves it (see apps.py)."""
        bridge = ch.bridge
        if bridge is None:
            return
        if ch.variables.get("BRIDGEPEER"):
            self.set_var(ch, "BRIDGEPEER", "")
        if why == "hangup" and ch.device_busy and ch.tech in ("UnicastRTP", "AudioSocket"):
            ch.device_busy = False
            self.device_state(self.device_name(ch), "UNKNOWN")
        bridge.members.remove(ch)
        ch.bridge = None
        self.emit(
            ev.bridge_channel_event("ChannelLeftBridge", bridge.snapshot(), self.snap(ch)), channels=[ch], bridge=bridge
        )
        if bridge.stasis and why != "hangup":
            self.apps.bridge_ref(ch.stasis_app, bridge, -1)

    def destroy_bridge(self, bridge: Bridge) -> None:
        if bridge.destroyed:
            return
        for member in list(bridge.members):
            self.leave_bridge(member, "destroy")
        clock = self._bridge_clocks.pop(bridge.id, None)
        if clock is not None:
            clock.stop()
        bridge.destroyed = True
        self.emit(ev.bridge_event("BridgeDestroyed", bridge.snapshot()), bridge=bridge)
        self.apps.forget_bridge(bridge)
        self.bridges.pop(bridge.id, None)

    def bridge_clock(self, bridge: Bridge) -> ToneClock:
        clock = self._bridge_clocks.get(bridge.id)
        if clock is None:

            def write(pcm: bytes, rate: int) -> None:
                for member in bridge.members:
                    self.write_to(member, pcm, rate)

            clock = self._bridge_clocks[bridge.id] = ToneClock(write)
        return clock

    # --- playbacks ---------------------------------------------------------------------------------------
    def play(
        self,
        target: Channel | Bridge,
        media: list[str],
        playback_id: str,
        app: str | None,
        language: str = "en",
        on_done: Callable[[], None] | None = None,
        *,
        ari: bool = True,
    ) -> Playback:
        """ari=False: a dialplan Playback() - no Playback object in ARI and no Playback events."""
        kind = "bridge" if isinstance(target, Bridge) else "channel"
        playback = Playback(
            id=playback_id, media=list(media), target_uri=f"{kind}:{target.id}", app=app, language=language
        )
        if ari:
            self.playbacks[playback_id] = playback
        clock = self.bridge_clock(target) if isinstance(target, Bridge) else self.clock(target)
        playback.task = self.spawn(self._play(playback, clock, on_done, ari), name=f"playback:{playback_id}")
        return playback

    async def _play(self, playback: Playback, clock: ToneClock, on_done: Callable[[], None] | None, ari: bool) -> None:
        apps = [playback.app] if playback.app else []
        handle = None
        try:
            await asyncio.sleep(0)  # the 201 response (state queued) goes out first
            for index in range(len(playback.media)):
                playback.index = index
                playback.state = "playing" if index == 0 else "continuing"
                if ari:
                    self.emit(
                        ev.playback_event(
                            "PlaybackStarted" if index == 0 else "PlaybackContinuing", playback.snapshot()
                        ),
                        apps=apps,
                    )
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                handle = clock.play(media_pcm(playback.media[index], self.time_scale), partial(settle, done))
                await done
                handle = None
        finally:
            if handle is not None:
                clock.cancel(handle)
            playback.state = "done"
            if ari:
                self.playbacks.pop(playback.id, None)
                self.emit(ev.playback_event("PlaybackFinished", playback.snapshot()), apps=apps)
            if on_done is not None:
                on_done()

    def stop_playback(self, playback: Playback) -> None:
        if playback.task is not None and not playback.task.done():
            playback.task.cancel()

    # --- shutdown ----------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        for ch in list(self.channels.values()):
            ch.hanging_up = True
            self.destroy(ch)
        for bridge in list(self.bridges.values()):
            bridge.destroyed = True
        self.bridges.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a task that swallows its cancellation must not hold the shutdown forever
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
            for task in stuck:
                log.warning(
                    "simulator task %s did not stop within %.0f s of its cancellation", task.get_name(), SHUTDOWN_WAIT_S
                )

    def info(self) -> dict[str, Any]:
        return {"channels": len(self.visible_channels()), "bridges": len(self.bridges)}
