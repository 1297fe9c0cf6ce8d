"""docker-compose.yml, Dockerfile and their env files, checked without a Docker engine: what compose would
interpolate, what each container's command and config resolve to, and what the other deploy files expect.

Every check returns the problems it finds; each one is also run on a mutated copy to show it can fail.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from voice_agent.cli import _health, build_parser
from shared.config import ConfigError, load_config
from shared.config.load import CONFIG_ENV, DEFAULT_PATH
from shared.config.envsubst import read_dotenv
from shared.health import make_server
from tests.conftest import ROOT, TEST_API_KEY

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEMO_ENV = ROOT / "deploy" / "demo.env"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# CLI role -> its config section; the services running these are the cluster's agents.
ROLES = {"controller": "controller", "media-worker": "media_worker", "tool-worker": "tool_worker"}
SCALED = ("media_worker", "tool_worker")
# Paths the image has of its own (Dockerfile: WORKDIR /app, COPY config config).
IMAGE_FILES = {"/app/config": ROOT / "config"}
WORKDIR = "/app"
HEALTH_ROUTES = set(make_server("x", "y", {}).routes)


# --- what compose does with the file ------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt} and $$, on every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise ValueError(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if present else ""
        return env.get(name, "")

    parts = value.split("$$")
    return "$".join(_VAR.sub(one, part) for part in parts)


def variables(value) -> set[str]:
    """Every VAR that a ${VAR...} in the data names."""
    if isinstance(value, dict):
        return set().union(*(variables(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(variables(v) for v in value)) if value else set()
    return {m.group(1) for m in _VAR.finditer(value.replace("$$", ""))} if isinstance(value, str) else set()


def bare_dollars(value) -> list[str]:
    """Strings with a `$NAME` (unbraced: interpolated by compose, and easy to miss)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in bare_dollars(v)]
    if isinstance(value, list):
        return [s for v in value for s in bare_dollars(v)]
    if isinstance(value, str) and re.search(r"\$[A-Za-z_]", value.replace("$$", "")):
        return [value]
    return []


def env_map(environment) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


def ours(service: dict) -> bool:
    """Built from our Dockerfile (the roles and the simulators)."""
    return "build" in service


def parse_command(service: dict):
    """The container's command through the real CLI parser (the image's ENTRYPOINT is `voice-agent`)."""
    command = service.get("command")
    if not isinstance(command, list) or not command:
        raise ValueError(f"command must be a non-empty list, got {command!r}")
    try:
        return build_parser().parse_args([str(part) for part in command])
    except SystemExit:
        raise ValueError(f"`voice-agent {' '.join(map(str, command))}` does not parse") from None


