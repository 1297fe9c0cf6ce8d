"""A fixed-bucket histogram of how late the playout clock woke, in ms: cheap to record every 20 ms,
exportable as Prometheus buckets, and precise enough for the p99 ≤ 5 ms budget."""

from __future__ import annotations

import bisect

BUCKETS_MS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)


class LagHistogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS_MS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, ms: float) -> None:
        if ms < 0.0:
            ms = 0.0
        self.counts[bisect.bisect_left(self.buckets, ms)] += 1
        self.count += 1
        self.sum += ms
        if ms > self.max:
            self.max = ms

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (the max for the +Inf bucket); 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return self.buckets[i] if i < len(self.buckets) else self.max
        return self.max

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, count) pairs in Prometheus order, +Inf last."""
        out, seen = [], 0
        for le, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            seen += n
            out.append((le, seen))
        return out
