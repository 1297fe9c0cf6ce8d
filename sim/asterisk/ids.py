"""Identifiers and clocks the way Asterisk prints them: `epoch.seq` unique ids, Local channel sequence
numbers, `2026-11-23T22:06:18.021+0000` timestamps and the MAC-style entity id."""

from __future__ import annotations

import itertools
import random
import time


def ast_time(t: float | None = None) -> str:
    """Wall-clock time in the format of every ARI `timestamp` / `creationtime` (UTC, millisecond, +0000)."""
    t = time.time() if t is None else t
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}+0000"


def random_entity_id(rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


class IdSource:
    """Asterisk's per-process counters: channel unique ids, Local pair numbers, fake tech_pvt addresses."""

    def __init__(self, seed: int | None = None):
        self._epoch = int(time.time())
        self._seq = itertools.count()
        self._tech: dict[str, itertools.count] = {}
        self._rng = random.Random(seed)

    def unique_id(self) -> str:
        return f"{self._epoch}.{next(self._seq)}"

    def tech_seq(self, tech: str) -> str:
        """The `-00000000` suffix of channel names: one counter per technology (Local pairs count once)."""
        counter = self._tech.setdefault(tech, itertools.count())
        return f"{next(counter):08x}"

    def pointer(self) -> str:
        """A memory-address look-alike, as chan_rtp puts in `UnicastRTP/host:port-0x7f521000f490` names."""
        return f"0x7f{self._rng.getrandbits(40):010x}"

    def token(self, nbytes: int = 16) -> str:
        return "%0*x" % (nbytes * 2, self._rng.getrandbits(nbytes * 8))
