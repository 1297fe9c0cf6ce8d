"""deploy/systemd: each unit starts a real `voice-agent` role with the installed config, restarts a deposed
controller, gives each role longer to stop than the role itself takes, and is hardened; `systemd-analyze verify`
accepts them when it is installed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from controller.service import EXIT_DEPOSED
from media_worker.calls import STOP_ALL_TIMEOUT_S
from media_worker.service import HANDOVER_TIMEOUT_S
from shared.config import load_config
from shared.config.envsubst import read_dotenv
from shared.config.load import SYSTEM_PATH
from shared.config.schema import ControllerSettings, ToolWorkerSettings
from tests.conftest import CONFIG, ROOT, TEST_API_KEY
from tool_worker.worker import SCHEDULER_STOP_S
from voice_agent import cli

UNITS = ROOT / "deploy" / "systemd"
VENV_BIN = "/opt/voice-agent/.venv/bin/voice-agent"
ENV_FILE = "/etc/voice-agent/.env"
# A role unit and the command it must run.
ROLES = {
    "voice-agent-controller.service": cli.cmd_controller,
    "voice-agent-media-worker@.service": cli.cmd_media_worker,
    "voice-agent-tool-worker@.service": cli.cmd_tool_worker,
}
# What an instance's name and its env file give: the second media worker of deploy/systemd/media-worker-2.env.
INSTANCE = {"%i": "2"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "User": "voice-agent",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with all its values in order (EnvironmentFile= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not a key=value line in a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def seconds(text: str) -> float:
    return float(text.removesuffix("s")) if not text.endswith("min") else float(text.removesuffix("min")) * 60


def exec_args(unit: dict) -> list[str]:
    command = one(unit, "Service", "ExecStart")
    instance_env = read_dotenv(UNITS / "media-worker-2.env")  # systemd reads it as KEY=VALUE lines too
    for name, value in {**INSTANCE, **{f"${{{k}}}": v for k, v in instance_env.items()}}.items():
        command = command.replace(name, value)
    assert "$" not in command and "%" not in command, f"unresolved specifier in {command!r}"
    return shlex.split(command)


@pytest.mark.parametrize("name", list(ROLES))
def test_each_unit_runs_its_role_with_the_installed_config(name):
    unit = parse_unit(UNITS / name)
    binary, *argv = exec_args(unit)
    assert binary == VENV_BIN
    args = cli.build_parser(with_dev_commands=False).parse_args(argv)  # exits (fails) on an unknown option
    assert args.func is ROLES[name]
    if name.startswith("voice-agent-media-worker"):
        assert unit["Service"]["EnvironmentFile"][1] == "/etc/voice-agent/media-worker-%i.env"
        assert (args.audiosocket_port, args.rtp_ports, args.health_port) == (8091, (18200, 18319), 15011)
    if name.startswith("voice-agent-tool-worker"):
        assert args.health_port == 2  # the instance name is its health port
    assert Path(args.config) == SYSTEM_PATH  # the path the CLI also reads by default: `voice-agent status` agrees
    assert unit["Service"]["EnvironmentFile"][0] == ENV_FILE
    assert one(unit, "Service", "WorkingDirectory") == str(SYSTEM_PATH.parent)
    assert one(unit, "Install", "WantedBy") == "voice-agent.target"
    assert one(unit, "Unit", "PartOf") == "voice-agent.target"
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, key


def test_the_shipped_config_copied_to_etc_loads():
    """README's install copies config/ai-agent.yaml to /etc/voice-agent: the units' --config."""
    loaded = load_config(CONFIG, env={"OPENAI_API_KEY": TEST_API_KEY})
    assert loaded.config.controller.health_port == 15000


def test_a_deposed_controller_is_restarted_and_a_clean_stop_is_not():
    unit = parse_unit(UNITS / "voice-agent-controller.service")
    assert one(unit, "Service", "Restart") == "on-failure"  # restarts on any non-zero exit; on-abnormal would not
    kept = " ".join(unit["Service"].get("SuccessExitStatus", []) + unit["Service"].get("RestartPreventExitStatus", []))
    assert str(EXIT_DEPOSED) not in kept.split()
    assert seconds(one(unit, "Service", "RestartSec")) <= 5  # back as the standby within seconds
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 5


def le_bound_s(settings: type, field: str) -> float:
    """The schema's upper bound of a millisecond setting, in seconds."""
    (info,) = [f for f in msgspec.inspect.type_info(settings).fields if f.name == field]
    return info.type.le / 1000


def test_each_role_gets_longer_to_stop_than_it_takes():
    config = load_config(CONFIG, env={"OPENAI_API_KEY": TEST_API_KEY}).config
    bounds = {
        # the shipped drain, the hand-over, then every session's bounded stop
        "voice-agent-media-worker@.service": config.media_worker.drain_timeout_ms / 1000
        + HANDOVER_TIMEOUT_S
        + STOP_ALL_TIMEOUT_S,
        # the longest grace a job may be given, then the scheduler's stop
        "voice-agent-tool-worker@.service": le_bound_s(ToolWorkerSettings, "stop_grace_ms") + SCHEDULER_STOP_S,
        # the longest ARI request in flight
        "voice-agent-controller.service": le_bound_s(ControllerSettings, "ari_timeout_ms"),
    }
    for name, bound in bounds.items():
        unit = parse_unit(UNITS / name)
        assert seconds(one(unit, "Service", "TimeoutStopSec")) > bound, name
    tool = parse_unit(UNITS / "voice-agent-tool-worker@.service")
    assert one(tool, "Service", "KillMode") == "mixed"  # SIGTERM to the worker, not to its work horse


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    venv_bin = ROOT / ".venv" / "bin" / "voice-agent"
    if not venv_bin.exists():
        pytest.skip(f"{venv_bin} not installed (verify checks that ExecStart's program exists)")
    names = []
    for path in sorted(UNITS.glob("voice-agent*")):
        text = path.read_text().replace(VENV_BIN, str(venv_bin))
        name = path.name.replace("@.", "@2.")  # verify wants instances, not templates
        (tmp_path / name).write_text(text)
        names.append(str(tmp_path / name))
    done = subprocess.run([analyze, "verify", "--man=no", *names], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_the_shipped_instance_files_give_each_worker_its_own_ports():
    instances = [read_dotenv(path) for path in sorted(UNITS.glob("media-worker-*.env"))]
    assert len(instances) >= 2
    for key in ("AUDIOSOCKET_PORT", "MW_HEALTH_PORT"):
        assert len({env[key] for env in instances}) == len(instances), key
    ranges = sorted(tuple(int(p) for p in env["RTP_PORTS"].split("-")) for env in instances)
    assert all(low <= high for low, high in ranges)
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1)), ranges
