"""Chaos in the load test, without I/O: the `--chaos` spec, what each affected call lived through, and the
per-fault report. The processes are killed and restarted by `sim/chaos_run.py`; this module only judges.

    --chaos kill-worker@20s,kill-controller@40s,restart-redis@60s

Faults (each bounded in time; `FAULT_TIMES` says how long each lasts):

- kill-worker: SIGKILL the media worker holding the most calls (not restarted: it is gone);
- stop-worker: SIGSTOP it (alive but wedged), SIGCONT after STOP_WORKER_S;
- kill-controller: SIGKILL the leading controller; restarted after RESTART_S, as a supervisor would;
- restart-redis: stop the run's private redis-server (SIGTERM: it writes its AOF, as `systemctl restart` does)
  and start it again REDIS_DOWN_S later on the same data directory;
- kill-tool-worker: SIGKILL a tool worker and its children (work horse, scheduler), as when its container
  dies; restarted after RESTART_S.

How a call is judged, from what the CALLER heard (times on this host's monotonic clock):

- the next audio: the first voiced span the caller hears still running IN_FLIGHT_S after the fault (the
  frames a dead worker had already sent are not a resumption), from the fault on;
- the caller-audible gap: from the fault to that next audio (p50/p95/max over the calls not sent to the
  fallback; the fallback's own prompt is timed apart);
- the silence: the longest stretch between the fault and that next audio (or the call's end) in which the
  caller neither heard speech nor spoke, leaving out the pause the script itself makes between two cycles of
  its WAV (`script_pauses`: after the goodbye, before the next cycle's first line, ~5.6 s). The scripted caller
  talks on a schedule whatever it hears; the time it spends talking is not counted (a caller talking is not
  waiting). Undisturbed, the longest such stretch is about 1.3 s (a turn's wait; measured on the calls no
  fault touched and reported beside the faults);
- dead air: a silence longer than DEAD_AIR_S after the fault (up, and not yet in the fallback's prompt);
- survived: agent audio resumed without dead air, and the call lasted to its scripted hangup;
- fallback: the controller ended it with a reason other than the caller's hangup (media_lost, setup_failed,
  ...: every such end in controller/call.py sends a caller still there to the dialplan's fallback).
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

from sim import loadtest_report as rep

DEAD_AIR_S = 2.0  # the "silence longer than 2 s is not allowed"
IN_FLIGHT_S = 0.1  # agent audio heard this long after the fault was sent before it
STOP_WORKER_S = 5.0
RESTART_S = 1.0
REDIS_DOWN_S = 2.0


class FaultKind(enum.Enum):
    KILL_WORKER = "kill-worker"
    STOP_WORKER = "stop-worker"
    KILL_CONTROLLER = "kill-controller"
    RESTART_REDIS = "restart-redis"
    KILL_TOOL_WORKER = "kill-tool-worker"


# How long a fault lasts before its process (or Redis) is back; kill-worker's worker stays dead.
FAULT_TIMES = {
    FaultKind.KILL_WORKER: 0.0,
    FaultKind.STOP_WORKER: STOP_WORKER_S,
    FaultKind.KILL_CONTROLLER: RESTART_S,
    FaultKind.RESTART_REDIS: REDIS_DOWN_S,
    FaultKind.KILL_TOOL_WORKER: RESTART_S,
}
# Faults whose calls are the ones on one media worker; the others touch every call up at the time.
WORKER_FAULTS = {FaultKind.KILL_WORKER, FaultKind.STOP_WORKER}


class ChaosSpecError(ValueError):
    """A `--chaos` spec that cannot be run; the message names the token."""


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    at_s: float  # since the ramp started

    @property
    def name(self) -> str:
        return f"{self.kind.value}@{self.at_s:g}s"


_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)?$")


def parse_chaos(text: str) -> list[Fault]:
    """'kill-worker@20s,restart-redis@60' -> faults in time order. Times in s (a bare number) or ms."""
    faults = []
    kinds = {k.value: k for k in FaultKind}
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise ChaosSpecError(f"--chaos {text!r}: an empty fault (two commas, or a comma at an end)")
        name, at, when = token.partition("@")
        if not at:
            raise ChaosSpecError(f"--chaos: {token!r} has no time: write fault@time, such as {name}@20s")
        kind = kinds.get(name.strip())
        if kind is None:
            raise ChaosSpecError(f"--chaos: unknown fault {name.strip()!r} in {token!r}; known: {', '.join(kinds)}")
        match = _TIME.match(when.strip())
        if match is None:
            raise ChaosSpecError(
                f"--chaos: {token!r}: the time {when.strip()!r} is not a number of s or ms (20s, 0.5s, 500ms)"
            )
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        faults.append(Fault(kind, seconds))
    return sorted(faults, key=lambda f: f.at_s)


def check_schedule(faults: list[Fault], last_hangup_s: float, workers: int, tool_workers: int) -> None:
    """Every fault must happen while calls are up, and have something to act on."""
    for f in faults:
        if f.at_s >= last_hangup_s:
            raise ChaosSpecError(
                f"--chaos: {f.name} comes after the last call is hung up ({last_hangup_s:g} s): "
                "lengthen --hold or move the fault"
            )
        if f.kind in WORKER_FAULTS and workers < 2:
            raise ChaosSpecError(f"--chaos: {f.name} needs --workers 2 or more (another worker to move the calls to)")
        if f.kind is FaultKind.KILL_TOOL_WORKER and tool_workers < 1:
            raise ChaosSpecError(f"--chaos: {f.name} needs --tool-workers 1 or more")


# --- one call -------------------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    SURVIVED = "survived"
    FALLBACK = "fallback"
    DEAD_AIR = "dead_air"
    DROPPED = "dropped"  # ended early without the fallback, or resumed and then lost
    UNDECIDED = "undecided"  # hung up by the script before any audio came, without DEAD_AIR_S of silence


@dataclass
class CallAtFault:
    """What the harness knows of one affected call (times: this host's monotonic clock)."""

    call_id: str
    voiced: list[tuple[float, float]]  # what the caller heard: spans of agent speech
    spoke: list[tuple[float, float]]  # when the caller spoke
    end_t: float | None  # when the call ended (None: still up at the end of the run)
    scripted_end: bool  # the call ended by the script's hangup (end_reason caller_hangup after our hangup)
    end_reason: str
    pauses: list[tuple[float, float]] = field(default_factory=list)  # the script's own quiet (`script_pauses`)


@dataclass
class Judged:
    call_id: str
    outcome: Outcome
    gap_s: float | None  # the fault -> the next audio the caller heard (None when none came)
    silence_s: float = 0.0  # the longest silence after the fault before it (the caller not speaking either)


def spoken_spans(
    start_t: float | None, lines: list[tuple[float, float]], cycle_s: float, cycles: int
) -> list[tuple[float, float]]:
    """When the caller spoke: its timeline's lines (offsets in s within one cycle), repeated `cycles` times
    from `start_t`, the moment it started speaking its WAV."""
    if start_t is None:
        return []
    return [(start_t + c * cycle_s + a, start_t + c * cycle_s + b) for c in range(cycles) for a, b in lines]


def script_pauses(
    start_t: float | None, lines: list[tuple[float, float]], cycle_s: float, cycles: int
) -> list[tuple[float, float]]:
    """The quiet the script itself leaves between two cycles of its WAV: from the caller's last line of a cycle
    (the agent says goodbye, then nothing) to its first line of the next (no greeting the second time)."""
    if start_t is None or not lines:
        return []
    return [(start_t + (c - 1) * cycle_s + lines[-1][1], start_t + c * cycle_s + lines[0][0]) for c in range(1, cycles)]


def next_agent_audio(voiced: list[tuple[float, float]], fault_t: float) -> float | None:
    for start, end in voiced:
        if end > fault_t + IN_FLIGHT_S:
            return max(start, fault_t)
    return None


def longest_silence(voiced: list[tuple[float, float]], spoke: list[tuple[float, float]], t0: float, t1: float) -> float:
    """The longest stretch of [t0, t1] in which the caller neither heard speech nor spoke."""
    longest, cursor = 0.0, t0
    for start, end in sorted(voiced + spoke):
        if end <= cursor:
            continue
        if start >= t1:
            break
        longest = max(longest, start - cursor)
        cursor = max(cursor, end)
    return max(longest, t1 - cursor)


def judge(call: CallAtFault, fault_t: float, run_end_t: float) -> Judged:
    heard = next_agent_audio(call.voiced, fault_t)
    stop = call.end_t if call.end_t is not None else run_end_t
    if heard is not None and heard >= stop:
        heard = None  # after the call ended: not for this caller
    silence = longest_silence(call.voiced, call.spoke + call.pauses, fault_t, heard if heard is not None else stop)
    resumed = None if heard is None else heard - fault_t
    fallback = bool(call.end_reason) and call.end_reason not in rep.NORMAL_END
    if silence > DEAD_AIR_S:
        outcome = Outcome.DEAD_AIR
    elif fallback:
        outcome = Outcome.FALLBACK
    elif heard is not None:
        outcome = Outcome.SURVIVED if call.scripted_end else Outcome.DROPPED
    else:
        outcome = Outcome.UNDECIDED if call.scripted_end else Outcome.DROPPED
    return Judged(call.call_id, outcome, resumed, silence)


# --- mails ----------------------------------------------------------------------------------------------------

_SUMMARY_ID = re.compile(r"<send_email_summary\.([^@>]+)@")


def summaries_by_call(mail_dir: Path) -> Counter:
    """Call id -> how many summary mails the mail server kept (its .eml files, by Message-ID)."""
    found: Counter = Counter()
    if not mail_dir.exists():
        return found
    parser = BytesHeaderParser()
    for path in sorted(mail_dir.glob("*.eml")):
        with open(path, "rb") as fh:
            msgid = parser.parse(fh).get("Message-ID", "")
        match = _SUMMARY_ID.search(msgid)
        if match:
            found[match.group(1)] += 1
    return found


def mail_faults(call_ids: list[str], summaries: Counter) -> dict[str, list[str]]:
    """Of `call_ids` (each owed one summary): which have none (lost) and which more than one (duplicated)."""
    return {
        "lost": sorted(c for c in call_ids if summaries.get(c, 0) == 0),
        "duplicated": sorted(c for c in call_ids if summaries.get(c, 0) > 1),
    }


# --- the report -----------------------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    """One fault as it was run."""

    fault: Fault
    t: float = 0.0  # monotonic, when it was injected
    target: str = ""  # the process (or "redis") it hit
    recovered_t: float | None = None  # when its process was back (None: not restarted, or never)
    affected: list[str] = field(default_factory=list)  # call ids judged by their audio
    mail_calls: list[str] = field(default_factory=list)  # call ids whose summary job was in flight
    note: str = ""


def fault_result(
    record: FaultRecord, judged: list[Judged], summaries: Counter, caller_of: dict[str, str] | None = None
) -> dict:
    """One fault's figures. `summaries` are counted by caller when `caller_of` (call id -> caller channel) is
    given: a caller admitted twice (two controllers both taking it) and mailed twice is a duplicate."""
    outcomes = Counter(j.outcome for j in judged)
    # A call sent to the fallback hears the dialplan's prompt, not the agent: its gap is kept apart.
    gaps_ms = [1000 * j.gap_s for j in judged if j.gap_s is not None and j.outcome is not Outcome.FALLBACK]
    fallback_ms = [1000 * j.gap_s for j in judged if j.gap_s is not None and j.outcome is Outcome.FALLBACK]
    checked = record.mail_calls or record.affected
    keys = sorted({(caller_of or {}).get(c, c) for c in checked})
    mails = mail_faults(keys, summaries)
    return {
        "fault": record.fault.name,
        "kind": record.fault.kind.value,
        "target": record.target,
        "note": record.note,
        "down_s": None if record.recovered_t is None else round(record.recovered_t - record.t, 2),
        "affected": len(judged),
        "survived": outcomes[Outcome.SURVIVED],
        "fallback": outcomes[Outcome.FALLBACK],
        "dead_air": outcomes[Outcome.DEAD_AIR],
        "dropped": outcomes[Outcome.DROPPED],
        "undecided": outcomes[Outcome.UNDECIDED],
        "gap_ms": rep.summary(gaps_ms),
        "silence_ms": rep.summary([1000 * j.silence_s for j in judged]),
        "fallback_heard_ms": rep.summary(fallback_ms),
        "mails_checked": len(keys),
        "mails_lost": len(mails["lost"]),
        "mails_duplicated": len(mails["duplicated"]),
        "calls": {
            j.call_id: {"outcome": j.outcome.value, "gap_ms": _ms(j.gap_s), "silence_ms": _ms(j.silence_s)}
            for j in judged
        },
        "mail_problems": mails,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


# The figures that must be 0, and where they are in the chaos result.
MUST_BE_ZERO = ("dead_air", "mails_lost", "mails_duplicated")


def failures(chaos: dict) -> list[str]:
    """Every must-be-0 figure that is not 0, named."""
    out = []
    for f in chaos["faults"]:
        for key in MUST_BE_ZERO:
            if f[key]:
                out.append(f"{f['fault']}: {key} {f[key]}")
    mails = chaos["mails"]
    for key in ("lost", "duplicated"):
        if mails[key]:
            out.append(f"all callers: summaries {key} {len(mails[key])}")
    for key, value in chaos["leaks"].items():
        if value:
            out.append(f"leaked {key}: {value}")
    return out


def report_lines(chaos: dict) -> list[str]:
    lines = [
        "chaos (per fault; gap = the fault -> the next agent audio the caller heard, ms, calls not in the fallback)",
        f"  {'fault':<26} {'target':<28} {'calls':>5} {'surv':>5} {'fallb':>5} {'dead':>5} {'drop':>5} "
        f"{'p50':>7} {'p95':>7} {'max':>7} {'mail lost/dup':>14}",
    ]
    for f in chaos["faults"]:
        g = f["gap_ms"]
        lines.append(
            f"  {f['fault']:<26} {f['target'][:28]:<28} {f['affected']:>5} {f['survived']:>5} {f['fallback']:>5} "
            f"{f['dead_air']:>5} {f['dropped']:>5} {rep.fmt_ms(g['p50']):>7} {rep.fmt_ms(g['p95']):>7} "
            f"{rep.fmt_ms(g['max']):>7} {f['mails_lost']:>6}/{f['mails_duplicated']:<7}"
        )
        if f["note"]:
            lines.append(f"    {f['note']}")
        si = f["silence_ms"]
        if si["n"]:
            lines.append(
                f"    longest silence after the fault (neither side speaking): p50 {rep.fmt_ms(si['p50'])}, "
                f"max {rep.fmt_ms(si['max'])} ms; dead air above {1000 * DEAD_AIR_S:.0f} ms"
            )
        fb = f["fallback_heard_ms"]
        if fb["n"]:
            lines.append(
                f"    fallback heard (fault -> the dialplan's first audio): p50 {rep.fmt_ms(fb['p50'])}, "
                f"max {rep.fmt_ms(fb['max'])} ms (n={fb['n']})"
            )
    base = chaos.get("baseline_silence_ms")
    if base and base["n"]:
        lines.append(
            f"  calls no fault touched, longest silence each (the script's own): "
            f"p50 {rep.fmt_ms(base['p50'])}, "
            f"max {rep.fmt_ms(base['max'])} ms (n={base['n']})"
        )
    mails = chaos["mails"]
    lines.append(
        f"  summaries over all {mails['calls']} callers admitted (one each): {len(mails['lost'])} lost, "
        f"{len(mails['duplicated'])} duplicated"
    )
    server = chaos.get("mail_server")
    if server:
        lines.append(
            f"  mail server: {server['data']} messages reached DATA, {server['accepted']} accepted (a sender "
            "killed mid-DATA leaves nothing there)"
        )
    lines.append("  leaks: " + ", ".join(f"{k} {v}" for k, v in chaos["leaks"].items()))
    bad = failures(chaos)
    lines.append("  must-be-0 figures: " + ("all 0" if not bad else "NOT 0: " + "; ".join(bad)))
    return lines
