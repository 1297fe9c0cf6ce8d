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

from shared.config import ga_session, rules
from shared.config.envsubst import EnvError, environment, expand
from shared.config.schema import Config
from shared.config.validate import SKIP, Checker, Problem, Severity
from shared.masking import mask_tree, secret_values

CONFIG_ENV = "AI_AGENT_CONFIG"
# A file holding the key (Docker and Kubernetes secrets, systemd credentials): it wins over OPENAI_API_KEY, because
# it can be rewritten and re-read on SIGHUP while the process environment cannot.
KEY_FILE_ENV = "OPENAI_API_KEY_FILE"
# Without --config or $AI_AGENT_CONFIG: an installed system's file when there is one (a service, or an operator
# running `voice-agent status` from any directory, even from a checkout that carries the example config), else
# the project's own file relative to the working directory (the demo, the tests, the container's /app).
SYSTEM_PATH = Path("/etc/voice-agent/ai-agent.yaml")
DEFAULT_PATH = Path("config/ai-agent.yaml")
# Bounds on the document as a tree (aliases expanded): the shipped config has about 200 values, 6 levels deep.
MAX_VALUES = 100_000
MAX_DEPTH = 64


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every error (file order), `warnings` what else was found."""

    def __init__(self, source: str, problems: list[Problem], warnings: list[Problem] | None = None):
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        self.warnings = sorted(warnings or [], key=lambda p: p.line or 0)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} error{'s' if count != 1 else ''} in the configuration"
        return head + "".join(f"\n  - {p}" for p in self.problems)

    def summary(self) -> str:
        """What a role says before it refuses to start: the first error, how many there are, where to see all."""
        first = f"{self.source}: {self.problems[0]}" if self.problems else f"{self.source}: not usable"
        more = len(self.problems) - 1
        if more <= 0:
            return first
        return (
            f"{first}\n(and {more} more error{'s' if more != 1 else ''}: "
            f"run `voice-agent check-config {self.source}` to list them all)"
        )


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
    *,
    require_api_key: bool = True,
) -> LoadedConfig:
    """Read and check the config file. `env` replaces the environment and `.env` (tests). Commands that open
    no Realtime session (status, check-config --no-secrets) pass `require_api_key=False`: an unset or
    placeholder key is then no error; the roles keep the default."""
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
    try:
        env = _with_key_file(env, str(source))
    except ConfigError:
        if require_api_key:
            raise  # a command that needs no key (status) runs without it, as with an unset key
    return parse_config(text, str(source), env, require_api_key=require_api_key)


def _with_key_file(env: Mapping[str, str], source: str) -> Mapping[str, str]:
    """`env` with OPENAI_API_KEY read from the file OPENAI_API_KEY_FILE names, when it names one."""
    path = env.get(KEY_FILE_ENV)
    if not path:
        return env
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(source, [Problem("", f"{KEY_FILE_ENV}: cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, [Problem("", f"{KEY_FILE_ENV}: {path} is not UTF-8 text")]) from None
    if not key or "\n" in key:
        what = "is empty" if not key else "holds more than one line (expected the key alone)"
        raise ConfigError(source, [Problem("", f"{KEY_FILE_ENV}: {path} {what}")])
    return {**env, "OPENAI_API_KEY": key}


def check(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    require_api_key: bool = True,
) -> list[Problem]:
    """Every problem of the config at `path` (default: as `load_config`), each in file order within its kind
    (`Problem.severity`): the errors and warnings of an unusable config, or the warnings and notes of a usable
    one. Never raises for a bad config: for check-config and doctor."""
    try:
        loaded = load_config(path, env, require_api_key=require_api_key)
    except ConfigError as exc:
        return exc.problems + exc.warnings
    return _by_line(loaded.warnings) + _by_line(loaded.notes)


def check_text(
    text: str, env: Mapping[str, str], *, source: str = "config", require_api_key: bool = True
) -> list[Problem]:
    """`check` of a document given as text, `env` standing for the environment and `.env`."""
    try:
        loaded = parse_config(text, source, env, require_api_key=require_api_key)
    except ConfigError as exc:
        return exc.problems + exc.warnings
    return _by_line(loaded.warnings) + _by_line(loaded.notes)


def _by_line(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def parse_config(text: str, source: str, env: Mapping[str, str], *, require_api_key: bool = True) -> LoadedConfig:
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

    # The API key's placeholder may stay unset for a command that opens no session.
    optional = set() if require_api_key else {"providers.openai_realtime.api_key"}
    expanded = _expand(raw, "", env, checker, optional)
    cleaned = checker.check_struct(expanded, Config, "")
    try:
        # Every wrong value has been left out of `cleaned` (its default stands in), so the rules below run on
        # the rest and every error is reported in one go.
        config = msgspec.convert(cleaned, Config)
    except (msgspec.ValidationError, TypeError):  # not expected; the errors found so far still go out
        raise ConfigError(source, checker.problems or [Problem("", "the configuration cannot be built")]) from None
    provider = config.providers.openai_realtime
    if not provider.api_key and env.get("OPENAI_API_KEY"):
        # The guide puts the key in .env; a config without `api_key` uses it the same way.
        provider.api_key = env["OPENAI_API_KEY"]
    rules.check(config, checker, require_api_key)

    provider_keys = _keys_at(cleaned, "providers", "openai_realtime")
    td_keys = _keys_at(cleaned, "providers", "openai_realtime", "turn_detection")
    warnings, notes = ga_session.review(config.providers.openai_realtime, provider_keys, td_keys)
    errors = [p for p in checker.problems if p.severity is Severity.ERROR]
    warnings = [p for p in checker.problems if p.severity is Severity.WARNING] + warnings
    warnings = _by_line([replace(p, line=checker.lines.get(p.path)) for p in warnings])
    notes = _by_line([replace(p, line=checker.lines.get(p.path)) for p in notes])
    if errors:
        raise ConfigError(source, errors, warnings)
    return LoadedConfig(config, source, warnings, notes, secret_values(msgspec.to_builtins(config)))


def _keys_at(tree: Any, *path: str) -> set[str]:
    """The keys the user wrote (and got right) in the section at `path`."""
    for key in path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return set(tree) if isinstance(tree, dict) else set()


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


def _expand(value: Any, path: str, env: Mapping[str, str], checker: Checker, optional: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), env, checker, optional) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env, checker, optional) for i, v in enumerate(value)]
    if isinstance(value, str):
        try:
            return expand(value, env)
        except EnvError as exc:
            if path in optional:
                return ""
            checker.add(path, str(exc))
            return SKIP
    return value
