"""The dialplan interpreter: runs a channel through contexts/extensions/priorities, one application at a time.

Applications: NoOp, Set, Answer, Ringing, Progress, Wait, Playback, SendDTMF, Stasis, GotoIf, Goto, Dial, Busy,
Congestion, Queue, VoiceMail, MusicOnHold, Hangup. Unknown applications are skipped with a warning (as a NoOp)."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from sim.asterisk import events as ev
from sim.asterisk.calls import Calls, DialResult
from sim.asterisk.dialplan import Dialplan, expand, parse_target, split_args, truthy
from sim.asterisk.state import Channel, Hungup, settle

if TYPE_CHECKING:
    from sim.asterisk.pbx import Pbx

log = logging.getLogger("sim.asterisk")

Jump = tuple[str, str, int]
AppFn = Callable[[Channel, str], Awaitable["Jump | None"]]


@dataclass
class Voicemail:
    mailbox: str
    context: str
    path: Path
    duration_ms: float
    caller_name: str
    caller_number: str
    channel_id: str
    t: float = field(default_factory=time.time)


class Interpreter:
    def __init__(self, pbx: Pbx, calls: Calls, dialplan: Dialplan, *, workdir: Path, voicemail_max_s: float = 120.0):
        self.pbx, self.calls, self.dialplan = pbx, calls, dialplan
        self.workdir = workdir
        self.voicemail_max_s = voicemail_max_s
        self.voicemails: list[Voicemail] = []
        self.apps: dict[str, AppFn] = {
            "noop": self.app_noop,
            "set": self.app_set,
            "answer": self.app_answer,
            "ringing": self.app_ringing,
            "progress": self.app_noop,
            "wait": self.app_wait,
            "playback": self.app_playback,
            "senddtmf": self.app_senddtmf,
            "stasis": self.app_stasis,
            "gotoif": self.app_gotoif,
            "goto": self.app_goto,
            "dial": self.app_dial,
            "busy": self.app_busy,
            "congestion": self.app_busy,
            "queue": self.app_queue,
            "voicemail": self.app_voicemail,
            "musiconhold": self.app_moh,
            "hangup": self.app_hangup,
        }

    # --- the loop ----------------------------------------------------------------------------------------
    async def run(self, ch: Channel, context: str, exten: str, priority: int) -> None:
        ch.pbx_run = True  # destroy() then shows ch.restore_app as the channel's application
        await self._run(ch, context, exten, priority)

    async def _run(self, ch: Channel, context: str, exten: str, priority: int) -> None:
        while not ch.hanging_up:
            steps = self.dialplan.steps(context, exten)
            if steps is None or priority < 1 or priority > len(steps):
                if steps is None:
                    log.warning("Channel '%s' sent to invalid extension %s,%s,%s", ch.name, context, exten, priority)
                return  # falling off the end of the plan hangs the channel up
            step = steps[priority - 1]
            data = expand(step.data, lambda name: self.lookup(ch, name))
            ch.set_location(context, exten, priority)
            self.pbx.set_dialplan_app(ch, step.app, data)
            if ch.callerid_dirty:
                ch.callerid_dirty = False
                self.pbx.emit(ev.channel_caller_id(self.pbx.snap(ch)), channels=[ch])
            ch.trail.append(f"{step.app}({data})")
            fn = self.apps.get(step.app.lower())
            if fn is None:
                log.warning("No application '%s' for extension (%s, %s, %d)", step.app, context, exten, priority)
                jump = None
            else:
                jump = await fn(ch, data)
            if jump is None:
                priority += 1
            else:
                context, exten, target = jump
                priority = self._priority(context, exten, target)

    def _priority(self, context: str, exten: str, target: int | str) -> int:
        if isinstance(target, int):
            return target
        if str(target).isdigit():
            return int(target)
        return self.dialplan.find_label(context, exten, str(target)) or 0

    def lookup(self, ch: Channel, name: str) -> str:
        """${NAME}: a channel variable or one of the dialplan functions the default plans use."""
        upper = name.upper()
        functions = {
            "CALLERID(NUM)": ch.caller_number,
            "CALLERID(NAME)": ch.caller_name,
            "CALLERID(ALL)": f'"{ch.caller_name}" <{ch.caller_number}>',
            "CHANNEL(NAME)": ch.name,
            "CHANNEL": ch.name,
            "UNIQUEID": ch.id,
            "EXTEN": ch.exten,
            "CONTEXT": ch.context,
            "CHANNEL(STATE)": ch.state,
            "CHANNEL(LANGUAGE)": ch.language,
        }
        if upper in functions:
            return functions[upper]
        return ch.variables.get(name, "")

    # --- applications ------------------------------------------------------------------------------------
    async def app_noop(self, ch: Channel, data: str) -> None:
        return None

    async def app_set(self, ch: Channel, data: str) -> None:
        name, _, value = data.partition("=")
        name = name.strip()
        if name.startswith("__"):
            name = name[2:]
        elif name.startswith("_"):
            name = name[1:]
        if name and name not in ch.pinned:
            self.pbx.set_var(ch, name, value)
        return None

    async def app_answer(self, ch: Channel, data: str) -> None:
        if ch.state != "Up":
            self.answer(ch)
            if ch.local_half == 2:
                await self.pbx.sleep(0.5)  # a Local ;2 half's Answer() waits ~500 ms for media (traces README)
        return None

    def answer(self, ch: Channel) -> None:
        if ch.local_half == 2:
            self.calls.far_answer(ch)
        else:
            self.pbx.answer(ch)

    async def app_ringing(self, ch: Channel, data: str) -> None:
        if ch.local_half == 2:
            self.calls.far_ringing(ch)
        return None

    async def app_wait(self, ch: Channel, data: str) -> None:
        try:
            seconds = float(data or 0)
        except ValueError:
            seconds = 0.0
        await self.pbx.sleep(seconds)
        return None

    async def app_playback(self, ch: Channel, data: str) -> None:
        args = split_args(data)
        files = args[0].split("&") if data else []
        if ch.state != "Up" and "noanswer" not in args[1:]:
            self.answer(ch)  # Playback() answers the channel first unless told `noanswer`
        for name in files:
            if not name:
                continue
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.pbx.play(
                ch,
                [f"sound:{name}"],
                "dp-" + self.pbx.ids.token(8),
                None,
                on_done=partial(settle, done),
                ari=False,
            )
            await done
        self.pbx.set_var(ch, "PLAYBACKSTATUS", "SUCCESS")
        return None

    async def app_senddtmf(self, ch: Channel, data: str) -> None:
        digits = split_args(data)[0]
        for i, digit in enumerate(digits):
            if i:
                await self.pbx.sleep(0.25)
            await self.pbx.sleep(0.1)
            target = ch.local_peer if ch.local_peer is not None else None
            if target is not None and not target.destroyed:
                self.pbx.dtmf_in(target, digit, 100)  # the other half reads it
            elif ch.bridge is not None or ch.media is not None:
                self.pbx.dtmf_out(ch, digit, 100)
        return None

    async def app_stasis(self, ch: Channel, data: str) -> Jump | None:
        args = split_args(data)
        return await self.pbx.run_stasis(ch, args[0].strip(), args[1:] if len(args) > 1 else [])

    async def app_gotoif(self, ch: Channel, data: str) -> Jump | None:
        condition, _, labels = data.partition("?")
        if_true, _, if_false = labels.partition(":")
        label = if_true if truthy(condition) else if_false
        if not label:
            return None
        return self._target(ch, label)

    async def app_goto(self, ch: Channel, data: str) -> Jump | None:
        return self._target(ch, data)

    def _target(self, ch: Channel, label: str) -> Jump:
        context, exten, prio = parse_target(label, ch.context, ch.exten)
        return context, exten, self._priority(context, exten, prio)

    async def app_busy(self, ch: Channel, data: str) -> None:
        if ch.local_half == 2:
            self.calls.far_busy(ch)
        self.pbx.set_state(ch, "Busy")
        await asyncio.Event().wait()  # Busy() plays the busy tone until the caller hangs up

    async def app_hangup(self, ch: Channel, data: str) -> None:
        if data.strip().isdigit():
            ch.hangup_cause = int(data.strip())
        raise Hungup

    async def app_moh(self, ch: Channel, data: str) -> None:
        args = split_args(data)
        self.pbx.set_moh(ch, True)
        try:
            if len(args) > 1 and args[1].strip():
                await self.pbx.sleep(float(args[1]))
            else:
                await asyncio.Event().wait()
        finally:
            self.pbx.set_moh(ch, False)
        return None

    async def app_dial(self, ch: Channel, data: str) -> None:
        args = split_args(data)
        targets = [t for t in args[0].split("&") if t]
        timeout = float(args[1]) if len(args) > 1 and args[1].strip() else None
        status = await self.dial(ch, targets, timeout)
        self.pbx.set_var(ch, "DIALSTATUS", status)
        # Dial leaves HANGUPCAUSE set from the failed attempt; a following Hangup() without a cause uses it.
        ch.hangup_cause = {"BUSY": 17, "NOANSWER": 19, "CHANUNAVAIL": 20}.get(status, ch.hangup_cause)
        return None

    async def app_queue(self, ch: Channel, data: str) -> None:
        args = split_args(data)
        timeout = float(args[4]) if len(args) > 4 and args[4].strip() else None
        if ch.state != "Up":
            self.answer(ch)
        member = self.calls.phone("PJSIP", f"queue-{args[0] or 'default'}", None)
        member.far_end().set_location("sim-queue-member", "s", 1)
        status = await self.dial(ch, [], timeout, moh=True, callees=[member])
        self.pbx.set_var(ch, "QUEUESTATUS", "CONTINUE" if status == "ANSWER" else "TIMEOUT")
        return None

    async def dial(
        self,
        ch: Channel,
        targets: list[str],
        ring_s: float | None,
        *,
        moh: bool = False,
        callees: list[Channel] | None = None,
    ) -> str:
        """Ring every target for up to `ring_s` (dialplan seconds; None: until one answers or all are gone);
        bridge the first that answers with `ch` until one side hangs up."""
        callees = list(callees or []) + await self._request_all(targets)
        if not callees:
            return "CHANUNAVAIL"
        race = _DialRace(self.pbx, self.calls, ch, callees)
        for callee in callees:
            callee.on_destroy.append(race.callee_destroyed)
            self.calls.dial_out(callee, race.watch(callee), None)
        self._waiting_sound(ch, moh, on=True)
        try:
            status, winner = await race.outcome(ring_s * self.pbx.time_scale if ring_s else None)
            self._waiting_sound(ch, moh, on=False)
            for callee in callees:
                if callee is not winner and not callee.destroyed:
                    self.pbx.hangup(callee, 26, soft=False, request_event=False)
            if winner is None:
                return status
            await self._bridge_until_hangup(ch, winner)
            return "ANSWER"
        finally:
            self._end_dial(ch, callees)

    async def _request_all(self, targets: list[str]) -> list[Channel]:
        callees = []
        for target in targets:
            try:
                callees.append(await self.calls.request(target))
            except Exception:
                log.warning("Dial(%s): cannot create a channel", target)
        return callees

    def _waiting_sound(self, ch: Channel, moh: bool, *, on: bool) -> None:
        """What the caller hears while Dial() rings: music on hold (Queue) or ringback."""
        if moh:
            self.pbx.set_moh(ch, on)
        else:
            self.pbx.set_ringback(ch, on)

    async def _bridge_until_hangup(self, ch: Channel, winner: Channel) -> None:
        if ch.state != "Up":
            self.answer(ch)
        bridge = self.pbx.create_bridge("dial-" + self.pbx.ids.token(8), ["mixing"], "", stasis=False)
        self.pbx.add_to_bridge(bridge, ch)
        self.pbx.add_to_bridge(bridge, winner)
        await winner.flag("ended").wait()
        if not bridge.destroyed:
            self.pbx.destroy_bridge(bridge)

    def _end_dial(self, ch: Channel, callees: list[Channel]) -> None:
        """However Dial() ended: no waiting sound, no callee and no dial bridge left."""
        if ch.moh:
            self.pbx.set_moh(ch, False)
        if ch.ringback:
            self.pbx.set_ringback(ch, False)
        for callee in callees:
            if not callee.destroyed:
                self.pbx.hangup(callee, 16, soft=False, request_event=False)
        for bridge in [b for b in list(self.pbx.bridges.values()) if not b.stasis and ch in b.members]:
            self.pbx.destroy_bridge(bridge)

    async def app_voicemail(self, ch: Channel, data: str) -> None:
        """VoiceMail(box@context[,opts]): greeting, beep, then the caller's audio until hangup, '#' or the
        maximum length; saved as msgNNNN.wav under workdir/voicemail/<context>/<box>/INBOX."""
        from sim.asterisk.audio import Recorder

        box, _, context = split_args(data)[0].partition("@")
        context = context or "default"
        if ch.state != "Up":
            self.answer(ch)
        for prompt in ("vm-intro", "beep"):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.pbx.play(
                ch,
                [f"sound:{prompt}"],
                "vm-" + self.pbx.ids.token(8),
                None,
                on_done=partial(settle, done),
                ari=False,
            )
            await done
        recorder = Recorder()
        stop = asyncio.Event()
        ch.input_sink = recorder.append
        ch.dtmf_sink = lambda digit: stop.set() if digit == "#" else None
        try:
            try:
                await asyncio.wait_for(stop.wait(), self.voicemail_max_s)
            except asyncio.TimeoutError:
                pass
        finally:
            ch.input_sink = None
            ch.dtmf_sink = None
            self._save_voicemail(ch, box, context, recorder)
        self.pbx.set_var(ch, "VMSTATUS", "SUCCESS")
        return None

    def _save_voicemail(self, ch: Channel, box: str, context: str, recorder) -> None:
        inbox = self.workdir / "voicemail" / context / box / "INBOX"
        inbox.mkdir(parents=True, exist_ok=True)
        n = len(list(inbox.glob("msg*.wav")))
        path = inbox / f"msg{n:04d}.wav"
        recorder.save_wav(path, 8000)  # a one-off small write at the end of the message
        self.voicemails.append(
            Voicemail(box, context, path, recorder.duration_ms, ch.caller_name, ch.caller_number, ch.id)
        )


class _DialRace:
    """Dial()'s callees racing to an outcome: the first to answer wins; all busy is BUSY; all gone is
    CHANUNAVAIL."""

    def __init__(self, pbx: Pbx, calls: Calls, caller: Channel, callees: list[Channel]):
        self.pbx, self.calls, self.caller, self.callees = pbx, calls, caller, callees
        self.result: asyncio.Future[tuple[str, Channel | None]] = asyncio.get_running_loop().create_future()
        self.busy: set[Channel] = set()

    def watch(self, callee: Channel) -> DialResult:
        return DialResult(lambda status: self._changed(callee, status))

    def _changed(self, callee: Channel, status: str) -> None:
        if self.result.done():
            return
        if status == "RINGING":
            self.pbx.set_state(callee, "Ringing")
            if self.caller.local_half == 2:
                self.calls.far_ringing(self.caller)  # ringing travels back through the Local channel
        elif status == "ANSWER":
            self.pbx.set_state(callee, "Up")
            self.result.set_result(("ANSWER", callee))
        elif status == "BUSY":
            self.busy.add(callee)
            if len(self.busy) == len(self.callees):
                self.result.set_result(("BUSY", None))

    def callee_destroyed(self, _callee: Channel) -> None:
        if not self.result.done() and all(c.destroyed for c in self.callees):
            self.result.set_result(("CHANUNAVAIL", None))

    async def outcome(self, timeout_s: float | None) -> tuple[str, Channel | None]:
        """(status, the callee that answered); NOANSWER once `timeout_s` has passed."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.result), timeout_s)
        except asyncio.TimeoutError:
            return "NOANSWER", None
