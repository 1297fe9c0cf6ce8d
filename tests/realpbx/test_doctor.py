"""`voice-agent doctor` against the real Asterisk 22.10.1: the judge of what ARI's info, applications and
modules answers look like (module names end in .so; a loaded module answers 200 "Running")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import CONFIG, REDIS_URL, ROOT


def _doctor(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """`voice-agent doctor --json` on the shipped config: the process and its results by check name."""
    res = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "--config", str(CONFIG), "doctor", "--json", "--timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return res, {r["check"]: r for r in json.loads(res.stdout)}


def test_doctor_reads_the_real_asterisk(real_asterisk):
    env = {
        **os.environ,
        "ASTERISK_ARI_URL": real_asterisk.ari_url,
        "ASTERISK_ARI_USERNAME": real_asterisk.user,
        "ASTERISK_ARI_PASSWORD": real_asterisk.password,
        "REDIS_URL": REDIS_URL,
        "OPENAI_API_KEY": "sk-test-offline-key",
        "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",  # nothing answers: that check fails, offline
    }
    res, results = _doctor(env)
    assert results["ari.connect"]["status"] == "ok", results["ari.connect"]
    assert real_asterisk.version in results["ari.connect"]["detail"]
    assert results["ari.modules"]["status"] == "ok", results["ari.modules"]
    assert "chan_audiosocket.so" in results["ari.modules"]["detail"]
    assert results["ari.app"]["status"] == "warn"  # the harness runs no controller
    assert results["ari.dialplan"]["status"] == "skipped"
    assert results["clock.asterisk"]["status"] == "ok", results["clock.asterisk"]
    assert results["openai.models"]["status"] == "fail" and "cannot reach" in results["openai.models"]["detail"]

    wrong = {**env, "ASTERISK_ARI_PASSWORD": "not-" + real_asterisk.password}
    res, results = _doctor(wrong)
    assert res.returncode == 1
    assert results["ari.connect"]["status"] == "fail" and "credentials" in results["ari.connect"]["detail"]
