"""Realistic ids (`event_`, `item_`, `resp_`, `sess_`, `conv_`, `call_` + 21 base62), from a seeded RNG."""

from __future__ import annotations

import random
import string

_ALPHABET = string.ascii_letters + string.digits


class Ids:
    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def new(self, prefix: str) -> str:
        return prefix + "_" + "".join(self._rng.choices(_ALPHABET, k=21))
