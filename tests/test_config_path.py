"""Which config file a command reads without --config, the error when there is none, and `--version`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config
from shared.config.load import CONFIG_ENV, SYSTEM_PATH, resolve_path
from tests.conftest import ROOT, TEST_API_KEY

MINIMAL = "company_name: {name}\nproviders:\n  openai_realtime:\n    api_key: " + TEST_API_KEY + "\n"
ENV = {"OPENAI_API_KEY": TEST_API_KEY}


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """A stand-in for /etc/voice-agent/ai-agent.yaml, a working directory with config/ai-agent.yaml, a file
    named by $AI_AGENT_CONFIG and one named on the command line, each with its own company name."""
    files = {
        "system": tmp_path / "etc" / "voice-agent" / "ai-agent.yaml",
        "workdir": tmp_path / "work" / "config" / "ai-agent.yaml",
        "env": tmp_path / "from-env.yaml",
        "explicit": tmp_path / "explicit.yaml",
    }
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MINIMAL.format(name=name))
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return files


def company(path=None, system_path: Path = SYSTEM_PATH) -> str:
    return load_config(path, env=ENV, system_path=system_path).config.company_name


def test_the_order_is_option_then_env_then_system_file_then_working_directory(places, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(places["env"]))
    assert company(places["explicit"], places["system"]) == "explicit"
    assert company(None, places["system"]) == "env"
    monkeypatch.delenv(CONFIG_ENV)
    assert company(None, places["system"]) == "system"
    places["system"].unlink()
    assert company(None, places["system"]) == "workdir"
    assert resolve_path(None, places["system"]) == Path("config/ai-agent.yaml")


def test_no_config_anywhere_names_every_path_tried(places, monkeypatch):
    places["system"].unlink()
    places["workdir"].unlink()
    with pytest.raises(ConfigError) as info:
        load_config(None, env=ENV, system_path=places["system"])
    message = str(info.value)
    assert str(places["system"]) in message
    assert "config/ai-agent.yaml" in message and str(places["workdir"].parent.parent) in message
    assert "--config" in message and CONFIG_ENV in message

    monkeypatch.setenv(CONFIG_ENV, str(places["workdir"]))  # a wrong $AI_AGENT_CONFIG is not silently skipped
    with pytest.raises(ConfigError, match=r"file not found \(\$AI_AGENT_CONFIG"):
        load_config(None, env=ENV, system_path=places["system"])


def test_the_dotenv_beside_a_system_config_is_read_not_the_one_above_it_nor_the_working_directorys(places, monkeypatch):
    places["system"].write_text("company_name: ${COMPANY}\n")
    (places["system"].parent / ".env").write_text(f"COMPANY=beside\nOPENAI_API_KEY={TEST_API_KEY}\n")
    (places["system"].parent.parent / ".env").write_text("COMPANY=above\n")
    (places["workdir"].parent.parent / ".env").write_text("COMPANY=working-directory\n")
    monkeypatch.delenv("COMPANY", raising=False)
    assert load_config(places["system"]).config.company_name == "beside"

    (places["system"].parent / ".env").write_text("JUST_A_WORD\n")
    with pytest.raises(ConfigError, match=r"cannot use the \.env file: .*\.env line 1: expected KEY=VALUE"):
        load_config(places["system"])


def voice_agent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # no AI_AGENT_CONFIG
    return subprocess.run(
        [sys.executable, "-m", "voice_agent", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def test_cli_version_and_the_missing_config_message(tmp_path):
    done = voice_agent("--version", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"voice-agent {version('asterisk-ai-voice-agent')}"

    if SYSTEM_PATH.exists():
        pytest.skip(f"{SYSTEM_PATH} exists on this machine: it would be read")
    done = voice_agent("check-config", cwd=tmp_path)
    assert done.returncode == 1
    assert f"tried {SYSTEM_PATH}, config/ai-agent.yaml (in {tmp_path})" in done.stderr
