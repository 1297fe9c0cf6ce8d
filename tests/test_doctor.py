"""`voice-agent doctor` as an operator runs it, against the simulators (Asterisk, Realtime, mail) as processes
and the real Redis: all green, and each broken part named with its cause (a wrong key, a wrong ARI password,
SMTP down, a placeholder key, a config that does not load)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from openai.types import Model

from sim.cluster import LocalCluster, free_port
from sim.realtime.server import Emulator
from tests.conftest import CONFIG, REDIS_URL, ROOT, TEST_API_KEY, TEST_ARI_PASSWORD, attach_asterisk

DOCTOR_TIMEOUT = 60  # the whole run; each check has its own --timeout


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """The Asterisk simulator, the Realtime emulator (accepting only TEST_API_KEY) and the mail simulator."""
    workdir = tmp_path_factory.mktemp("doctor")
    cluster = LocalCluster(CONFIG, workdir, {})
    try:
        attach_asterisk(cluster)
        realtime = cluster.start_sim("realtime", "--api-key", TEST_API_KEY)
        mail = cluster.start_sim("mail", "--dir", str(workdir / "mail"))
        smtp_port = mail.url.rsplit(":", 1)[1]
        cluster.env.update(
            OPENAI_REALTIME_URL=realtime.url,
            OPENAI_API_KEY=TEST_API_KEY,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=smtp_port,
            REDIS_URL=REDIS_URL,
            REALTIME_PREWARM="0",
        )
        yield cluster.env
    finally:
        cluster.stop_all()


def doctor(env: dict[str, str], *args: str) -> tuple[int, str]:
    res = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "--config", str(CONFIG), "doctor", "--timeout", "5", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=DOCTOR_TIMEOUT,
    )
    return res.returncode, res.stdout + res.stderr


def doctor_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict]]:
    code, out = doctor(env, "--json", *args)
    results = json.loads(out)
    assert all(set(r) == {"check", "status", "detail", "fix", "elapsed_ms"} for r in results)
    return code, {r["check"]: r for r in results}


@pytest.mark.slow  # measured 1.4 s (0.4 s + 1 s to start the three simulators, shared by the module)
def test_all_green_against_the_simulators(sims):
    code, results = doctor_json(sims)
    failed = {name: r["detail"] for name, r in results.items() if r["status"] == "fail"}
    assert code == 0 and not failed, failed
    for name in ("config", "openai.key", "openai.models", "openai.realtime", "ari.connect", "ari.modules", "smtp"):
        assert results[name]["status"] == "ok", results[name]
    assert "session.created in" in results["openai.realtime"]["detail"]
    assert results["ari.app"]["status"] == "warn"  # no controller runs: a warning, not a failure
    assert results["ari.dialplan"]["status"] == "skipped"
    assert results["smtp.test_mail"]["status"] == "skipped"  # no mail unless asked


@pytest.mark.slow  # measured 0.4 s, plus the module's 1 s simulator start when run alone
def test_wrong_api_key_is_named_and_never_printed(sims):
    wrong = "sk-wrong-" + "x1" * 10
    code, out = doctor({**sims, "OPENAI_API_KEY": wrong})
    assert code == 1
    line = next(line for line in out.splitlines() if " openai.models " in line)
    assert line.startswith("✘") and "key is wrong" in line and "401" in line
    assert "- openai.realtime" in out and "needs openai.models, which failed" in out
    assert wrong not in out


@pytest.mark.slow  # measured 0.4 s, plus the module's 1 s simulator start when run alone
def test_placeholder_key_fails_before_any_request(sims):
    code, results = doctor_json({**sims, "OPENAI_API_KEY": "your_api_key_here"})
    assert code == 1
    assert results["openai.key"]["status"] == "fail" and "placeholder" in results["openai.key"]["detail"]
    assert results["openai.models"]["status"] == "skipped"


@pytest.mark.slow  # measured 0.4 s, plus the module's 1 s simulator start when run alone
def test_wrong_ari_password_is_a_credentials_failure(sims):
    wrong = "not-" + TEST_ARI_PASSWORD
    code, out = doctor({**sims, "ASTERISK_ARI_PASSWORD": wrong})
    assert code == 1
    line = next(line for line in out.splitlines() if " ari.connect " in line)
    assert line.startswith("✘") and "credentials" in line and "401" in line
    assert wrong not in out


@pytest.mark.slow  # measured 0.4 s, plus the module's 1 s simulator start when run alone
def test_smtp_down_fails_and_the_others_still_run(sims):
    code, results = doctor_json({**sims, "SMTP_PORT": str(free_port())})
    assert code == 1
    assert results["smtp"]["status"] == "fail" and "refused" in results["smtp"]["detail"]
    assert results["openai.realtime"]["status"] == "ok" and results["ari.modules"]["status"] == "ok"


@pytest.mark.slow  # measured 0.4 s, plus the module's 1 s simulator start when run alone
def test_send_test_mail_sends_one_message(sims, tmp_path):
    code, results = doctor_json(sims, "--send-test-mail", "ops@example.com")
    assert code == 0, results
    assert results["smtp.test_mail"]["status"] == "ok"


def test_a_config_that_does_not_load_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  openai_realtime:\n    voise: alloy\n")
    res = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "--config", str(bad), "doctor", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT,
    )
    assert res.returncode == 2
    (result,) = json.loads(res.stdout)
    assert result["check"] == "config" and result["status"] == "fail" and "voise" in result["detail"]


def _get(url: str, key: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_emulator_answers_models_like_openai():
    async def scenario() -> list[tuple[int, dict]]:
        emu = Emulator(api_keys={TEST_API_KEY})
        await emu.start()
        url = f"http://127.0.0.1:{emu.port}/v1/models"
        try:
            return [await asyncio.to_thread(_get, url, key) for key in (TEST_API_KEY, "sk-wrong-key-1234", None)]
        finally:
            await emu.stop()

    (good, listing), (bad, wrong), (missing, none) = asyncio.run(scenario())
    assert good == 200 and listing["object"] == "list"
    models = [Model.model_validate(m) for m in listing["data"]]
    assert "gpt-realtime-2.1" in {m.id for m in models}
    assert bad == 401 and wrong["error"]["code"] == "invalid_api_key" and wrong["error"]["type"]
    assert "Incorrect API key" in wrong["error"]["message"] and "sk-wrong-key-1234" not in wrong["error"]["message"]
    assert missing == 401 and none["error"]["code"] is None
