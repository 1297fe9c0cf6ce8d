"""Check a parsed config tree against the schema and report every problem at once.

msgspec stops at the first error and speaks in types (`Expected float, got str`); users need all the problems,
each with its key path, the expected value in plain words, and a did-you-mean for typos. So this walks the
tree along the struct definitions, converting each leaf on its own, and only builds the final `Config` once
the whole tree is clean.
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any, Annotated

import msgspec
from msgspec import inspect as mi

from shared.masking import mask_url


class Severity(enum.Enum):
    ERROR = "error"  # the config cannot be used: the roles refuse to start
    WARNING = "warning"  # it loads, but works against the guide or wastes what was configured
    NOTE = "note"  # how a beta-era key is sent in the GA session; nothing to fix


@dataclass(frozen=True)
class Problem:
    """One finding about one key: an error, a warning or a note, with its YAML line when known."""

    path: str
    message: str
    line: int | None = None
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class Skip:
    """Stands for a value whose placeholder could not be expanded; already reported, so not checked again."""


SKIP = Skip()


def has_skip(value: Any) -> bool:
    if isinstance(value, Skip):
        return True
    if isinstance(value, dict):
        return any(has_skip(v) for v in value.values())
    if isinstance(value, list):
        return any(has_skip(v) for v in value)
    return False


def show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}" if value else "an empty list"
    if isinstance(value, str) and "://" in value:
        return repr(mask_url(value))  # a URL's credentials stay out of the error
    return repr(value)


def suggest(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _num(x: float) -> str:
    return f"{x:g}"


def _bounds(ti: mi.IntType | mi.FloatType) -> str:
    low = ti.ge if ti.ge is not None else ti.gt
    high = ti.le if ti.le is not None else ti.lt
    if low is not None and high is not None:
        left = "[" if ti.ge is not None else "("
        right = "]" if ti.le is not None else ")"
        return f" in {left}{_num(low)}, {_num(high)}{right}"
    if low is not None:
        return f" {'>=' if ti.ge is not None else '>'} {_num(low)}"
    if high is not None:
        return f" {'<=' if ti.le is not None else '<'} {_num(high)}"
    return ""


def describe(ti: mi.Type) -> str:
    """What a type accepts, in the words of the error messages."""
    if isinstance(ti, mi.BoolType):
        return "true or false"
    if isinstance(ti, mi.IntType):
        return "an integer" + _bounds(ti)
    if isinstance(ti, mi.FloatType):
        return "a number" + _bounds(ti)
    if isinstance(ti, mi.StrType):
        if ti.max_length is not None:
            return f"a string of {ti.min_length or 0} to {ti.max_length} characters"
        return "a non-empty string" if ti.min_length else "a string"
    if isinstance(ti, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in ti.values)
    if isinstance(ti, mi.ListType):
        if ti.min_length:
            return f"a list of at least {ti.min_length} item{'s' if ti.min_length != 1 else ''}"
        return "a list"
    if isinstance(ti, (mi.DictType, mi.StructType)):
        return "a mapping"
    if isinstance(ti, mi.NoneType):
        return "null"
    if isinstance(ti, mi.UnionType):
        return " or ".join(describe(t) for t in ti.types)
    return "a valid value"


def _literal_values(ti: mi.Type) -> list[str]:
    if isinstance(ti, mi.LiteralType):
        return [v for v in ti.values if isinstance(v, str)]
    if isinstance(ti, mi.UnionType):
        return [v for t in ti.types for v in _literal_values(t)]
    return []


def _strip_annotated(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _struct_in(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct type in `tp` or `Struct | None`, else None."""
    tp = _strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        structs = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        return structs[0] if len(structs) == 1 else None
    return None


def _list_in(tp: Any) -> Any:
    """The `list[...]` type in `tp` or `list[...] | None` (Annotated kept, for its length bounds), else None."""
    base = _strip_annotated(tp)
    if typing.get_origin(base) is list:
        return tp
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        lists = [a for a in typing.get_args(base) if typing.get_origin(_strip_annotated(a)) is list]
        return lists[0] if len(lists) == 1 else None
    return None


