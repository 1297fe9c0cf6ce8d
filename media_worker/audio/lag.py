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
        return quantile_of_counts(self.buckets, self.counts, q, self.max)

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, count) pairs in Prometheus order, +Inf last."""
        out, seen = [], 0
        for le, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            seen += n
            out.append((le, seen))
        return out


def quantile_of_counts(buckets: tuple[float, ...], counts: list[int], q: float, top: float) -> float:
    """The q-quantile of per-bucket counts (a histogram, or the difference of two snapshots of one: a window's):
    the upper bound of the bucket holding it, `top` for the +Inf bucket; 0 when there are no counts."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            return buckets[i] if i < len(buckets) else top
    return top
