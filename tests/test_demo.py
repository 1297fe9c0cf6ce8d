"""`voice-agent demo`: its call plan and report helpers, then one real run as a subprocess (every role and
both simulators as processes) whose printed transcript, recording and Realtime wire log are checked."""

from __future__ import annotations

import base64
import json
from pathlib import Path
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import redis
import soxr

from sim import demo_call, demo_report
from sim.realtime import g711
from sim.realtime.script import Script
from tests.conftest import REDIS_URL, ROOT
from tests.realtime_schema import check_client_event, check_server_event

PLAN = demo_call.DEFAULT_PLAN
RATE = demo_call.CALLER_RATE


# --- the call plan -------------------------------------------------------------------------------------------


def test_emulator_script_is_a_valid_script_with_the_plan_lines():
    script = Script.from_dict(demo_call.emulator_script(PLAN))
    assert script.reply_for(0, after_tool=False).text == PLAN.greeting.text
    assert script.reply_for(0, after_tool=False).audio_ms == PLAN.greeting.ms
    assert [script.reply_for(n, after_tool=False).text for n in (1, 2, 3)] == [a.text for a in PLAN.answers]
    assert [script.transcript_for(n) for n in (1, 2, 3)] == [c.text for c in PLAN.caller]
    assert PLAN.answers[PLAN.barge_turn - 2].ms >= 5000  # long enough to be interrupted


def test_caller_timeline_waits_for_replies_and_barges_in_on_the_long_one():
    t = demo_call.caller_timeline(PLAN)
    spoken = t.spoken()
    assert [s.line for s in spoken] == list(PLAN.caller)
    # The question comes after the greeting has played.
    assert spoken[0].start_s >= PLAN.greeting.ms / 1000 + 0.5
    # The barge-in starts while the reply to the question is playing, about 1.5 s in.
    reply_start = spoken[0].end_s + demo_call.VAD_SILENCE_S + demo_call.REPLY_LEAD_S
    assert reply_start + 1.0 <= spoken[1].start_s <= reply_start + 2.0
    assert spoken[1].start_s < reply_start + PLAN.answers[0].ms / 1000 - 2.0
    # "Goodbye" waits until the second answer is over.
    assert spoken[2].start_s > spoken[1].end_s + demo_call.VAD_SILENCE_S + PLAN.answers[1].ms / 1000
    assert 15 < t.duration_s < 30


def test_caller_pcm_is_speech_where_the_caller_talks_and_digital_silence_elsewhere():
    t = demo_call.caller_timeline(PLAN)
    samples = np.frombuffer(t.pcm(), dtype="<i2")
    assert len(samples) == pytest.approx(t.duration_s * RATE, abs=RATE * 0.05)
    for seg in t.segments:
        part = samples[int(seg.start_s * RATE) : int(seg.end_s * RATE)]
        if seg.line is None:
            assert not part.any()
        else:
            assert 0.5 * seg.line.ms <= seg.ms <= seg.line.ms
            # Speech from the segment's start to its end, with no pause between words long enough to split it
            # (either voice: espeak-ng's words, or the synthetic voice's syllables).
            ((start, end),) = demo_report.voiced_spans(part, RATE)
            assert start < 0.1 and end > seg.ms / 1000 - 0.1, (seg.line.text, start, end, seg.ms)


def test_caller_speaks_with_the_synthetic_voice_when_espeak_is_missing(monkeypatch):
    from sim.realtime import voice

    monkeypatch.setattr(voice, "espeak_available", lambda: False)
    line = PLAN.caller[0]
    pcm = demo_call.caller_speech(line)
    assert len(pcm) == pytest.approx(line.ms * RATE / 1000, rel=0.1)  # the synthetic voice fills its length
    assert demo_report.voiced_share(pcm, RATE, 0, line.ms / 1000) > 0.4  # syllables with gaps between
    monkeypatch.setattr(voice, "espeak_available", lambda: True)
    if voice.shutil.which("espeak-ng"):
        assert not np.array_equal(demo_call.caller_speech(line)[: len(pcm)], pcm)


# --- the report helpers --------------------------------------------------------------------------------------


