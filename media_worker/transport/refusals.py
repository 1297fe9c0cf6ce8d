"""Refused media sources, logged at most once per source and reason per interval.

A port scan or a flood of foreign RTP must not become a flood of log lines: the first refusal of a source is
logged at WARNING, the next ones only counted (the caller's Prometheus counter, and in the next line), through
the shared `LogThrottle`.
"""

from __future__ import annotations

import logging

from shared.logs import LogThrottle

LOG_INTERVAL_S = 60.0
# Sources remembered at once; the oldest is forgotten first (a spoofed-address flood cannot grow the table).
MAX_SOURCES = 1024


class RefusalLog:
    def __init__(self, logger: logging.Logger, what: str, *, interval: float = LOG_INTERVAL_S):
        self.log = logger
        self.what = what
        self._throttle = LogThrottle(interval, MAX_SOURCES)

    def refused(self, host: str, reason: str, detail: str = "", *args: object) -> bool:
        """Note one refusal; True if it was logged. `detail % args` is formatted only when it is logged (without
        args, `detail` is text, never a format)."""
        if args:
            return self._throttle.log(
                self.log, logging.WARNING, f"{host} {reason}", "%s from %s refused (%s): " + detail,
                self.what, host, reason, *args,
            )  # fmt: skip
        return self._throttle.log(
            self.log, logging.WARNING, f"{host} {reason}", "%s from %s refused (%s)%s%s",
            self.what, host, reason, ": " if detail else "", detail,
        )  # fmt: skip
