"""`voice-agent migrate-config`: turn the existing voice agent's `config/ai-agent.yaml` into ours.

Walks the old document, applies the first matching rule of `migrate_rules.RULES` to each key, writes our YAML
(placeholders kept as placeholders, in our loader's syntax) and checks it with our own loader. Every old key
ends up in the report as mapped, dropped (with why) or left to a human.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.config.load import ConfigError, parse_config
from shared.config.migrate_rules import (
    ENV_SECTIONS,
    PROVIDER,
    RULES,
    Append,
    Checked,
    Ctx,
    Drop,
    NeedsHuman,
    Rule,
    Writes,
    env_names,
    our_placeholders,
)
from shared.config.schema import Config
from shared.config.validate import Problem

# What an unset `${VAR}` (no default) stands for while the result is checked: the user sets it before starting.
STAND_IN = "set-before-starting"


class Unreadable(Exception):
    """The old file cannot be read as a config (missing, not YAML, not a mapping)."""


class Outcome(enum.Enum):
    MAPPED = "mapped"
    DROPPED = "dropped"
    BY_HAND = "by hand"


@dataclass
class Entry:
    outcome: Outcome
    old: str
    new: str = ""
    reason: str = ""  # why dropped / what a person must do / what to check about a mapping
    keys: int = 1  # the keys under `old` (a dropped section counts all of them)

    def __str__(self) -> str:
        size = f" ({self.keys} keys)" if self.keys > 1 else ""
        if self.outcome is Outcome.MAPPED:
            check = f"  (check: {self.reason})" if self.reason else ""
            return f"{self.outcome.value:8} {self.old} -> {self.new}{check}"
        return f"{self.outcome.value:8} {self.old}{size}: {self.reason}"


@dataclass
class Migration:
    text: str  # our YAML, header included
    entries: list[Entry]
    errors: list[Problem] = field(default_factory=list)  # the loader's verdict on `text`; empty: valid
    warnings: list[Problem] = field(default_factory=list)
    unset: list[str] = field(default_factory=list)  # variables without a default, unset in the environment now

    @property
    def valid(self) -> bool:
        return not self.errors

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.outcome is outcome)


def read_old(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Unreadable(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Unreadable(f"{path}: not a text file (not UTF-8)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise Unreadable(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except Exception as exc:  # PyYAML lets Python's errors through on some bad scalars
        raise Unreadable(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise Unreadable(f"{path}: the top level must be a mapping of sections, got {type(doc).__name__}")
    return doc


# ---------------------------------------------------------------------------------------------------------------
# Applying the rules.


def match_rule(rule: Rule, parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys the pattern's wildcards matched, or None."""
    pattern = rule.old.split(".")
    if len(pattern) != len(parts):
        return None
    keys = []
    for want, got in zip(pattern, parts, strict=True):
        if "*" in want:
            if not fnmatchcase(got, want):
                return None
            keys.append(got)
        elif want != got:
            return None
    return tuple(keys)


def _has_rules_below(parts: tuple[str, ...]) -> bool:
    for rule in RULES:
        pattern = rule.old.split(".")
        if len(pattern) > len(parts) and all(
            fnmatchcase(p, w) for w, p in zip(pattern[: len(parts)], parts, strict=True)
        ):
            return True
    return False


def _leaves(value: Any) -> int:
    if isinstance(value, dict) and value:
        return sum(_leaves(v) for v in value.values())
    return 1


