"""Usage counters and caps, cluster-wide in Redis (config `limits:`).

One HASH per day and one per month (`Keys.usage_day`, `Keys.usage_month`; the day and month are those of
`limits.timezone`) holds the cluster's totals and each context's:

    sessions, seconds, spend_usd                      the whole cluster
    ctx:<context>:sessions|seconds|spend_usd          one context
    crossed:<cap>                                     set once, by the admission that first found <cap> reached

Who writes what, each atomically: the controller's admission script counts a session as it admits a call (and
refuses a call once a cap is reached, controller/admission.py); its release script adds the call's seconds with
the AI; the media worker adds each response's estimated cost as the response's `usage` arrives (`record_spend`),
so a long call counts while it runs and a worker that dies loses nothing already recorded. The keys expire on
their own (`DAY_TTL_S`, `MONTH_TTL_S`).
"""

from __future__ import annotations

import datetime as dt
import enum
import zoneinfo
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.config.schema import Limits
from shared.keys import Keys

DAY_TTL_S = 40 * 86_400  # a day's counters outlive its month's report
MONTH_TTL_S = 400 * 86_400  # a month's counters stay for a year's reports


class Cap(enum.Enum):
    """A cap that refuses new calls once reached (the fallback reason is `limit_<value>`)."""

    SESSIONS_PER_DAY = "sessions_per_day"
    SPEND_PER_DAY = "spend_per_day"
    SPEND_PER_MONTH = "spend_per_month"

    @property
    def reason(self) -> str:
        return f"limit_{self.value}"


@dataclass(frozen=True)
class Periods:
    day: str  # YYYY-MM-DD
    month: str  # YYYY-MM


def periods(limits: Limits, now: dt.datetime | None = None) -> Periods:
    """Today and this month in the configured time zone."""
    local = (now or dt.datetime.now(dt.UTC)).astimezone(zoneinfo.ZoneInfo(limits.timezone))
    return Periods(local.strftime("%Y-%m-%d"), local.strftime("%Y-%m"))


def cap_args(limits: Limits) -> list[str]:
    """The caps as the admission script reads them: sessions per day, spend per day, spend per month (0: off)."""
    return [
        str(limits.sessions_per_day or 0),
        repr(limits.spend_per_day_usd or 0.0),
        repr(limits.spend_per_month_usd or 0.0),
    ]


def cap_value(limits: Limits, cap: Cap) -> float | None:
    return {
        Cap.SESSIONS_PER_DAY: limits.sessions_per_day,
        Cap.SPEND_PER_DAY: limits.spend_per_day_usd,
        Cap.SPEND_PER_MONTH: limits.spend_per_month_usd,
    }[cap]


_RECORD_SPEND = """
-- KEYS: 1 day hash, 2 month hash. ARGV: 1 USD, 2 context, 3 day ttl s, 4 month ttl s
for i, key in ipairs(KEYS) do
  redis.call('HINCRBYFLOAT', key, 'spend_usd', ARGV[1])
  redis.call('HINCRBYFLOAT', key, 'ctx:' .. ARGV[2] .. ':spend_usd', ARGV[1])
  redis.call('EXPIRE', key, ARGV[2 + i])
end
return 1
"""


