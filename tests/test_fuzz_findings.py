"""Regression tests for what the fuzz suite (tests/fuzz) found: each input is the minimal one hypothesis
shrank a crash to. The fixed ones pass; the ones routed to another area are strict xfails that name the owner
and turn into failures (to be unmarked) once fixed."""

from __future__ import annotations

import pytest

from media_worker.transport import websocket_codec as wc

DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than any recursive parser's stack


def test_a_deeply_nested_websocket_control_message_is_a_control_error():
    with pytest.raises(wc.ControlError, match="nested too deeply"):
        wc.parse_event(b'{"event":"STATUS","x":' + DEEP + b"}")
