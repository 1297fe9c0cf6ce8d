"""Run the checks: each with its own timeout, concurrently where independent, a failure never stopping the
others. A check whose prerequisite failed (or was skipped) is skipped with the reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.config import LoadedConfig
from shared.masking import redact
from voice_agent.doctor.result import CheckResult, Outcome, Status, fail, skipped


@dataclass
class Probe:
    """What every check may read: the config and the command line; `facts` carries what one check learnt for
    another (the ARI server's clock, Redis's client), written by the check its reader depends on."""

    loaded: LoadedConfig
    timeout_s: float
    test_mail_to: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


CheckFn = Callable[[Probe], Awaitable[Outcome]]


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn
    needs: tuple[str, ...] = ()  # checks that must pass (ok or warn) before this one means anything


async def run_checks(checks: list[Check], probe: Probe) -> list[CheckResult]:
    """Every check's result, in the order given."""
    done: dict[str, asyncio.Future[CheckResult]] = {c.name: asyncio.get_running_loop().create_future() for c in checks}

    async def one(check: Check) -> None:
        started = time.monotonic()
        for name in check.needs:
            before = await done[name]
            if before.status in (Status.FAIL, Status.SKIPPED):
                word = "failed" if before.status is Status.FAIL else "was skipped"
                outcome = skipped(f"needs {name}, which {word}")
                break
        else:
            outcome = await _guarded(check, probe)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        done[check.name].set_result(
            CheckResult(check.name, outcome.status, redact(outcome.detail), redact(outcome.fix), elapsed_ms)
        )

    await asyncio.gather(*(one(c) for c in checks))
    return [done[c.name].result() for c in checks]


async def _guarded(check: Check, probe: Probe) -> Outcome:
    """The check's outcome; a timeout or an unexpected error is that check's failure, never the run's."""
    try:
        async with asyncio.timeout(probe.timeout_s):
            return await check.run(probe)
    except TimeoutError:
        return fail(f"no answer within {probe.timeout_s:g} s", "is the service up and reachable? (--timeout S)")
    except Exception as exc:  # a doctor that crashes on a broken setup would be no doctor
        return fail(f"unexpected error: {type(exc).__name__}: {exc}", "report this with the output of the run")