def _known_keys(fields: typing.Collection[str]) -> str:
    """The keys a short section takes, for an unknown key with no close match (a long list would only hide it)."""
    return f" (this section takes: {', '.join(fields)})" if len(fields) <= 8 else ""


class Checker:
    """Walks raw values along the schema; `problems` collects what is wrong.

    Each `check` also returns the value with every wrong part left out (SKIP for a value that must go): the
    rest still builds a `Config` (defaults stand in for what was left out), so the rules that need the whole
    config run too and the user sees every problem in one go."""

    def __init__(self, lines: dict[str, int]):
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, severity: Severity = Severity.ERROR) -> None:
        self.problems.append(Problem(path, message, self.lines.get(path), severity))

    def check(self, value: Any, tp: Any, path: str) -> Any:
        if isinstance(value, Skip):
            return SKIP
        struct = _struct_in(tp)
        if struct is not None and not (value is None and struct is not _strip_annotated(tp)):
            return self.check_struct(value, struct, path)
        base = _strip_annotated(tp)
        origin, args = typing.get_origin(base), typing.get_args(base)
        if origin is dict and isinstance(value, dict) and _struct_in(args[1]):
            return self._check_dict_of_structs(value, args[1], path)
        list_type = _list_in(tp)
        if list_type is not None and isinstance(value, list):
            # Judge the items one by one: "tools[1]: expected one of ..., got 'hangup'", not "expected a list".
            item_type = typing.get_args(_strip_annotated(list_type))[0]
            before = len(self.problems)
            items = [self.check(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
            if len(self.problems) > before or any(isinstance(item, Skip) for item in items):
                return SKIP
            return self.check_leaf(items, list_type, path)
        return self.check_leaf(value, tp, path)

    def _check_dict_of_structs(self, value: dict[Any, Any], item_type: Any, path: str) -> dict[str, Any]:
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                self.add(path, f"keys must be non-empty strings, got {show(key)}")
                continue
            cleaned = self.check(item, item_type, f"{path}.{key}")
            if isinstance(cleaned, Skip):
                # Keep the entry with its defaults when it has them, so a reference to it (default_context:
                # sales) is not reported as a second, misleading error.
                struct = _struct_in(item_type)
                if struct is None or any(f.required for f in msgspec.structs.fields(struct)):
                    continue
                cleaned = {}
            out[key] = cleaned
        return out

    def check_leaf(self, value: Any, tp: Any, path: str) -> Any:
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError:
            ti = mi.type_info(tp)
            hint = suggest(value, _literal_values(ti)) if isinstance(value, str) else ""
            self.add(path, f"expected {describe(ti)}, got {show(value)}{hint}")
            return SKIP
        return value

    def check_struct(self, value: Any, cls: type[msgspec.Struct], path: str) -> Any:
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping of settings, got {show(value)}")
            return SKIP
        fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
        before = len(self.problems)
        cleaned = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                self.add(child, f"unknown key{suggest(str(key), fields) or _known_keys(fields)}")
                continue
            item = self.check(item, field.type, child)
            if not isinstance(item, Skip):
                cleaned[key] = item
        missing = False
        for name, field in fields.items():
            if field.required and name not in value:
                child = f"{path}.{name}" if path else name
                self.problems.append(Problem(child, "required key is missing", self.lines.get(path)))
                missing = True
        if missing:
            return SKIP
        # Cross-field rules live in __post_init__ and run on what is left. Their message names the keys it
        # concerns; one of those already reported wrong (or a placeholder that did not expand) means the rule
        # judged a default, not the user's value: it stays quiet. Either way the struct is left out.
        wrong_keys = {p.path[len(path) + 1 :].split(".")[0].split("[")[0] for p in self.problems[before:]}
        try:
            msgspec.convert(cleaned, cls)
        except msgspec.ValidationError as exc:
            message = str(exc).split(" - at `", 1)[0]
            if not has_skip(value) and not any(key and key in message for key in wrong_keys):
                self.add(path, message)
            # Leave out the keys the rule names (their defaults agree) and keep the rest for the later rules.
            rest = {key: item for key, item in cleaned.items() if key not in message}
            try:
                msgspec.convert(rest, cls)
            except msgspec.ValidationError:
                return SKIP
            return rest
        return cleaned
