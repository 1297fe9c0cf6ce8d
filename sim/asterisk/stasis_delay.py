"""How long an ARI-made channel takes to reach Stasis after Asterisk answered the request that made it.

Asterisk 22 answers POST /channels, /channels/create and /channels/externalMedia from the HTTP thread and
only then enters the new channel into Stasis from a detached thread of its own (res/ari/resource_channels.c:
ari_originate_dial() for originate and externalMedia, ari_channel_thread() for /channels/create). Until that
thread has run stasis_app_exec() the channel has no Stasis control, and operations that need one are refused
(bridges addChannel: 422 "Channel not in Stasis application"; /channels/{id}/...: 409).

The delay runs from the moment the handler returns (the response is about to be written) to StasisStart. The
recorded traces (an idle PBX) show StasisStart -0.1..1.3 ms after the client had read the response, but there
the response and the Stasis entry run on parallel threads, while here they share one event loop. The default
is calibrated on outcome instead: with a controller that bridges the media channel as soon as externalMedia
answers, 0..0.5 ms makes about 1 call in 3-10 fail sequentially and about half in a burst of 40 (the real
22.10.1: 1 in 10-20, and 10-14 of 40 in a 2 s ramp). Each channel draws its own delay, uniformly from
[MIN, MAX] ms, from a seeded RNG so a run can be repeated; tests force a long one to hold a channel before
its StasisStart.
"""

from __future__ import annotations

import random

ENV = "SIM_ASTERISK_STASIS_DELAY_MS"
DEFAULT_MS = (0.0, 0.5)


class StasisDelay:
    def __init__(self, min_ms: float = DEFAULT_MS[0], max_ms: float = DEFAULT_MS[1], seed: int | None = None):
        if min_ms < 0 or max_ms < min_ms:
            raise ValueError(f"stasis delay needs 0 <= MIN <= MAX, got {min_ms}:{max_ms}")
        self.min_ms, self.max_ms = float(min_ms), float(max_ms)
        self._rng = random.Random(seed)

    @classmethod
    def parse(cls, text: str, seed: int | None = None) -> StasisDelay:
        """'MIN:MAX' or one number (a fixed delay), in milliseconds."""
        low, sep, high = text.strip().partition(":")
        try:
            min_ms = float(low)
            max_ms = float(high) if sep else min_ms
        except ValueError:
            raise ValueError(f"stasis delay must be MIN:MAX in ms, got {text!r}") from None
        return cls(min_ms, max_ms, seed)

    def draw_s(self) -> float:
        """The next channel's delay, in seconds."""
        return self._rng.uniform(self.min_ms, self.max_ms) / 1000.0

    def __repr__(self) -> str:
        return f"StasisDelay({self.min_ms:g}:{self.max_ms:g} ms)"
