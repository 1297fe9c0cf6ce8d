"""Barge-in end to end, as the caller hears it: bench/bargein.py as a subprocess (the Realtime emulator, the
Asterisk simulator, a controller and a media worker, all real processes) makes one call over a line echo in which
the caller coughs (a 30 ms noise burst) early in the agent's reply and then interrupts it. On the caller's side
of the line: the cough ducks the agent and the agent is heard again after it, the interruption stops the agent
(it stays below -40 dBFS), and only the interruption truncated the reply. Timings are bench figures, not
asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REDIS_URL, ROOT


@pytest.mark.slow  # measured 16 s
@pytest.mark.timeout(120)
def test_an_interruption_stops_the_agent_and_a_noise_burst_only_ducks_it(tmp_path):
    out = tmp_path / "bargein.json"
    env = {**os.environ, "REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "bench/bargein.py", "--interruptions", "2", "--echo-db", "-15", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # Each interruption found the agent talking and stopped it on the caller's side.
    assert result["counted"] + result["agent_silent_at_onset"] == 2 and result["counted"] >= 1
    assert len(result["stop_ms"]) == result["counted"]
    # The coughs: the agent dipped at once, was heard again afterwards, and nothing but the interruptions cut it.
    assert result["bursts_ducked"] == 2
    assert result["bursts_heard_after"] == 2
    assert result["truncations"] == 2 and result["false_stops"] == 0
    assert int(result["bargein_restores"]) >= 2  # the worker's own count: the coughs' ducks, restored
