"""Load `config/ai-agent.yaml`: parse, expand `${VAR}`, check every key, build the typed `Config`.

All problems are reported together in one `ConfigError`, each with its line and key path. Beta-era provider
keys are mapped and reviewed by `ga_session.review`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.config import ga_session
from shared.config.envsubst import EnvError, environment, expand
from shared.config.schema import ALL_TOOLS, BUILTIN_PROFILES, Config
from shared.config.validate import SKIP, Checker, Problem, suggest
from shared.masking import mask_tree, mask_url, secret_values

CONFIG_ENV = "AI_AGENT_CONFIG"
# Without --config or $AI_AGENT_CONFIG: an installed system's file when there is one (a service, or an operator
# running `voice-agent status` from any directory, even from a checkout that carries the example config), else
# the project's own file relative to the working directory (the demo, the tests, the container's /app).
SYSTEM_PATH = Path("/etc/voice-agent/ai-agent.yaml")
DEFAULT_PATH = Path("config/ai-agent.yaml")
# Bounds on the document as a tree (aliases expanded): the shipped config has about 200 values, 6 levels deep.
MAX_VALUES = 100_000
MAX_DEPTH = 64


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} error{'s' if count != 1 else ''} in the configuration"
        return head + "".join(f"\n  - {p}" for p in self.problems)


@dataclass
class LoadedConfig:
    config: Config
    source: str
    warnings: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def masked(self) -> dict[str, Any]:
        return mask_tree(msgspec.to_builtins(self.config))


def resolve_path(path: str | os.PathLike[str] | None, system_path: Path = SYSTEM_PATH) -> Path:
    """--config, else $AI_AGENT_CONFIG, else `system_path` when it exists, else config/ai-agent.yaml."""
    if path:
        return Path(path)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if system_path.is_file():
        return system_path
    return DEFAULT_PATH


def _not_found(path: str | os.PathLike[str] | None, system_path: Path) -> Problem:
    if path or os.environ.get(CONFIG_ENV):
        given = "the path given" if path else f"${CONFIG_ENV}"
        return Problem("", f"file not found ({given}; relative paths are from {Path.cwd()})")
    tried = f"{system_path}, {DEFAULT_PATH} (in {Path.cwd()})"
    return Problem("", f"no config file: tried {tried}; pass --config PATH or set {CONFIG_ENV}")


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    system_path: Path = SYSTEM_PATH,
) -> LoadedConfig:
    """Read and check the config file. `env` replaces the environment and `.env` (tests)."""
    source = resolve_path(path, system_path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(source), [_not_found(path, system_path)]) from None
    except OSError as exc:
        raise ConfigError(str(source), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    if env is None:
        # The config's own .env first: the project's (above config/) or the one beside the file (/etc/voice-agent/.env,
        # also the services' EnvironmentFile; never /etc/.env); else the working directory's.
        folder = source.resolve().parent
        try:
            env = environment([(folder.parent if folder.name == "config" else folder) / ".env", Path(".env")])
        except (EnvError, OSError) as exc:  # a malformed line, or a file this user may not read
            raise ConfigError(str(source), [Problem("", f"cannot use the .env file: {exc}")]) from None
    return parse_config(text, str(source), env)


def parse_config(text: str, source: str, env: Mapping[str, str]) -> LoadedConfig:
    try:
        too_deep = _too_deep(text)
        if too_deep:
            raise ConfigError(source, [too_deep])
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise ConfigError(source, [Problem("", "not a usable configuration: nested too deeply")]) from None
    too_big = _too_big(root_node)
    if too_big:
        raise ConfigError(source, [Problem("", f"not a usable configuration: {too_big}")])
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    except Exception as exc:  # PyYAML's constructors let Python's own errors through on a bad scalar
        # (an integer of 5,000 digits: ValueError; `!!timestamp x`: AttributeError): the value cannot be built.
        raise ConfigError(source, [Problem("", f"not valid YAML: a value cannot be built: {exc}")]) from None
    if raw is None:
        raw = {}
    checker = Checker({})
    if root_node is not None:
        _map_lines(root_node, "", checker)
    if not isinstance(raw, dict):
        raise ConfigError(
            source, [Problem("", f"the top level must be a mapping of sections, got {type(raw).__name__}")]
        )

    expanded = _expand(raw, "", env, checker)
    checker.check_struct(expanded, Config, "")
    if checker.problems:
        raise ConfigError(source, checker.problems)
    config = msgspec.convert(expanded, Config)
    provider = config.providers.openai_realtime
    if not provider.api_key and env.get("OPENAI_API_KEY"):
        # The guide puts the key in .env; a config without `api_key` uses it the same way.
        provider.api_key = env["OPENAI_API_KEY"]

    _check_references(config, checker)
    if checker.problems:
        raise ConfigError(source, checker.problems)

    provider_raw = (raw.get("providers") or {}).get("openai_realtime") or {}
    td_raw = provider_raw.get("turn_detection") or {}
    warnings, notes = ga_session.review(config.providers.openai_realtime, set(provider_raw), set(td_raw))
    warnings += _advice(config)
    warnings = [replace(p, line=checker.lines.get(p.path)) for p in warnings]
    notes = [replace(p, line=checker.lines.get(p.path)) for p in notes]
    return LoadedConfig(config, source, warnings, notes, secret_values(msgspec.to_builtins(config)))


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    return Problem("", f"not valid YAML: {reason}", mark.line + 1 if mark else None)


_OPENS = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSES = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def _too_deep(text: str) -> Problem | None:
    """Why the document nests too deeply to be a config, judged from its tokens before anything is built.
    PyYAML's parser and composer cost far more per level than its scanner (a 1,000-deep document takes most of
    a second of CPU to compose, and recurses once per level); the scanner keeps no stack of its own."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPENS):
            depth += 1
            if depth > MAX_DEPTH:
                return Problem(
                    "", f"not a usable configuration: nested deeper than {MAX_DEPTH} levels", token.start_mark.line + 1
                )
        elif isinstance(token, _CLOSES):
            depth -= 1
    return None