def test_numbers_and_p50_max():
    assert demo_report.numbers("40.5,12,bad,") == [40.5, 12.0]
    assert demo_report.numbers(None) == []
    assert demo_report.p50_max([]) == "none"
    assert demo_report.p50_max([42.4]) == "42 ms"
    assert demo_report.p50_max([10, 30, 90]) == "p50 30 ms, max 90 ms (n=3)"


def test_transcript_marks_only_cut_agent_lines():
    full = ("We are open on weekdays from eight until six.",)
    entries = [
        demo_report.LogEntry.from_fields({"role": "assistant", "text": "We are open on weekdays…", "t_ms": "8470"}),
        demo_report.LogEntry.from_fields({"role": "assistant", "text": full[0], "t_ms": "9000"}),
        demo_report.LogEntry.from_fields({"role": "user", "text": "We are", "t_ms": "9100"}),
        demo_report.LogEntry.from_fields(
            {"role": "tool", "text": "", "t_ms": "9500", "name": "hangup_call", "arguments": "{}", "output": "ok"}
        ),
    ]
    lines = demo_report.transcript_lines(entries, full)
    assert lines[0] == "   8.47s  agent   We are open on weekdays…  [cut off by the caller]"
    assert lines[1].endswith("until six.") and "cut off" not in lines[2]
    assert lines[2] == "   9.10s  caller  We are"
    assert lines[3] == "   9.50s  tool    hangup_call({}) -> ok"


def test_voiced_spans_merge_short_pauses_and_split_at_long_ones():
    def tone(s: float) -> np.ndarray:
        return (8000 * np.sin(2 * np.pi * 300 * np.arange(int(s * RATE)) / RATE)).astype(np.int16)

    def quiet(s: float) -> np.ndarray:
        return np.zeros(int(s * RATE), np.int16)

    samples = np.concatenate([quiet(0.5), tone(1.0), quiet(0.2), tone(0.5), quiet(1.5), tone(0.3), quiet(0.5)])
    spans = demo_report.voiced_spans(samples, RATE)
    assert [(round(a, 2), round(b, 2)) for a, b in spans] == [(0.5, 2.2), (3.7, 4.0)]
    assert demo_report.voiced_share(samples, RATE, 0.5, 1.5) == 1.0
    assert demo_report.voiced_share(samples, RATE, 2.2, 3.7) == 0.0


# --- one real demo run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "VA_DEMO_WORKDIR": str(workdir), "REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    summary = json.loads((workdir / "demo.json").read_text()) if (workdir / "demo.json").exists() else {}
    return proc, summary, workdir


@pytest.mark.slow  # measured 24.4 s
@pytest.mark.timeout(120)
def test_demo_exits_0_and_prints_the_conversation(demo_run):
    proc, summary, _ = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert f"agent   {PLAN.greeting.text}" in out
    assert f"caller  {PLAN.caller[0].text}" in out
    assert "[cut off by the caller]" in out  # the long answer, interrupted
    assert f"agent   {PLAN.answers[1].text}" in out  # the answer to the barge-in
    assert "answer -> first greeting frame" in out and "demo OK" in out
    assert all(summary["checks"].values()) and len(summary["checks"]) == 8
    assert summary["checks"]["summary email delivered"]
    (mail,) = sorted((Path(summary["workdir"]) / "mail").glob("*.eml"))
    text = mail.read_text(errors="replace")
    assert "Subject: Call summary" in text and PLAN.caller[0].text.split()[0] in text  # the transcript is in it
    left = redis.Redis.from_url(REDIS_URL).keys(summary["prefix"] + "*")
    assert left == []  # the demo cleaned up its key prefix


