"""`${VAR}` and `${VAR:-default}` expansion in config values, and the optional `.env` file.

Expansion runs on parsed YAML string values, not on the raw text, so a value can never change the document's
structure. A value that is exactly one placeholder is re-read as a YAML scalar after expansion, so
`port: ${ARI_PORT:-8088}` gives the integer 8088. `$${` stands for a literal `${`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPE = "\x00dollar-brace\x00"


class EnvError(ValueError):
    """A placeholder that cannot be expanded; the message says why."""


def expand(value: str, env: Mapping[str, str]) -> str | int | float | bool | None:
    """Expand every placeholder in `value`; raise EnvError naming the first bad one."""
    text = value.replace("$${", _ESCAPE)
    if "${" not in text:
        return value.replace("$${", "${")
    whole = _PLACEHOLDER.fullmatch(text) is not None

    def substitute(match: re.Match[str]) -> str:
        body = match.group(1)
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            raise EnvError(f"'${{{body}}}' is not a valid placeholder (use ${{NAME}} or ${{NAME:-default}})")
        if name in env and (env[name] != "" or not sep):
            return env[name]
        if sep:
            return default
        raise EnvError(
            f"environment variable {name} is not set "
            f"(set it in the environment or in .env, or write ${{{name}:-default}})"
        )

    expanded = _PLACEHOLDER.sub(substitute, text)
    if "${" in expanded:
        raise EnvError(f"unterminated placeholder in {value!r} (missing '}}')")
    expanded = expanded.replace(_ESCAPE, "${")
    if whole:
        try:
            scalar = yaml.safe_load(expanded) if expanded.strip() else expanded
        except Exception:  # not YAML (YAMLError), or a scalar PyYAML cannot build (ValueError, RecursionError …)
            return expanded
        if isinstance(scalar, (int, float, bool)) or scalar is None:
            return scalar
    return expanded


def read_dotenv(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines; `export`, comments and single or double quotes are understood."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, val = line.partition("=")
        key = key.strip()
        if not sep or not _NAME.match(key):
            # The line is not quoted: it may be a secret (`OPENAI_API_KEY sk-...`, a key pasted alone).
            raise EnvError(f"{path} line {number}: expected KEY=VALUE (the line is not shown: it may hold a secret)")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            quote, val = val[0], val[1:-1]
            if quote == '"':
                val = val.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in val:
            val = val.split(" #", 1)[0].rstrip()
        values[key] = val
    return values


def environment(dotenv_paths: list[Path]) -> dict[str, str]:
    """The process environment over the first `.env` found; real environment variables win."""
    env: dict[str, str] = {}
    for path in dotenv_paths:
        if path.is_file():
            env.update(read_dotenv(path))
            break
    env.update(os.environ)
    return env