class SpendBook:
    """The media worker's side: each response's estimated cost into today's and this month's counters."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, limits: Limits):
        self.keys = keys
        self.limits = limits
        self._record = redis.register_script(_RECORD_SPEND)

    async def record_spend(self, context: str, usd: float) -> None:
        if usd <= 0:
            return
        p = periods(self.limits)
        keys = [self.keys.usage_day(p.day), self.keys.usage_month(p.month)]
        await self._record(keys=keys, args=[repr(usd), context, DAY_TTL_S, MONTH_TTL_S])


@dataclass
class Totals:
    sessions: int = 0
    seconds: float = 0.0
    spend_usd: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "sessions": self.sessions,
            "minutes": round(self.seconds / 60, 2),
            "spend_usd": round(self.spend_usd, 6),
        }


@dataclass
class PeriodUsage:
    period: str
    total: Totals
    by_context: dict[str, Totals]
    crossed: list[str]  # caps found reached in this period


def parse(period: str, fields: dict[str, str]) -> PeriodUsage:
    """A usage hash as totals; a field that is not a number counts as 0 (never an exception in a report)."""
    total, crossed = Totals(), []
    by_context: dict[str, Totals] = {}
    for name, value in fields.items():
        if name.startswith("crossed:"):
            crossed.append(name.removeprefix("crossed:"))
            continue
        target, metric = total, name
        if name.startswith("ctx:"):
            context, _, metric = name.removeprefix("ctx:").rpartition(":")
            target = by_context.setdefault(context, Totals())
        try:
            number = float(value)
        except ValueError:
            continue
        if metric == "sessions":
            target.sessions = int(number)
        elif metric == "seconds":
            target.seconds = number
        elif metric == "spend_usd":
            target.spend_usd = number
    return PeriodUsage(period, total, dict(sorted(by_context.items())), sorted(crossed))


async def read(redis: aioredis.Redis, keys: Keys, limits: Limits, month: str | None = None) -> dict[str, object]:
    """Today's and the month's usage beside the caps (`voice-agent usage`). `month` (YYYY-MM): that month
    instead of this one, without a day."""
    p = periods(limits)
    out: dict[str, object] = {"timezone": limits.timezone, "caps": caps(limits)}
    if month is None:
        day = parse(p.day, _decode(await redis.hgetall(keys.usage_day(p.day))))
        out["today"] = _period(day)
    selected = month or p.month
    out["month"] = _period(parse(selected, _decode(await redis.hgetall(keys.usage_month(selected)))))
    return out


def render(report: dict[str, Any]) -> str:
    """`voice-agent usage` for people: each period's totals beside its caps, then each context's."""
    caps_ = report["caps"]
    lines = [f"Usage (time zone {report['timezone']}; spend is estimated from the model's usage x configured prices)"]
    periods_ = (
        [("Today", report["today"], caps_["sessions_per_day"], caps_["spend_per_day_usd"])] if "today" in report else []
    )
    periods_.append(("Month", report["month"], None, caps_["spend_per_month_usd"]))
    for title, usage, session_cap, spend_cap in periods_:
        sessions = f"{usage['sessions']}" + (f" of {session_cap}" if session_cap else "")
        spend = f"${usage['spend_usd']:.2f}" + (f" of ${spend_cap:.2f}" if spend_cap else "")
        reached = f"   CAP REACHED: {', '.join(usage['caps_reached'])}" if usage["caps_reached"] else ""
        lines.append(f"{title} {usage['period']}: {sessions} sessions, {usage['minutes']:.1f} min, {spend}{reached}")
        for name, ctx in usage["by_context"].items():
            lines.append(f"  {name}: {ctx['sessions']} sessions, {ctx['minutes']:.1f} min, ${ctx['spend_usd']:.2f}")
    duration = caps_["max_call_duration_s"]
    lines.append(f"Longest call allowed: {f'{duration} s' if duration else 'no limit'}")
    return "\n".join(lines)


def caps(limits: Limits) -> dict[str, float | int | None]:
    return {
        "sessions_per_day": limits.sessions_per_day,
        "spend_per_day_usd": limits.spend_per_day_usd,
        "spend_per_month_usd": limits.spend_per_month_usd,
        "max_call_duration_s": limits.max_call_duration_s,
    }


def _period(usage: PeriodUsage) -> dict[str, object]:
    return {
        "period": usage.period,
        **usage.total.as_dict(),
        "by_context": {name: t.as_dict() for name, t in usage.by_context.items()},
        "caps_reached": usage.crossed,
    }


def _decode(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
