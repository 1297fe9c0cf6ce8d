"""A JSONL log of every frame in both directions, with times: `{"t", "session", "dir", "event"|"raw"}`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO


class WireLog:
    def __init__(self, path: str | Path | None):
        self._file: IO[str] | None = open(path, "a", encoding="utf-8", buffering=1 << 16) if path else None
        self._t0 = time.monotonic()

    def write(self, session: str, direction: str, text: str) -> None:
        if self._file is None:
            return
        entry: dict = {"t": round(time.monotonic() - self._t0, 6), "session": session, "dir": direction}
        try:
            entry["event"] = json.loads(text)
        except ValueError:
            entry["raw"] = text
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