class _Builder:
    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.out: dict[str, Any] = {}
        self.entries: list[Entry] = []

    def walk(self, node: Any, parts: tuple[str, ...]) -> None:
        # A section with rules for its keys is walked key by key; a wildcard rule for the section itself
        # (`providers.*`) is for the sections that have none (`providers.deepgram`).
        if isinstance(node, dict) and node and _has_rules_below(parts):
            for key, value in node.items():
                self.walk(value, (*parts, str(key)))
            return
        for rule in RULES:
            keys = match_rule(rule, parts)
            if keys is not None:
                self.apply(rule, node, parts, keys)
                return
        path = ".".join(parts)
        if node in (None, {}, []) and _has_rules_below(parts):
            self.entries.append(Entry(Outcome.DROPPED, path, reason="empty"))
        else:
            self.entries.append(Entry(Outcome.BY_HAND, path, reason="unknown key", keys=_leaves(node)))

    def apply(self, rule: Rule, value: Any, parts: tuple[str, ...], keys: tuple[str, ...]) -> None:
        path = ".".join(parts)
        if rule.drop:
            self.entries.append(Entry(Outcome.DROPPED, path, reason=rule.drop, keys=_leaves(value)))
            return
        if rule.human:
            self.entries.append(Entry(Outcome.BY_HAND, path, reason=rule.human, keys=_leaves(value)))
            return
        try:
            result = rule.transform(value, Ctx(self.doc, keys)) if rule.transform else value
        except Drop as why:
            self.entries.append(Entry(Outcome.DROPPED, path, reason=str(why), keys=_leaves(value)))
            return
        except NeedsHuman as why:
            self.entries.append(Entry(Outcome.BY_HAND, path, reason=str(why), keys=_leaves(value)))
            return
        except Exception as exc:  # a value of a shape no rule expected: reported, never fatal
            reason = f"could not translate its value ({type(exc).__name__})"
            self.entries.append(Entry(Outcome.BY_HAND, path, reason=reason, keys=_leaves(value)))
            return
        notes: list[str] = []
        if isinstance(result, Checked):
            notes.append(result.note)
            result = result.value
        writes = result.values if isinstance(result, Writes) else {rule.new.format(*keys): result}
        for new, item in writes.items():
            notes += self.write(tuple(new.split(".")), item)
        self.entries.append(Entry(Outcome.MAPPED, path, ", ".join(writes), "; ".join(notes)))

    def write(self, parts: tuple[str, ...], value: Any) -> list[str]:
        """Set our key (or append to our list); the placeholder rewrites made, for the report."""
        value, notes = _our_syntax(value)
        node = self.out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, Append):
            items = node.setdefault(parts[-1], [])
            if value.item not in items:
                items.append(value.item)
        else:
            node[parts[-1]] = value
        return notes

    def add_env_sections(self) -> None:
        for section in ENV_SECTIONS:
            present = [t for t in section.triggers if Ctx(self.doc, ()).get(t) is not None]
            if present:
                for new, value in section.values.items():
                    self.write(tuple(new.split(".")), value)
                self.entries.append(
                    Entry(Outcome.MAPPED, f"(environment) {section.variables}", ", ".join(section.values))
                )

    def add_context_defaults(self) -> None:
        contexts = self.doc.get("contexts")
        if not isinstance(contexts, dict):
            return
        for name, ctx in contexts.items():
            if isinstance(ctx, dict) and "tools" not in ctx:
                # There a context without a tools list had no tools; here it would get the provider's.
                self.write(("contexts", str(name), "tools"), [])
                self.entries.append(
                    Entry(
                        Outcome.MAPPED,
                        f"contexts.{name}.tools (absent)",
                        f"contexts.{name}.tools",
                        "[]: no tools, as before",
                    )
                )
        if "default" in contexts:
            self.write(("default_context",), "default")
            self.entries.append(
                Entry(Outcome.MAPPED, "contexts.default", "default_context", "calls without AI_CONTEXT use it")
            )
        elif contexts:
            self.entries.append(
                Entry(
                    Outcome.BY_HAND,
                    "(no context named default)",
                    reason="calls without AI_CONTEXT go to controller.fallback: set default_context to one of "
                    + ", ".join(map(str, contexts)),
                )
            )


def _our_syntax(value: Any) -> tuple[Any, list[str]]:
    if isinstance(value, str):
        text, notes = our_placeholders(value)
        return text, notes
    if isinstance(value, list):
        pairs = [_our_syntax(v) for v in value]
        return [v for v, _ in pairs], [n for _, ns in pairs for n in ns]
    if isinstance(value, Append):
        item, notes = _our_syntax(value.item)
        return Append(item), notes
    return value, []


