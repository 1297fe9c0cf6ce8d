"""`voice-agent loadtest --real-asterisk --chaos kill-worker@6s`: a media worker SIGKILLed under calls through a
real Asterisk 22, per transport, judged from what the callers (sim.pbx_caller legs) heard. The figures must add
up, nothing may be left in Asterisk or Redis, and the calls go on (moved live to the other worker) without dead
air."""

from __future__ import annotations

import json

import pytest

from sim import chaos
from tests.conftest import REDIS_URL
from tests.realpbx.test_tools_cli import needs_harness, run

PROFILES = {"audiosocket": "telephony_pcm16_24k", "rtp": "telephony_ulaw_8k"}


@pytest.fixture(scope="module", params=sorted(PROFILES))
def chaos_run(request, real_asterisk, tmp_path_factory):
    needs_harness(real_asterisk)
    workdir = tmp_path_factory.mktemp(f"chaos-{request.param}")
    out = workdir / "results.json"
    proc = run(
        [
            "loadtest",
            "--real-asterisk",
            "--calls",
            "6",
            "--workers",
            "2",
            "--ramp",
            "2",
            "--hold",
            "12",
            "--profile",
            PROFILES[request.param],
            "--chaos",
            "kill-worker@6s",
            "--redis-url",
            REDIS_URL,
            "--out",
            str(out),
        ],
        workdir / "work",
        timeout=200,
    )
    assert out.exists(), proc.stdout[-4000:] + proc.stderr[-2000:]
    return request.param, proc, json.loads(out.read_text())


@pytest.mark.timeout(240)
def test_kill_worker_on_the_real_asterisk_is_reported_consistently(chaos_run):
    transport, proc, result = chaos_run
    assert result["params"]["target"] == "real-asterisk"
    report = result["chaos"]
    [fault] = report["faults"]
    assert fault["target"].startswith("media-worker-") and fault["affected"] >= 1, (transport, fault)
    outcomes = ("survived", "fallback", "dead_air", "dropped", "undecided")
    assert sum(fault[k] for k in outcomes) == fault["affected"] == len(fault["calls"])
    assert report["mails"] == {"calls": 6, "lost": [], "duplicated": []}, transport
    assert all(v == 0 for v in report["leaks"].values()), (transport, report["leaks"])  # GET /channels, /bridges
    failing = chaos.failures(report)
    assert (proc.returncode != 0) == bool(failing), proc.stdout[-3000:]
    for name in failing:
        assert name in proc.stdout


@pytest.mark.timeout(240)
def test_kill_worker_on_the_real_asterisk_leaves_no_dead_air_and_the_calls_go_on(chaos_run):
    transport, _, result = chaos_run
    [fault] = result["chaos"]["faults"]
    assert fault["dead_air"] == 0, (transport, fault["calls"])
    assert fault["survived"] >= 0.95 * fault["affected"], (transport, fault["calls"])