def binds(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount; named volumes are left out."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            out.append((source, target))
    return out


def host_path(service: dict, container_path: str) -> Path:
    """Where a file a container reads comes from in this repo: a bind mount over it, else the image's copy."""
    mounts = [(ROOT / src, dst) for src, dst in binds(service)] + [(p, d) for d, p in IMAGE_FILES.items()]
    for source, target in sorted(mounts, key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise ValueError(f"{container_path} is neither mounted nor in the image")


class Deployment:
    """docker-compose.yml as compose resolves it for one set of --env-file files."""

    def __init__(self, raw: dict, env_files: list[Path]):
        self.raw = raw
        self.env: dict[str, str] = {}
        for path in env_files:
            self.env.update(read_dotenv(path))
        self.data = interpolate(raw, self.env)
        self.services: dict[str, dict] = self.data["services"]

    def container_env(self, service: dict) -> dict[str, str]:
        """env_file (.env is .env.example's copy) under the service's own `environment:`, as in compose."""
        env: dict[str, str] = {}
        for entry in service.get("env_file", []):
            path = entry["path"] if isinstance(entry, dict) else entry
            if path == ".env":
                path = ".env.example"
            env.update(read_dotenv(ROOT / path))
            if path == ".env.example":
                # The operator fills in the key, as .env.example asks: its placeholder is a config error.
                env["OPENAI_API_KEY"] = TEST_API_KEY
        env.update(env_map(service.get("environment")))
        return env

    def role(self, name: str):
        """(parsed args, loaded config, config section) of an agent service."""
        service = self.services[name]
        args = parse_command(service)
        env = self.container_env(service)
        config_path = args.config or env.get(CONFIG_ENV) or str(DEFAULT_PATH)
        container_path = config_path if config_path.startswith("/") else f"{WORKDIR}/{config_path}"
        loaded = load_config(host_path(service, container_path), env=env)
        return args, loaded.config, getattr(loaded.config, ROLES[args.command])

    def health(self, name: str) -> tuple[str, int]:
        args, _, section = self.role(name)
        return _health(args, section)  # as the CLI resolves it

    def agents(self) -> list[str]:
        return [name for name, svc in self.services.items() if ours(svc) and parse_command(svc).command in ROLES]


def load_raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def production(raw: dict | None = None) -> Deployment:
    return Deployment(load_raw() if raw is None else raw, [ENV_EXAMPLE])


def demo(raw: dict | None = None) -> Deployment:
    return Deployment(load_raw() if raw is None else raw, [ENV_EXAMPLE, DEMO_ENV])


# --- the checks ---------------------------------------------------------------------------------------------
def check_structure(dep: Deployment) -> list[str]:
    problems = []
    declared = set(dep.data.get("volumes") or {})
    for name, svc in dep.services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"{name}: neither image nor build")
        for volume in svc.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~")) and source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared under volumes:")
    agents = dep.agents()
    commands = [parse_command(dep.services[a]).command for a in agents]
    if sorted(set(commands)) != sorted(ROLES) or len(commands) != len(ROLES) + 1:
        problems.append(f"one service per role and a standby controller expected, got {agents}")
    if commands.count("controller") != 2:
        problems.append(f"two controllers expected (one leads, one stands by), got {commands.count('controller')}")
    return problems


def check_commands(dep: Deployment) -> list[str]:
    problems = []
    for name, svc in dep.services.items():
        if ours(svc):
            try:
                parse_command(svc)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    return problems


def check_healthchecks(dep: Deployment) -> list[str]:
    problems = []
    for name in dep.agents():
        test = (dep.services[name].get("healthcheck") or {}).get("test")
        if not (isinstance(test, list) and test[:3] == ["CMD", "voice-agent", "healthcheck"] and len(test) == 4):
            problems.append(f"{name}: healthcheck must be [CMD, voice-agent, healthcheck, URL], got {test!r}")
            continue
        url = urlsplit(test[3])
        if url.path not in HEALTH_ROUTES or url.path != "/readyz":
            problems.append(f"{name}: healthcheck path {url.path!r}: expected /readyz of {sorted(HEALTH_ROUTES)}")
        if url.hostname not in ("127.0.0.1", "localhost"):
            problems.append(f"{name}: the healthcheck runs inside the container: 127.0.0.1, not {url.hostname}")
        host, port = dep.health(name)
        if url.port != port:
            problems.append(f"{name}: healthcheck port {url.port}, but the config gives the role port {port}")
        if host != "0.0.0.0":
            problems.append(f"{name}: health endpoints on {host}: Prometheus cannot scrape them (HEALTH_HOST)")
        depends = dep.services[name].get("depends_on") or {}
        if not isinstance(depends, dict) or (depends.get("redis") or {}).get("condition") != "service_healthy":
            problems.append(f"{name}: must depend on redis with condition service_healthy")
    if "healthcheck" not in dep.services.get("redis", {}):
        problems.append("redis: no healthcheck (the agents wait for it to be healthy)")
    return problems


def check_scaled(dep: Deployment) -> list[str]:
    problems = []
    for name in SCALED:
        svc = dep.services[name]
        for key in ("ports", "container_name"):
            if key in svc:
                problems.append(f"{name}: `{key}` would clash between replicas of --scale {name}=N")
        if svc.get("network_mode") == "host":
            problems.append(f"{name}: host networking: replicas would share ports")
    advertise = dep.role("media_worker")[1].media_worker.advertise_host
    if advertise != "auto":
        problems.append(f"media_worker: advertises {advertise!r}: every replica must register its own address (auto)")
    return problems


