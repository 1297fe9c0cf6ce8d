"""`voice-agent demo --real-asterisk` and `voice-agent loadtest --real-asterisk` as a user runs them: each starts
a real Asterisk of its own from the harness's cache, runs the cluster against it, reports, and stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.demo_call import CALLER_NAME, DEFAULT_PLAN as PLAN
from sim.demo_report import read_wav, voiced_spans
from sim.real_asterisk import RealAsterisk
from tests.conftest import REDIS_URL, ROOT

CALLS = 6


def needs_harness(ast: RealAsterisk) -> None:
    """The commands start their own Asterisk from the harness's cache: a session on --ari-url may have none."""
    if not ast.started_here:
        pytest.skip(f"--real-asterisk starts the harness's own Asterisk; the suite was given {ast.ari_url}")


def run(args: list[str], workdir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "VA_DEMO_WORKDIR": str(workdir),
        "VA_LOADTEST_WORKDIR": str(workdir),
        "REDIS_URL": REDIS_URL,
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stopped(run_dir: Path) -> bool:
    return not RealAsterisk.from_state(run_dir).running()


@pytest.fixture(scope="module")
def demo_run(real_asterisk, tmp_path_factory):
    needs_harness(real_asterisk)
    workdir = tmp_path_factory.mktemp("demo-real")
    proc = run(["demo", "--real-asterisk"], workdir, timeout=150)
    summary = json.loads((workdir / "demo.json").read_text()) if (workdir / "demo.json").exists() else {}
    return proc, summary, workdir


@pytest.mark.timeout(180)
def test_demo_through_the_real_asterisk_has_the_whole_conversation(demo_run):
    proc, summary, workdir = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert f"agent   {PLAN.greeting.text}" in out
    assert f"caller  {PLAN.caller[0].text}" in out  # played by Asterisk, heard by the worker, sent to the model
    assert "[cut off by the caller]" in out  # the barge-in, on the real PBX's audio path
    assert f"agent   {PLAN.answers[1].text}" in out
    assert summary["asterisk"]["version"].startswith("22.")
    assert summary["asterisk"]["left"] == {"channels": 0, "bridges": 0}
    assert summary["checks"] and all(summary["checks"].values()), summary["checks"]
    assert summary["call"]["caller_name"] == CALLER_NAME  # the caller id reached the agent through Local
    assert stopped(workdir / "asterisk")


@pytest.mark.timeout(180)
def test_demo_recording_by_asterisk_holds_the_agent_and_only_the_agent(demo_run):
    proc, summary, workdir = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:]
    samples, rate = read_wav(workdir / "caller-heard.wav")
    assert rate == 8000 and len(samples) / rate > 15
    # The agent's four lines, and nothing of the caller's own speech (the snoop records what the caller hears).
    assert len(voiced_spans(samples, rate)) == 4
    greeting_start, greeting_end = voiced_spans(samples, rate)[0]  # from the answer on, and heard whole
    assert greeting_start < 0.6 and greeting_end - greeting_start > 0.8 * PLAN.greeting.ms / 1000


@pytest.mark.timeout(180)
def test_small_loadtest_on_the_real_asterisk(real_asterisk, tmp_path):
    needs_harness(real_asterisk)
    out = tmp_path / "results.json"
    proc = run(
        [
            "loadtest",
            "--real-asterisk",
            "--calls",
            str(CALLS),
            "--ramp",
            "2",
            "--hold",
            "8",
            "--redis-url",
            REDIS_URL,
            "--out",
            str(out),
        ],
        tmp_path / "work",
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["params"]["target"] == "real-asterisk" and result["params"]["asterisk"].startswith("22.")
    assert result["setup"] == {"placed": CALLS, "answered": CALLS, "set_up": CALLS, "failed": 0, "success_rate": 1.0}
    assert result["errors"] == {}, result["errors"]
    assert result["dropped"] == 0 and result["active_left"] == 0
    assert result["left"] == {"channels": 0, "bridges": 0}  # GET /channels and /bridges of that Asterisk
    assert result["emails"] == {"delivered": CALLS, "expected": CALLS}
    for name in ("setup", "greeting", "turn", "bargein"):  # the callers spoke the plan: turns and a barge-in
        assert result["latency_ms"][name]["n"] >= CALLS, (name, result["latency_ms"][name])
    heard = result["caller_heard"]
    assert heard["answered"] == heard["heard_agent"] == CALLS
    assert "asterisk" in {p["role"] for p in result["processes"]}
    assert all(result["checks"].values()) and "load test OK" in proc.stdout
    assert stopped(tmp_path / "work" / "asterisk")