@pytest.mark.slow  # shares the demo run above
@pytest.mark.timeout(120)
def test_demo_recording_holds_the_agent_speaking(demo_run):
    proc, summary, workdir = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:]
    samples, rate = demo_report.read_wav(workdir / "caller-heard.wav")
    assert len(samples) / rate > 15
    agent = [e for e in summary["log"] if e["role"] == "assistant"]
    assert len(agent) == 4
    # Between the agent's lines the caller hears silence: the speech spans are the agent's four lines.
    spans = demo_report.voiced_spans(samples, rate)
    assert len(spans) == 4
    assert spans[0][0] < 0.5  # the greeting, at once
    # Each span is the line the model sent, as the model sent it: compared with the audio in the wire log,
    # not with levels or voiced shares of one voice (espeak-ng's, or the synthetic one without it).
    sent = agent_audio_sent(workdir / "realtime-wire.jsonl", rate)
    full_lines = {PLAN.greeting.text, *(a.text for a in PLAN.answers)}
    for entry, (start, end), said in zip(agent, spans, sent, strict=True):
        # Logged when the caller finished hearing it: the audio lies just before t_ms.
        assert start < entry["t_ms"] / 1000 < end + 0.5, (entry, start, end)
        said_spans = demo_report.voiced_spans(said, rate)
        said_start, said_end = said_spans[0][0], said_spans[-1][1]
        if entry["text"] in full_lines:  # heard whole
            assert end - start > said_end - said_start - 0.2, (entry, start, end, said_end - said_start)
        else:  # the interrupted line (cut short in the log too): the caller heard its start only
            assert end - start < said_end - said_start - 1.0, (entry, start, end, said_end - said_start)
        heard = samples[int(start * rate) : int(end * rate)]
        said = said[int(said_start * rate) :][: len(heard)]
        assert abs(rms_dbfs(heard) - rms_dbfs(said)) < 1.0, (entry, rms_dbfs(heard), rms_dbfs(said))


def agent_audio_sent(wire_log: Path, rate: int) -> list[np.ndarray]:
    """The audio of each agent item, in order, as the emulator sent it (its wire log), at `rate`."""
    formats: dict[str, str] = {}
    items: dict[str, bytearray] = {}
    item_format: dict[str, str] = {}
    for line in wire_log.read_text().splitlines():
        record = json.loads(line)
        event = record["event"]
        if event["type"] == "session.updated":
            formats[record["session"]] = event["session"]["audio"]["output"]["format"]["type"]
        elif record["dir"] == "out" and event["type"] == "response.output_audio.delta":
            items.setdefault(event["item_id"], bytearray()).extend(base64.b64decode(event["delta"]))
            item_format[event["item_id"]] = formats[record["session"]]
    out = []
    for item_id, wire in items.items():
        if item_format[item_id] == "audio/pcm":
            pcm, wire_rate = np.frombuffer(bytes(wire), dtype="<i2"), 24000
        else:
            pcm, wire_rate = g711.decode(bytes(wire), item_format[item_id]), 8000
        if wire_rate != rate:
            pcm = np.clip(np.rint(soxr.resample(pcm.astype(np.float32), wire_rate, rate)), -32768, 32767)
        out.append(pcm.astype(np.int16))
    return out


def rms_dbfs(samples: np.ndarray) -> float:
    x = samples.astype(np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) / 32768 + 1e-12))


@pytest.mark.slow  # shares the demo run above
@pytest.mark.timeout(120)
def test_demo_wire_log_validates_strictly(demo_run):
    proc, summary, workdir = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:]
    seen: Counter[str] = Counter()
    lines = (workdir / "realtime-wire.jsonl").read_text().splitlines()
    for n, line in enumerate(lines, 1):
        record = json.loads(line)
        assert "event" in record, f"line {n}: a frame that is not a JSON event: {record}"
        check = check_client_event if record["dir"] == "in" else check_server_event
        try:
            seen[f"{record['dir']} {check(record['event'])}"] += 1
        except ValueError as exc:
            pytest.fail(f"line {n} ({record['dir']} {record['event'].get('type')}): {exc}")
    assert len(lines) > 500
    for name in (
        "in SessionUpdateEvent",
        "in InputAudioBufferAppendEvent",
        "in ConversationItemTruncateEvent",
        "out SessionUpdatedEvent",
        "out ResponseAudioDeltaEvent",
        "out ResponseDoneEvent",
    ):
        assert seen[name], (name, seen)


@pytest.mark.slow  # shares the demo run above
def test_demo_prints_the_ari_password_it_set_and_where_it_is(demo_run):
    proc, _, _ = demo_run
    assert re.search(r"ARI user asterisk, password demo-[0-9a-f]{12} \(made for this run: given to", proc.stdout)