def check_mounts(dep: Deployment) -> list[str]:
    return [
        f"{name}: mounts {source}, which is not in the repo"
        for name, svc in dep.services.items()
        for source, _ in binds(svc)
        if not (ROOT / source).exists()
    ]


def check_grace(dep: Deployment) -> list[str]:
    """stop_grace_period leaves the media worker its drain time plus a little to deregister."""
    text = str(dep.services["media_worker"].get("stop_grace_period", "10s"))
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    grace_s = int(match.group(1) or 0) * 60 + int(match.group(2) or 0) if match and text else 0
    drain_s = dep.role("media_worker")[1].media_worker.drain_timeout_ms / 1000
    if grace_s < drain_s + 5:
        return [f"media_worker: stop_grace_period {text} is shorter than drain_timeout_ms ({drain_s:g} s) + 5 s"]
    return []


def check_prometheus(dep: Deployment, prometheus: dict) -> list[str]:
    """Every role is scraped on its health port, through a compose service name."""
    problems, scraped = [], {}
    for job in prometheus.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for target in sd.get("names", []):
                if target not in dep.services:
                    problems.append(f"job {job['job_name']}: {target!r} is not a compose service")
                scraped[target] = sd.get("port")
    for name in dep.agents():
        port = dep.health(name)[1]
        if name not in scraped:
            problems.append(f"{name}: no Prometheus job scrapes it")
        elif scraped[name] != port:
            problems.append(f"{name}: Prometheus scrapes port {scraped[name]}, its health port is {port}")
    return problems


def check_env_files(raw: dict, example: dict[str, str], demo_env: dict[str, str]) -> list[str]:
    used = variables(raw)
    problems = [
        f"${{{var}}} is used by docker-compose.yml but missing from .env.example" for var in sorted(used - set(example))
    ]
    problems += [
        f"deploy/demo.env sets {var}, which docker-compose.yml never uses" for var in sorted(set(demo_env) - used)
    ]
    problems += [f"unbraced $ in {text!r} (write ${{VAR}}, or $$ for a literal $)" for text in bare_dollars(raw)]
    return problems


def check_demo(dep: Deployment) -> list[str]:
    """In the demo every agent talks to the simulators of the demo profile, with matching ports and credentials."""
    problems = []

    def sim(service_name: str, expected: str):
        svc = dep.services.get(service_name)
        if svc is None or "demo" not in svc.get("profiles", []):
            problems.append(f"{service_name}: not a service of the demo profile")
            return None
        args = parse_command(svc)
        if f"{args.command} {args.simulator}" != expected:
            problems.append(f"{service_name}: runs `{args.command} {args.simulator}`, expected `{expected}`")
        if args.host != "0.0.0.0":
            problems.append(f"{service_name}: listens on {args.host}: the agents cannot reach it")
        return args

    for name in dep.agents():
        _, config, _ = dep.role(name)
        checks = [
            (config.providers.openai_realtime.base_url, "sim realtime"),
            (config.asterisk.ari_url, "sim asterisk"),
            (f"smtp://{config.email.smtp_host}:{config.email.smtp_port}", "sim mail"),
        ]
        for url, expected in checks:
            target = urlsplit(url)
            args = sim(target.hostname or "", expected)
            if args is not None and args.port != target.port:
                problems.append(f"{name}: {url} but {target.hostname} listens on port {args.port}")
            if (
                args is not None
                and expected == "sim asterisk"
                and ((config.asterisk.username, config.asterisk.password) != (args.user, args.password))
            ):
                problems.append(f"{name}: its ARI credentials are not the simulator's")
    return problems


