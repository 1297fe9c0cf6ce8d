"""The doctor's output: one line per check (✔ ok, ! warning, ✘ failure, - skipped) with its fix, or JSON."""

from __future__ import annotations

import msgspec

from shared.masking import redact
from voice_agent.doctor.result import CheckResult, Status

MARKS = {Status.OK: "✔", Status.WARN: "!", Status.FAIL: "✘", Status.SKIPPED: "-"}
NAME_WIDTH = 18


def render_text(results: list[CheckResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{MARKS[r.status]} {r.check:<{NAME_WIDTH}} {r.detail}")
        if r.fix and r.status is not Status.OK:
            lines.append(f"  {'':<{NAME_WIDTH}} fix: {r.fix}")
    counts = {s: sum(r.status is s for r in results) for s in Status}
    lines.append(
        f"{counts[Status.OK]} ok, {counts[Status.WARN]} warnings, {counts[Status.FAIL]} failed, "
        f"{counts[Status.SKIPPED]} skipped"
    )
    return redact("\n".join(lines))


def render_json(results: list[CheckResult]) -> str:
    return redact(msgspec.json.encode(results).decode())
