"""Refused media sources, logged at most once per source and reason per interval.

A port scan or a flood of foreign RTP must not become a flood of log lines: the first refusal of a source is
logged at WARNING, the next ones only counted (the caller's Prometheus counter, and here), and the count is
reported when the interval has passed and the source is refused again.
"""

from __future__ import annotations

import logging
import time

LOG_INTERVAL_S = 60.0
# Sources remembered at once; beyond it the table is emptied (a spoofed-address flood cannot grow it).
MAX_SOURCES = 1024


class RefusalLog:
    def __init__(self, logger: logging.Logger, what: str, *, interval: float = LOG_INTERVAL_S):
        self.log = logger
        self.what = what
        self.interval = interval
        self._seen: dict[tuple[str, str], list] = {}  # (host, reason) -> [logged at (monotonic), refused since]

    def refused(self, host: str, reason: str, detail: str = "", *args: object) -> bool:
        """Note one refusal; True if it was logged. `detail % args` is formatted only when it is logged."""
        now = time.monotonic()
        key = (host, reason)
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is None and len(self._seen) >= MAX_SOURCES:
            self._seen.clear()
        since = entry[1] if entry is not None else 0
        self._seen[key] = [now, 0]
        self.log.warning(
            "%s from %s refused (%s)%s%s; further refusals of it are counted, logged again after %.0f s",
            self.what,
            host,
            reason,
            f": {detail % args if args else detail}" if detail else "",
            f", {since} more since the last line" if since else "",
            self.interval,
        )
        return True
