"""The demo's caller on a real Asterisk, made of Asterisk's own parts: a Local channel into the shipped entry
point, the caller's speech played by Asterisk into it (`POST /channels/{id}/play`) and what the caller hears
recorded by Asterisk (`POST /channels/{snoop}/record`), then read from the run directory.

    snoop (spy=in) ── records ──┐
                                 Local ;1  (our app; Asterisk plays caller-says.wav to it)
                                    │
                                 Local ;2 → from-ai-agent-openai → Stasis(the agent) → bridge → media worker

The recording is taken on a snoop of ;1 (spy=in: only what ;1 receives, the agent), not on ;1 itself: a
Stasis channel runs its commands one at a time, so a record on the channel that plays would wait for the
playback to end. The snoop and its recording start before ;1 is dialled, so nothing after the answer is
missed; the WAV saved for the report starts at the answer, like the simulator's caller-heard.wav.
"""

from __future__ import annotations

import asyncio
import os
import time
import wave
from pathlib import Path

from sim.ari_app import AriApp, AriAppError

APP = "va-demo-caller"
EVENT_TIMEOUT_S = 10.0
RECORDING_TIMEOUT_S = 5.0  # after the hangup, for Asterisk to finish the recording's file


class DemoCallError(AriAppError):
    pass


class AriDemoCaller(AriApp):
    """One scripted caller through a real Asterisk (async context manager: events socket and HTTP session)."""

    error = DemoCallError

    def __init__(self, ari_url: str, user: str, password: str, recordings_dir: Path):
        super().__init__(ari_url, user, password, APP)
        self.recordings_dir = recordings_dir  # where Asterisk writes stored recordings (<spool>/recording)
        run = os.urandom(3).hex()
        self.id, self.peer_id = f"vademo-{run}", f"vademo-{run}-2"
        self.snoop_id, self.recording = f"vademo-{run}-snoop", f"vademo-{run}"
        self.events: dict[str, asyncio.Event] = {}
        self.times: dict[str, float] = {}  # monotonic time of each first event of interest
        self.dial_status = ""

    async def before_close(self) -> None:
        for channel in (self.id, self.snoop_id):
            await self.delete(f"/channels/{channel}")

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "StasisStart":
            self._mark(f"in:{event['channel']['id']}")
        elif kind == "Dial" and event.get("peer", {}).get("id") == self.id:
            self.dial_status = event.get("dialstatus", "")
            if self.dial_status not in ("", "RINGING", "PROGRESS"):
                self._mark("dialled")
        elif kind in ("StasisEnd", "ChannelDestroyed") and event["channel"]["id"] == self.id:
            self._mark("gone")
        elif kind == "RecordingStarted" and event["recording"]["name"] == self.recording:
            self._mark("recording")
        elif kind in ("RecordingFinished", "RecordingFailed") and event["recording"]["name"] == self.recording:
            self._mark("recorded")

    def _mark(self, name: str) -> None:
        self.times.setdefault(name, time.monotonic())
        self._event(name).set()

    def _event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    async def _wait(self, name: str, what: str, timeout: float = EVENT_TIMEOUT_S) -> None:
        try:
            await asyncio.wait_for(self._event(name).wait(), timeout)
        except asyncio.TimeoutError:
            raise DemoCallError(f"{what}: nothing within {timeout:g}s") from None

    async def until_gone(self, within_s: float) -> bool:
        """True once the caller's channel is gone (the agent hung up), False when `within_s` pass first."""
        try:
            await asyncio.wait_for(self._event("gone").wait(), max(0.0, within_s))
        except asyncio.TimeoutError:
            return False
        return True

    # --- the call --------------------------------------------------------------------------------------
    async def dial(self, context: str, caller_name: str, caller_number: str, answer_timeout: float = 10) -> float:
        """Create the caller, start recording what it hears, dial; the monotonic time of the answer."""
        await self.request(
            "POST",
            "/channels/create",
            {
                "endpoint": f"Local/s@{context}",
                "app": APP,
                "channelId": self.id,
                "otherChannelId": self.peer_id,
                "formats": "slin",
            },
            {
                "variables": {  # ;2's caller is ;1's connected line (core_local copies it so)
                    "CONNECTEDLINE(name)": caller_name,
                    "CONNECTEDLINE(num)": caller_number,
                    "CALLERID(name)": caller_name,
                    "CALLERID(num)": caller_number,
                }
            },
        )
        await self._wait(f"in:{self.id}", "StasisStart of the caller")
        await self.request("POST", f"/channels/{self.id}/snoop", {"spy": "in", "app": APP, "snoopId": self.snoop_id})
        await self._wait(f"in:{self.snoop_id}", "StasisStart of the snoop")
        await self.request(
            "POST",
            f"/channels/{self.snoop_id}/record",
            {"name": self.recording, "format": "wav", "ifExists": "overwrite", "beep": "false"},
        )
        await self._wait("recording", "RecordingStarted")
        await self.request("POST", f"/channels/{self.id}/dial", {"timeout": str(int(answer_timeout))})
        await self._wait("dialled", "the agent's answer", answer_timeout + 2)
        if self.dial_status != "ANSWER":
            raise DemoCallError(f"{context}: dial status {self.dial_status}")
        return self.times["dialled"]

    async def play(self, wav: Path) -> None:
        """Asterisk plays `wav` (8 kHz mono 16-bit) to the caller's channel: into the call, as the caller."""
        await self.request("POST", f"/channels/{self.id}/play", {"media": f"sound:{wav.with_suffix('')}"})

    async def hang_up(self) -> None:
        await self.delete(f"/channels/{self.id}")
        await self._wait("gone", "the caller's hangup")

    async def save_heard(self, out: Path, from_t: float) -> int:
        """Wait for the recording to be finished, then write what the caller heard from monotonic `from_t` on
        (the answer) to `out`; its length in ms."""
        try:
            await self._wait("recorded", "RecordingFinished", RECORDING_TIMEOUT_S)
        except DemoCallError:
            await self.delete(f"/recordings/live/{self.recording}")  # stop it; the file is what was written
        source = self.recordings_dir / f"{self.recording}.wav"
        if not source.exists():
            raise DemoCallError(f"no recording at {source}")
        with wave.open(str(source), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            skip = max(0, round((from_t - self.times["recording"]) * rate))
            wav.setpos(min(skip, wav.getnframes()))
            frames = wav.readframes(wav.getnframes())
        with wave.open(str(out), "wb") as dest:
            dest.setnchannels(channels)
            dest.setsampwidth(width)
            dest.setframerate(rate)
            dest.writeframes(frames)
        return len(frames) // (width * channels) * 1000 // rate


async def run_call(
    ari_url: str,
    user: str,
    password: str,
    recordings_dir: Path,
    context: str,
    caller_name: str,
    caller_number: str,
    caller_wav: Path,
    duration_s: float,
    heard_wav: Path,
    on_answer=None,
) -> dict:
    """The demo's call: the caller's WAV played from the answer on, hung up after `duration_s` (unless the agent
    hangs up first), what it heard saved to `heard_wav`. The same keys as the simulator's run."""
    result: dict = {"placed": False, "answered": False}
    async with AriDemoCaller(ari_url, user, password, recordings_dir) as caller:
        result.update(placed=True, channel=caller.peer_id)
        try:
            answered = await caller.dial(context, caller_name, caller_number)
        except DemoCallError as exc:
            result["error"] = str(exc)
            return result
        result["answered"] = True
        if on_answer is not None:
            on_answer(caller.peer_id)
        await caller.play(caller_wav)
        agent_hung_up = await caller.until_gone(answered + duration_s - time.monotonic())
        result["hung_up_by"] = "agent" if agent_hung_up else "caller"
        if result["hung_up_by"] == "agent":
            result["agent_hung_up_after_s"] = round(time.monotonic() - answered, 1)
        else:
            await caller.hang_up()
        try:
            result["heard_ms"] = await caller.save_heard(heard_wav, answered)
        except DemoCallError as exc:
            result["error"] = str(exc)
            result["heard_ms"] = None
    return result
