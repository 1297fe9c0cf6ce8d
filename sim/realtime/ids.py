"""Realistic ids (`event_`, `item_`, `resp_`, `sess_`, `conv_`, `call_` + 21 base62) from a seeded RNG.

Each session has its own generator, seeded from the emulator's seed and the session's connect index, so a
session's ids do not depend on how its events interleave with other sessions'.
"""

from __future__ import annotations

import random
import string

_ALPHABET = string.ascii_letters + string.digits


class Ids:
    def __init__(self, seed: int | str):
        self._rng = random.Random(seed)

    def new(self, prefix: str) -> str:
        return prefix + "_" + "".join(self._rng.choices(_ALPHABET, k=21))
