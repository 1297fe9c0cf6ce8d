"""Clock skew between this host and Redis, and this host and Asterisk: leases, takeover gaps and call timings
assume clocks within a second of each other."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from voice_agent.doctor.ari_checks import ari_get
from voice_agent.doctor.redis_checks import redis_time
from voice_agent.doctor.result import Outcome, fail, ok, warn
from voice_agent.doctor.runner import Probe

MAX_SKEW_S = 1.0
FIX = "run NTP (chrony or systemd-timesyncd) on every host of the cluster"


async def _skew(read_remote: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """(remote - local at the request's midpoint, the round trip): the skew is known to ± half the round trip."""
    sent = time.time()
    remote = await read_remote()
    received = time.time()
    return remote - (sent + received) / 2, received - sent


def _verdict(who: str, skew: float, round_trip: float) -> Outcome:
    said = f"{who}'s clock is {skew:+.3f} s from this host's (± {round_trip / 2:.3f} s)"
    return warn(said, FIX) if abs(skew) - round_trip / 2 > MAX_SKEW_S else ok(said)


async def check_redis_clock(probe: Probe) -> Outcome:
    skew, round_trip = await _skew(lambda: redis_time(probe))
    return _verdict("Redis", skew, round_trip)


async def check_ari_clock(probe: Probe) -> Outcome:
    async def asterisk_time() -> float:
        status, body = await ari_get(probe, "/asterisk/ping")
        if status != 200:
            raise ValueError(f"GET /ari/asterisk/ping answered HTTP {status}")
        # ARI's timestamps: 2026-12-05T00:44:50.123+0000
        return datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()

    try:
        skew, round_trip = await _skew(asterisk_time)
    except (ValueError, KeyError, TypeError) as exc:
        return fail(f"cannot read Asterisk's time: {exc}", "is res_ari_asterisk loaded?")
    return _verdict("Asterisk", skew, round_trip)
