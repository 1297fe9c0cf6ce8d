"""The fuzz tiers: `pytest -m fuzz` (or VA_FUZZ=1) runs 10,000 inputs per surface; the normal run a few
hundred. Seeded, no example database (a run is a function of the code alone)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from hypothesis import HealthCheck, settings

COMMON = {
    "derandomize": True,  # the seed is fixed: the same inputs on every run and every machine
    "database": None,
    "deadline": None,  # the time bound is ours (harness.time_bound, asyncio.timeout): a hard limit, not a flake
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    "print_blob": True,
}


def pytest_configure(config: pytest.Config) -> None:
    if (config.option.markexpr or "").strip() == "fuzz":
        os.environ["VA_FUZZ"] = "1"  # read by harness.FUZZ when the test modules are imported, after this
    from tests.fuzz.harness import CI_EXAMPLES, FUZZ, FUZZ_EXAMPLES

    settings.register_profile("ci", max_examples=CI_EXAMPLES, **COMMON)
    settings.register_profile("fuzz", max_examples=FUZZ_EXAMPLES, **COMMON)
    settings.load_profile("fuzz" if FUZZ else "ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from tests.fuzz.harness import FUZZ

    for item in items:
        if item.get_closest_marker("fuzz") is not None and FUZZ:
            item.add_marker(pytest.mark.timeout(1800))  # 10,000 inputs through a socket take minutes


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.fuzz.harness import COUNTS, MEMORY, ROUTED

    if not COUNTS:
        return
    terminalreporter.section("fuzz: inputs per surface")
    for name, count in sorted(COUNTS.items()):
        memory = MEMORY.get(name)
        grown = (
            f"; after the warm-up: RSS {memory[0] / 2**20:.0f} -> {memory[1] / 2**20:.0f} MiB,"
            f" product code holds {memory[2] / 1024:.1f} KiB more"
            if memory
            else ""
        )
        terminalreporter.write_line(f"{name}: {count} inputs{grown}")
    for finding, count in sorted(ROUTED.items()):
        terminalreporter.write_line(f"known, routed to its owner: {finding}: hit by {count} inputs")


@pytest.fixture(autouse=True)
def _no_log_records():
    """pytest keeps every log record of a test (with its arguments, allocated by the product's code) until the
    test ends: over 10,000 inputs that is what the memory check would see, and the report would be megabytes.
    The log calls still run; they just make no record."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture
def surface(request):
    """The bookkeeping of this test's surface (its name: the test's `surface` marker); memory checked at the end."""
    from tests.fuzz.harness import Surface

    run = Surface(request.node.get_closest_marker("surface").args[0])
    yield run
    run.finish()


@pytest.fixture
def loop():
    """An event loop of the test's own: each input runs to completion in it (run_until_complete)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