def check_dockerfile(text: str, ignore: list[str], role_ports: set[int]) -> list[str]:
    problems = []
    stages = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    if len(stages) < 2 or stages[-1] != "python:3.11-slim":
        problems.append(f"a multi-stage build ending on python:3.11-slim expected, got {stages}")
    if 'ENTRYPOINT ["voice-agent"]' not in text:
        problems.append('ENTRYPOINT ["voice-agent"] missing: compose commands are its arguments')
    users = re.findall(r"^USER (\S+)", text, re.M)
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
        problems.append(f"the final USER must be a fixed non-root uid, got {users}")
    if not re.search(r"^WORKDIR /app$", text, re.M):
        problems.append("WORKDIR /app missing (the config path is relative to it)")
    exposed = {
        int(p.split("/")[0])
        for line in re.findall(r"^EXPOSE (.+)$", text, re.M)
        for p in line.split()
        if p.split("/")[0].isdigit()
    }
    if not role_ports <= exposed:
        problems.append(f"EXPOSE lacks the health ports {sorted(role_ports - exposed)}")
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            if not (ROOT / source).exists():
                problems.append(f"COPY {source}: not in the repo")
            if any(fnmatch.fnmatch(source, pattern.rstrip("/")) for pattern in ignore):
                problems.append(f"COPY {source}: excluded by .dockerignore")
    if "--no-cache-dir" not in text:
        problems.append("pip without --no-cache-dir")
    return problems


def dockerignore() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]


def role_ports(dep: Deployment) -> set[int]:
    return {dep.health(name)[1] for name in dep.agents()}


# --- the real files pass ------------------------------------------------------------------------------------
def test_compose_is_valid_yaml_with_the_expected_services():
    raw = load_raw()
    assert isinstance(raw, dict) and isinstance(raw.get("services"), dict)
    expected = {
        "redis",
        "controller",
        "media_worker",
        "tool_worker",
        "prometheus",
        "grafana",
        "realtime_sim",
        "asterisk_sim",
        "mail",
    }
    assert expected <= set(raw["services"])
    assert check_structure(production()) == []


@pytest.mark.parametrize("make", [production, demo], ids=["production", "demo"])
def test_commands_healthchecks_scaling_and_mounts(make):
    dep = make()
    assert check_commands(dep) == []
    assert check_healthchecks(dep) == []
    assert check_scaled(dep) == []
    assert check_mounts(dep) == []
    assert check_grace(dep) == []


def test_every_variable_compose_uses_is_in_env_example():
    assert check_env_files(load_raw(), read_dotenv(ENV_EXAMPLE), read_dotenv(DEMO_ENV)) == []


def test_the_demo_points_every_agent_at_the_simulators():
    assert check_demo(demo()) == []


def test_without_the_demo_env_the_agents_use_the_config_defaults():
    """.env.example leaves the OpenAI URL empty: the real API, not the emulator."""
    dep = production()
    for name in dep.agents():
        assert dep.role(name)[1].providers.openai_realtime.base_url == "wss://api.openai.com/v1/realtime"


def test_prometheus_scrapes_every_role_on_its_health_port():
    if not PROMETHEUS.exists():
        pytest.skip("deploy/prometheus/prometheus.yml is not there yet")
    assert check_prometheus(production(), yaml.safe_load(PROMETHEUS.read_text())) == []


def test_dockerfile():
    assert check_dockerfile(DOCKERFILE.read_text(), dockerignore(), role_ports(production())) == []
    build = load_raw()["x-image"]["build"]
    assert build in (".", {"context": "."}), "the image is built from the repo root's Dockerfile"


# --- and each check bites ---------------------------------------------------------------------------------
def mutated(change) -> dict:
    raw = load_raw()
    # One copy per service: YAML anchors share a dict (the agents' environment), and a change to one service
    # must not reach the others.
    raw["services"] = {name: copy.deepcopy(svc) for name, svc in raw["services"].items()}
    change(raw["services"])
    return raw


