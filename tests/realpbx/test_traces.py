"""The committed golden traces (tests/fixtures/ari-traces) still say what the real Asterisk does: a few scenarios
are recorded again with scripts/record-ari-traces' code and compared with the files, loosely where the README
says a re-recording varies (times, where an event falls among the requests, the order of events emitted
together)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sim.real_asterisk import traces
from tests.realpbx.test_harness import needs_cli

pytestmark = pytest.mark.realpbx


def requests(doc: dict) -> list[tuple]:
    return [
        (
            s["method"],
            s["path"],
            json.dumps(s["query"], sort_keys=True),
            s["status"],
            s["response"].get("message") if isinstance(s["response"], dict) else None,
        )
        for s in doc["steps"]
        if s["dir"] == "rest"
    ]


def events(doc: dict) -> Counter:
    return Counter(
        (s["event"]["type"], (s["event"].get("channel") or s["event"].get("peer") or {}).get("id"))
        for s in doc["steps"]
        if s["dir"] == "event"
    )


@pytest.mark.parametrize("name", ["01-inbound", "04-errors"])
async def test_a_new_recording_matches_the_fixture(real_asterisk, tmp_path: Path, name: str):
    needs_cli(real_asterisk)  # the recorder starts Asterisks of its own with the harness
    fresh = await traces.record(name, tmp_path, log=lambda *_: None)
    kept = json.loads((traces.OUT / f"{name}.json").read_text())
    assert fresh["asterisk_version"] == kept["asterisk_version"]
    assert requests(fresh) == requests(kept)
    assert events(fresh) == events(kept)
    assert fresh["placeholders"] == kept["placeholders"] and fresh["dialplan"] == kept["dialplan"]