# ---------------------------------------------------------------------------------------------------------------
# Writing and checking our YAML.


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Prompts stay readable as block literals.
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def _ordered(node: Any, hint: Any) -> Any:
    """Our keys in the schema's order (as in config/ai-agent.yaml), so the result reads like our example."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(node, dict) and isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        hints = typing.get_type_hints(hint, include_extras=True)
        order = {name: i for i, name in enumerate(hint.__struct_fields__)}
        return {k: _ordered(node[k], hints.get(k)) for k in sorted(node, key=lambda k: order.get(k, len(order)))}
    if isinstance(node, dict) and typing.get_origin(hint) is dict:
        return {k: _ordered(v, typing.get_args(hint)[1]) for k, v in node.items()}
    return node


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def printable(text: str) -> str:
    """Old keys and paths in a comment or on a terminal: a newline would end the comment (and start YAML), an
    escape sequence would reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _header(source: str, doc: Mapping[str, Any], now: datetime, by_hand: list[Entry]) -> str:
    version = doc.get("config_version")
    lines = [
        f"# Migrated by `voice-agent migrate-config` from {printable(source)}",
        "# (the existing voice agent's config" + (f", config_version {version}" if version is not None else "") + ")",
        f"# on {now:%Y-%m-%d %H:%M} UTC. The report it printed lists every old key: mapped, dropped (and why), or",
        "# left to you. Check this file with: voice-agent check-config <this file>",
    ]
    if by_hand:
        lines.append("# To do by hand:")
        lines += [printable(f"#   - {e.old}: {e.reason}") for e in by_hand]
    return "\n".join(lines) + "\n\n"


def migrate(doc: dict[str, Any], source: str, env: Mapping[str, str], now: datetime) -> Migration:
    """Our config for the old document `doc`, checked with our loader against `env` (unset variables without a
    default are filled with a stand-in and listed in `unset`)."""
    builder = _Builder(doc)
    for key, value in doc.items():
        builder.walk(value, (str(key),))
    builder.add_env_sections()
    builder.add_context_defaults()
    tree = _ordered(builder.out, Config)
    by_hand = [e for e in builder.entries if e.outcome is Outcome.BY_HAND]
    body = yaml.dump(tree, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096) if tree else ""
    text = _header(source, doc, now, by_hand) + body

    unset = sorted(
        {name for s in _strings(tree) for name, has_default in env_names(s) if not has_default and not env.get(name)}
    )
    check_env = {**env, **{name: STAND_IN for name in unset}}
    provider = (tree.get("providers") or {}).get(PROVIDER.split(".")[1]) or {}
    if "api_key" not in provider and not env.get("OPENAI_API_KEY"):  # our loader then takes OPENAI_API_KEY
        unset.append("OPENAI_API_KEY")
        check_env["OPENAI_API_KEY"] = STAND_IN
    migration = Migration(text, builder.entries, unset=unset)
    try:
        loaded = parse_config(text, "the result", check_env)
    except ConfigError as exc:
        migration.errors = exc.problems
    else:
        migration.warnings = loaded.warnings
    return migration


def report(migration: Migration, source: str, target: str) -> str:
    lines = [printable(f"migrate-config: {source} -> {target}")]
    lines += [printable(f"  {entry}") for entry in migration.entries]
    if migration.unset:
        lines.append(f"set before starting (unset now, no default): {', '.join(migration.unset)}")
    for warning in migration.warnings:
        lines.append(f"warning: {warning}")
    counts = (
        f"{migration.count(Outcome.MAPPED)} mapped, {migration.count(Outcome.DROPPED)} dropped, "
        f"{migration.count(Outcome.BY_HAND)} by hand"
    )
    if migration.valid:
        lines.append(f"{counts}; the result is a valid configuration")
    else:
        lines.append(f"{counts}; the result is NOT valid ({len(migration.errors)} errors):")
        lines += [f"  - {problem}" for problem in migration.errors]
    return "\n".join(lines)