def test_a_command_the_cli_does_not_know_is_reported():
    raw = mutated(lambda s: s["media_worker"].update(command=["media-wroker"]))
    assert any("media_worker" in p for p in check_commands(production(raw)))
    raw = mutated(lambda s: s["mail"].update(command=["sim", "mail"]))  # --dir is required
    assert any("mail" in p for p in check_commands(production(raw)))


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda s: s["controller"]["healthcheck"].update(
                test=["CMD", "voice-agent", "healthcheck", "http://127.0.0.1:15009/readyz"]
            ),
            "port 15009",
        ),
        (
            lambda s: s["tool_worker"]["healthcheck"].update(
                test=["CMD", "voice-agent", "healthcheck", "http://127.0.0.1:15002/ready"]
            ),
            "'/ready'",
        ),
        (
            lambda s: s["media_worker"]["healthcheck"].update(test=["CMD", "curl", "-f", "http://127.0.0.1:15001/"]),
            "must be [CMD",
        ),
        (lambda s: s["media_worker"].update(command=["media-worker", "--health-port", "15011"]), "port 15011"),
        (lambda s: s["controller"]["environment"].pop("HEALTH_HOST"), "controller: health endpoints on 127.0.0.1"),
        (lambda s: s["tool_worker"].pop("depends_on"), "service_healthy"),
        (lambda s: s["redis"].pop("healthcheck"), "redis: no healthcheck"),
    ],
    ids=["port", "path", "not-ours", "port-flag", "health-host", "depends", "redis"],
)
def test_a_wrong_healthcheck_is_reported(change, expected):
    problems = check_healthchecks(production(mutated(change)))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s["media_worker"].update(ports=["8090:8090"]), "`ports`"),
        (lambda s: s["tool_worker"].update(container_name="tools"), "`container_name`"),
        (lambda s: s["media_worker"].update(network_mode="host"), "host networking"),
        (
            lambda s: s["media_worker"].update(
                environment={**s["media_worker"]["environment"], "MEDIA_ADVERTISE_HOST": "media.example"}
            ),
            "'media.example'",
        ),
    ],
    ids=["ports", "container-name", "host-network", "advertise"],
)
def test_a_fixed_address_on_a_scaled_service_is_reported(change, expected):
    problems = check_scaled(production(mutated(change)))
    assert any(expected in p for p in problems), problems


def test_a_missing_mount_source_and_an_undeclared_volume_are_reported():
    raw = mutated(lambda s: s["prometheus"].update(volumes=["./deploy/nowhere:/etc/prometheus:ro", "nodata:/x"]))
    assert any("./deploy/nowhere" in p for p in check_mounts(production(raw)))
    assert any("'nodata'" in p for p in check_structure(production(raw)))


def test_a_short_stop_grace_period_is_reported(tmp_path):
    raw = mutated(lambda s: s["media_worker"].update(stop_grace_period="3s"))
    assert check_grace(production(raw)) == [
        "media_worker: stop_grace_period 3s is shorter than drain_timeout_ms (0 s) + 5 s"
    ]
    # a drain time longer than the grace period, from a config mounted over the image's
    config = (ROOT / "config" / "ai-agent.yaml").read_text()
    drain = config.replace("media_worker:\n", "media_worker:\n  drain_timeout_ms: 58000\n", 1)
    (tmp_path / "ai-agent.yaml").write_text(drain)
    raw = mutated(lambda s: s["media_worker"].update(volumes=[f"{tmp_path}:/app/config:ro"]))
    assert check_grace(production(raw)) == [
        "media_worker: stop_grace_period 60s is shorter than drain_timeout_ms (58 s) + 5 s"
    ]


def test_a_single_controller_is_reported():
    raw = mutated(lambda s: s.pop("controller_standby"))
    problems = check_structure(production(raw))
    assert "two controllers expected (one leads, one stands by), got 1" in problems, problems


