"""The demo's scripted call: what the agent says (the Realtime emulator's script) and what the caller says
(a WAV laid out on a timeline that leaves room for the agent's replies and barges in on the long one).

Both sides come from one plan so they cannot drift apart: every line has a set length (espeak's rate is
fitted to it, `sim.realtime.voice`; without espeak-ng a voice-like synthetic signal of the same length).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
import yaml

from sim.realtime import voice

CALLER_RATE = 8000  # a SIP phone: the simulator's caller side
CALLER_VOICE = "ash"  # espeak en-us+m3; the agent's config voice (shimmer) is en-us+f3
CALLER_NAME = "Alice"
VAD_SILENCE_S = 1.0  # the config's turn_detection.silence_duration_ms: a caller turn ends this long after speech
REPLY_LEAD_S = 0.3  # assumed time from the end of a caller turn to the agent's first audio heard
BARGE_IN_AFTER_S = 1.5  # how far into the agent's long answer the caller interrupts


@dataclass(frozen=True)
class Line:
    text: str
    ms: int


@dataclass(frozen=True)
class Plan:
    greeting: Line
    answers: tuple[Line, ...]  # the agent's reply to caller turn 1, 2, 3
    caller: tuple[Line, ...]  # caller turn 1 (the question), 2 (the barge-in), 3 (goodbye)
    barge_turn: int = 2  # the caller turn spoken over the agent's reply to the previous turn


DEFAULT_PLAN = Plan(
    greeting=Line(f"Hi {CALLER_NAME}, I'm your AI assistant. How can I help you today?", 3000),
    answers=(
        Line(
            "We are open on weekdays from eight in the morning until six in the evening, and on Saturdays "
            "from nine until one.",
            5500,
        ),
        Line("Of course: twelve Harbour Street, right next to the central station.", 3000),
        Line(f"You're welcome, {CALLER_NAME}. Goodbye!", 1800),
    ),
    caller=(
        Line("Hello. What are your opening hours?", 1800),
        Line("Sorry, where exactly are you?", 1600),
        Line("Great, thanks. Goodbye!", 1500),
    ),
)


@dataclass
class Segment:
    """A stretch of the caller's timeline from `start_s`: a line spoken (`pcm` at CALLER_RATE), or silence."""

    start_s: float
    ms: int
    line: Line | None = None
    pcm: np.ndarray | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.ms / 1000


@dataclass
class Timeline:
    segments: list[Segment] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.segments[-1].end_s if self.segments else 0.0

    def spoken(self) -> list[Segment]:
        return [s for s in self.segments if s.line is not None]

    def silence(self, seconds: float) -> None:
        self.segments.append(Segment(self.duration_s, round(1000 * seconds)))

    def say(self, line: Line, pcm: np.ndarray) -> None:
        ms = len(pcm) * 1000 // CALLER_RATE  # whole ms, so every segment starts on its own sample
        self.segments.append(Segment(self.duration_s, ms, line, pcm[: ms * CALLER_RATE // 1000]))

    def pcm(self) -> bytes:
        """The whole timeline as PCM16 at CALLER_RATE: the speech and digital silence."""
        parts = [s.pcm if s.pcm is not None else np.zeros(s.ms * CALLER_RATE // 1000, np.int16) for s in self.segments]
        return np.concatenate(parts).astype("<i2").tobytes() if parts else b""


def caller_speech(line: Line) -> np.ndarray:
    """`line` in the caller's voice at CALLER_RATE (espeak-ng, or the synthetic voice), without the silence
    around it, so the timeline knows when the caller really stops talking (the server's VAD counts from there)."""
    speech = soxr.resample(voice.speech(line.text, line.ms, CALLER_VOICE).astype(np.float32), voice.RATE, CALLER_RATE)
    loud = np.flatnonzero(np.abs(speech) > 100)
    speech = speech[loud[0] : loud[-1] + 1] if len(loud) else speech
    return np.clip(np.rint(speech), -32768, 32767).astype(np.int16)


def caller_timeline(plan: Plan = DEFAULT_PLAN, tail_s: float = 1.0) -> Timeline:
    """The caller's side, from the moment the call is answered. Silences cover each agent reply plus the
    end-of-turn wait, except before the barge-in, which starts BARGE_IN_AFTER_S into the agent's reply."""
    t = Timeline()
    t.silence(REPLY_LEAD_S + plan.greeting.ms / 1000 + 0.7)
    for turn, line in enumerate(plan.caller, start=1):
        if turn > 1:
            reply_s = plan.answers[turn - 2].ms / 1000
            wait_s = BARGE_IN_AFTER_S if turn == plan.barge_turn else reply_s + 0.7
            t.silence(VAD_SILENCE_S + REPLY_LEAD_S + wait_s)
        t.say(line, caller_speech(line))
    t.silence(VAD_SILENCE_S + REPLY_LEAD_S + plan.answers[-1].ms / 1000 + tail_s)
    return t


def write_caller_wav(path: Path, timeline: Timeline) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(CALLER_RATE)
        out.writeframes(timeline.pcm())


def emulator_script(plan: Plan = DEFAULT_PLAN) -> dict:
    """The Realtime emulator's script (`sim.realtime.script.Script.from_dict`): greeting, one reply per caller
    turn, and the caller's turns as input transcripts so the call log reads like the conversation."""
    return {
        "greeting": {"text": plan.greeting.text, "audio_ms": plan.greeting.ms},
        "turns": {i: {"text": a.text, "audio_ms": a.ms} for i, a in enumerate(plan.answers, start=1)},
        "transcripts": {i: c.text for i, c in enumerate(plan.caller, start=1)},
    }


def write_emulator_script(path: Path, plan: Plan = DEFAULT_PLAN) -> None:
    path.write_text(yaml.safe_dump(emulator_script(plan), sort_keys=False, width=120), encoding="utf-8")