def _too_big(root: yaml.Node | None) -> str:
    """Why the document cannot be a config, or "": the values it holds once its aliases are expanded, counted
    without expanding them. A billion-laughs document (aliases of aliases) is small as text and enormous as
    a tree, and a recursive alias (`a: &a [*a]`) is infinite; both would hang what walks the tree."""
    stack = [(root, 1)] if root is not None else []
    values = 0
    while stack:
        node, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            return f"more than {MAX_VALUES} values once its aliases are expanded"
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels (a recursive alias?)"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                stack += ((key_node, depth + 1), (value_node, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack += ((item, depth + 1) for item in node.value)
    return ""


def _map_lines(node: yaml.Node, path: str, checker: Checker) -> None:
    """Record the line of every key path, and report duplicate keys (PyYAML keeps the last one silently)."""
    checker.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                checker.problems.append(
                    Problem(child, "duplicate key (only the last one would count)", key_node.start_mark.line + 1)
                )
            seen.add(key)
            checker.lines[child] = key_node.start_mark.line + 1
            _map_lines(value_node, child, checker)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _map_lines(item, f"{path}[{i}]", checker)


def _expand(value: Any, path: str, env: Mapping[str, str], checker: Checker) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), env, checker) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env, checker) for i, v in enumerate(value)]
    if isinstance(value, str):
        try:
            return expand(value, env)
        except EnvError as exc:
            checker.add(path, str(exc))
            return SKIP
    return value


def _check_references(config: Config, checker: Checker) -> None:
    """Rules that span sections: names that must point at something defined elsewhere."""
    profiles = set(BUILTIN_PROFILES) | set(config.profiles)
    if config.profile(config.default_profile) is None:
        checker.add(
            "default_profile",
            f"unknown profile '{config.default_profile}'"
            f"{suggest(config.default_profile, profiles)}; known: {', '.join(sorted(profiles))}",
        )
    for name, ctx in config.contexts.items():
        if ctx.profile is not None and config.profile(ctx.profile) is None:
            checker.add(
                f"contexts.{name}.profile",
                f"unknown profile '{ctx.profile}'"
                f"{suggest(ctx.profile, profiles)}; known: {', '.join(sorted(profiles))}",
            )
    if config.default_context is not None and config.default_context not in config.contexts:
        checker.add(
            "default_context",
            f"no context named '{config.default_context}'{suggest(config.default_context, config.contexts)}",
        )
    provider = config.providers.openai_realtime
    if provider.enabled and not provider.api_key and "api.openai.com" in provider.base_url:
        checker.add(
            "providers.openai_realtime.api_key",
            "required when the provider is enabled (set OPENAI_API_KEY in the environment or .env)",
        )
    for key in ("base_url",):
        url = getattr(provider, key)
        if not url.startswith(("ws://", "wss://")):
            checker.add(f"providers.openai_realtime.{key}", f"expected a ws:// or wss:// URL, got {mask_url(url)!r}")
    if not config.asterisk.ari_url.startswith(("http://", "https://")):
        checker.add(
            "asterisk.ari_url", f"expected an http:// or https:// URL, got {mask_url(config.asterisk.ari_url)!r}"
        )
    if not config.redis.url.startswith(("redis://", "rediss://", "unix://")):
        checker.add("redis.url", f"expected a redis://, rediss:// or unix:// URL, got {mask_url(config.redis.url)!r}")
    for i, address in enumerate(config.tools.send_email_summary.recipients):
        if "@" not in address:
            checker.add(f"tools.send_email_summary.recipients[{i}]", f"not an email address: {address!r}")


def _advice(config: Config) -> list[Problem]:
    """Settings that load but work against the guide's advice."""
    out = []
    if config.vad.webrtc_aggressiveness == 0:
        out.append(
            Problem(
                "vad.webrtc_aggressiveness",
                "0 lets the agent's own echo interrupt it; the guide says "
                "it MUST be 1 (see Troubleshooting: Echo / Self-Interruption)",
            )
        )
    provider = config.providers.openai_realtime
    if provider.enabled and not provider.tools:
        out.append(
            Problem(
                "providers.openai_realtime.tools",
                f"no tools: the agent cannot transfer or hang up; available: {', '.join(ALL_TOOLS)}",
            )
        )
    if not provider.greeting and any(ctx.greeting is None for ctx in config.contexts.values()):
        out.append(
            Problem(
                "providers.openai_realtime.greeting",
                "empty, and a context has no greeting of its own: those calls start in silence until the caller speaks",
            )
        )
    return out
