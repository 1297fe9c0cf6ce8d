"""WebSocket media against a real Asterisk 22.10.1 (`pytest -m realpbx`): voiced audio both ways, barge-in,
hangup, nothing left behind. Needs an unpacked Asterisk (issue 14's `dpkg -x` prefix) in VA_ASTERISK_PREFIX
until the project's harness (sim/real_asterisk.py) provides one; skipped, with that reason, otherwise."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = os.environ.get("VA_ASTERISK_PREFIX", "")

pytestmark = [
    pytest.mark.realpbx,
    pytest.mark.skipif(not PREFIX or not (Path(PREFIX) / "usr/sbin/asterisk").exists(),
                       reason="no real Asterisk: set VA_ASTERISK_PREFIX to an unpacked asterisk 22.10.1 prefix"),
    pytest.mark.timeout(240),
]


async def test_websocket_calls_on_a_real_asterisk(redis_url):
    sys.path.insert(0, str(ROOT / "bench"))
    import websocket_realpbx as bench

    result = await bench.run(Path(PREFIX), ["websocket_ulaw_8k", "websocket_pcm16_24k"], 1, redis_url)
    assert result.left_channels == 0 and result.left_bridges == 0
    assert not any(result.error_lines.values()), result.error_lines
    for profile, (call,) in result.results.items():
        # the agent's greeting reached the caller (Asterisk's own recording of what the caller heard)
        assert call["greeting_onset_heard_ms"] is not None and call["greeting_onset_heard_ms"] < 1000, call
        # the caller's speech (played by Asterisk) reached the model: two user turns ended, two replies
        assert len(call["turn_ms"].split(",")) == 2, call
        # barge-in: the long answer stopped soon after the caller started talking, truncated to what was heard
        assert call["truncations"] == "1" and call["interrupt_to_silence_ms"] < 400, call
        assert abs(call["truncated_at_ms"] - call["answer_heard_ms"]) <= 40, call
        assert int(call["media_queue_max"]) <= 2, call
        assert call["end"] == "caller_hangup", call  # Asterisk closed the media WebSocket with 1000