def test_a_prometheus_job_on_the_wrong_port_or_name_is_reported():
    prometheus = {
        "scrape_configs": [
            {"job_name": "controller", "dns_sd_configs": [{"names": ["controller"], "type": "A", "port": 15000}]},
            {"job_name": "media_worker", "dns_sd_configs": [{"names": ["media_worker"], "type": "A", "port": 15002}]},
            {"job_name": "tool_worker", "dns_sd_configs": [{"names": ["tool-worker"], "type": "A", "port": 15002}]},
        ]
    }
    problems = check_prometheus(production(), prometheus)
    assert any("port 15002, its health port is 15001" in p for p in problems), problems
    assert any("'tool-worker' is not a compose service" in p for p in problems), problems
    assert any("tool_worker: no Prometheus job" in p for p in problems), problems


def test_a_variable_missing_from_env_example_is_reported():
    raw = mutated(lambda s: s["grafana"]["environment"].update(GF_SERVER_ROOT_URL="${GRAFANA_ROOT_URL}"))
    example, demo_env = read_dotenv(ENV_EXAMPLE), read_dotenv(DEMO_ENV)
    assert any("GRAFANA_ROOT_URL" in p for p in check_env_files(raw, example, demo_env))
    raw = mutated(lambda s: s["grafana"]["environment"].update(GF_SERVER_ROOT_URL="$GRAFANA_ROOT_URL"))
    assert any("unbraced" in p for p in check_env_files(raw, example, demo_env))
    assert any("NOT_USED" in p for p in check_env_files(load_raw(), example, {**demo_env, "NOT_USED": "1"}))


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda s: s["realtime_sim"].update(command=["sim", "realtime", "--host", "0.0.0.0", "--port", "9999"]),
            "listens on port 9999",
        ),
        (
            lambda s: s["asterisk_sim"].update(command=["sim", "asterisk", "--host", "0.0.0.0", "--port", "8088"]),
            "ARI credentials",
        ),
        (
            lambda s: s["mail"].update(command=["sim", "mail", "--port", "2525", "--dir", "/tmp/mail"]),
            "listens on 127.0.0.1",
        ),
        (lambda s: s["mail"].pop("profiles"), "mail: not a service of the demo profile"),
    ],
    ids=["port", "credentials", "loopback", "profile"],
)
def test_a_demo_agent_pointed_at_the_wrong_place_is_reported(change, expected):
    problems = check_demo(demo(mutated(change)))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t.replace('ENTRYPOINT ["voice-agent"]', 'ENTRYPOINT ["python"]'), "ENTRYPOINT"),
        (lambda t: t.replace("USER 10001:10001", "USER root"), "non-root"),
        (lambda t: t.replace("EXPOSE 15000 ", "EXPOSE "), "15000"),
        (lambda t: t.replace("COPY sim sim", "COPY simulators sim"), "COPY simulators"),
        (lambda t: t.replace("COPY config config", "COPY tests tests"), "excluded by .dockerignore"),
    ],
    ids=["entrypoint", "root", "expose", "copy-missing", "copy-ignored"],
)
def test_a_wrong_dockerfile_is_reported(change, expected):
    text = DOCKERFILE.read_text()
    assert change(text) != text, "the mutation must change the Dockerfile"
    problems = check_dockerfile(change(text), dockerignore(), role_ports(production()))
    assert any(expected in p for p in problems), problems


def test_interpolation_follows_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET}-${UNSET}-${EMPTY:-d}-${EMPTY-d}-${UNSET-d}-$${SET}", env) == "x--d--d-${SET}"
    assert interpolate("${SET:+alt}${EMPTY:+alt}", env) == "alt"
    with pytest.raises(ValueError, match="needed"):
        interpolate("${EMPTY:?needed}", env)
    assert variables({"a": ["${ONE:-x}", "$${NOT}", "${TWO}"]}) == {"ONE", "TWO"}


def test_the_config_of_each_agent_loads():
    """A ConfigError here would also be the container's: exit 1 at start."""
    for make in (production, demo):
        dep = make()
        for name in dep.agents():
            try:
                dep.role(name)
            except ConfigError as exc:
                pytest.fail(f"{name}: {exc}")
