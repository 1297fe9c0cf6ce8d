"""A JSONL log of every frame in both directions: `{"t", "session", "dir": "in"|"out", "event"|"raw"}`.

`t` is seconds on the emulator's clock since the emulator was made. Frames that parsed as JSON are
embedded as they travelled (`event`), so a validator can re-check them; others are kept as text (`raw`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO


class WireLog:
    def __init__(self, path: str | Path | None, clock: Callable[[], float]):
        self._file: IO[str] | None = open(path, "a", encoding="utf-8", buffering=1 << 16) if path else None
        self._clock = clock
        self._t0 = clock()

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, session: str, direction: str, text: str, parsed: bool) -> None:
        """`text` is the frame; `parsed` says whether it is valid JSON (then it is embedded as is)."""
        if self._file is None:
            return
        head = f'{{"t":{self._clock() - self._t0:.6f},"session":"{session}","dir":"{direction}",'
        body = f'"event":{text}' if parsed else f'"raw":{json.dumps(text)}'
        self._file.write(head + body + "}\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
