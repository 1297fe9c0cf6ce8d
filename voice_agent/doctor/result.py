"""What one doctor check found: a status, the cause in words, and the fix (what to change, where)."""

from __future__ import annotations

import enum

import msgspec


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"  # works, but something will bite later (nothing persists, no controller yet, ...)
    FAIL = "fail"
    SKIPPED = "skipped"  # not run: a check it needs failed, or nothing in the config uses it


class Outcome(msgspec.Struct, frozen=True):
    """A check's verdict, before the runner adds its name and timing."""

    status: Status
    detail: str
    fix: str = ""


def ok(detail: str) -> Outcome:
    return Outcome(Status.OK, detail)


def warn(detail: str, fix: str) -> Outcome:
    return Outcome(Status.WARN, detail, fix)


def fail(detail: str, fix: str) -> Outcome:
    return Outcome(Status.FAIL, detail, fix)


def skipped(detail: str, fix: str = "") -> Outcome:
    return Outcome(Status.SKIPPED, detail, fix)


class CheckResult(msgspec.Struct, frozen=True):
    """One line of the report (and one object of `--json`)."""

    check: str
    status: Status
    detail: str
    fix: str
    elapsed_ms: int
