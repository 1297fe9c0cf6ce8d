"""What every fuzz target shares: the tier's example counts, strategies for JSON and for mutating valid
inputs, a per-example time bound, and the bookkeeping of one surface (inputs run, tasks, memory).

The tier is chosen once per session by `conftest.py` (VA_FUZZ=1, or `pytest -m fuzz`): the fuzz tier runs
FUZZ_EXAMPLES inputs per surface, the normal run CI_EXAMPLES. Every run is seeded (`derandomize`), so a
failure found once is found again, and hypothesis shrinks it to a minimal input before reporting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

FUZZ = os.environ.get("VA_FUZZ") == "1"
FUZZ_EXAMPLES = 10_000
CI_EXAMPLES = 300
# Memory is "flat" when what the product's code allocated after the warm-up and still holds at the end stays
# under PRODUCT_SLACK (tracemalloc, by the allocating line; hypothesis's own bookkeeping grows with the inputs,
# so the process's RSS is reported but not judged).
WARMUP = 1_000
PRODUCT_SLACK = 256 * 1024
PRODUCT = tuple(f"/{name}/" for name in ("controller", "media_worker", "tool_worker", "shared"))
EXAMPLE_TIMEOUT_S = 5.0  # one input: far above what any handles in (milliseconds), far below a hang

# Inputs run per surface in this session, printed at the end of the run (conftest.pytest_terminal_summary).
COUNTS: Counter[str] = Counter()
# surface -> (RSS after the warm-up, RSS at the end, bytes the product allocated since and still holds)
MEMORY: dict[str, tuple[int, int, int]] = {}


def examples(share: float = 1.0) -> int:
    """The example count of this tier, or a share of it (for a target that costs a socket per input)."""
    return max(int((FUZZ_EXAMPLES if FUZZ else CI_EXAMPLES) * share), 10)


class Hang(Exception):
    """An input took longer than EXAMPLE_TIMEOUT_S."""


# A loaded machine (CI beside other jobs) stretches the wall-clock time of an input many times over, but not
# the CPU time it takes: an input that spins is caught by its CPU time; one that waits (a blocked read) by the
# wall clock, with room for the load.
WALL_FACTOR = 10


@contextlib.contextmanager
def time_bound(seconds: float = EXAMPLE_TIMEOUT_S, *, waits: bool = False) -> Iterator[None]:
    """Fail one synchronous input that runs too long: more than `seconds` of the process's CPU time, or (one that
    `waits` on I/O) of wall-clock time; WALL_FACTOR times `seconds` of wall-clock time in any case. POSIX
    interval timers, so the main thread only."""

    def expired(signum: int, frame: Any) -> None:
        what = "CPU time" if signum == signal.SIGVTALRM else "time"
        raise Hang(
            f"no result within {seconds if what == 'CPU time' or waits else seconds * WALL_FACTOR:g} s of {what}"
        )

    previous = signal.signal(signal.SIGALRM, expired), signal.signal(signal.SIGVTALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds if waits else seconds * WALL_FACTOR)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGVTALRM, previous[1])


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _product_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(
        stat.size
        for stat in snapshot.statistics("filename")
        if any(part in stat.traceback[0].filename for part in PRODUCT) and "/tests/" not in stat.traceback[0].filename
    )


class Surface:
    """One surface's run: counts the inputs; in the fuzz tier, traces allocations from the end of the
    warm-up and checks at the end that the product's code holds no more than PRODUCT_SLACK of them."""

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self._rss: int | None = None

    def example(self) -> None:
        self.count += 1
        COUNTS[self.name] += 1
        if self.count == WARMUP and FUZZ:
            gc.collect()
            self._rss = rss()
            tracemalloc.start()

    def finish(self) -> None:
        if self._rss is None:
            return  # too few inputs to tell a leak from a warm-up
        gc.collect()
        held = _product_bytes(tracemalloc.take_snapshot())
        tracemalloc.stop()
        MEMORY[self.name] = (self._rss, rss(), held)
        assert held < PRODUCT_SLACK, (
            f"{self.name}: the product holds {held / 1024:.0f} KiB more after {self.count} inputs"
        )


def leftover_tasks(loop: asyncio.AbstractEventLoop, before: set[asyncio.Task]) -> set[asyncio.Task]:
    """Tasks of `loop` still pending that were not there before the input."""
    return {t for t in asyncio.all_tasks(loop) if not t.done()} - before


# --- strategies ---------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
# Big and odd numbers that JSON can carry and Python cannot always convert (float(10**400) overflows).
odd_numbers = st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**400, 1e308, -0.0, 5e-324])
json_values = st.recursive(
    scalars | odd_numbers,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def deep(depth: int, kind: str = "list") -> Any:
    """A value nested `depth` levels deep (parsers that recurse run out of stack on it)."""
    value: Any = 0
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def mutated(draw: st.DrawFn, value: Any, keys: list[str] | None = None) -> Any:
    """`value` (a JSON tree) with a few changes at random places: a value replaced (by another type, an odd
    number, a deep nest), a key removed or added."""
    for _ in range(draw(st.integers(1, 3))):
        value = _mutate_once(draw, value, keys or [])
    return value


def _mutate_once(draw: st.DrawFn, value: Any, keys: list[str]) -> Any:
    containers = list(_containers(value, ()))
    path = draw(st.sampled_from(containers)) if containers else ()
    target = _get(value, path)
    choice = draw(st.sampled_from(["replace", "delete", "add", "self"]))
    if choice == "self" or not isinstance(target, (dict, list)) or not target:
        return _set(value, path, draw(json_values | odd_numbers | st.just(deep(200))))
    if isinstance(target, dict):
        key = draw(st.sampled_from(sorted(target)))
        new = dict(target)
        if choice == "delete":
            del new[key]
        elif choice == "add":
            new[draw(st.sampled_from(keys) if keys else st.text(max_size=8))] = draw(json_values)
        else:
            new[key] = draw(json_values | odd_numbers)
        return _set(value, path, new)
    index = draw(st.integers(0, len(target) - 1))
    items = list(target)
    if choice == "delete":
        del items[index]
    elif choice == "add":
        items.insert(index, draw(json_values))
    else:
        items[index] = draw(json_values | odd_numbers)
    return _set(value, path, items)


def _containers(value: Any, path: tuple) -> Iterator[tuple]:
    if isinstance(value, dict):
        yield path
        for k, v in value.items():
            yield from _containers(v, (*path, k))
    elif isinstance(value, list):
        yield path
        for i, v in enumerate(value):
            yield from _containers(v, (*path, i))


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _set(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _set(value[head], rest, new)}
    items = list(value)
    items[head] = _set(items[head], rest, new)
    return items


@st.composite
def garbled(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with bytes flipped, inserted, deleted, or cut short (a near-valid wire message)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(buf))) if buf else 0
        if op == "flip" and pos < len(buf):
            buf[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and pos < len(buf):
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


def routed(exc: BaseException, known: dict[tuple[str, str, str], str]) -> bool:
    """Whether `exc` is a finding already routed to another area's owner: raised (as that exception type) with
    one of the `known` (file name, function) places as the innermost frame of product code. Each has a strict
    xfail in tests/test_fuzz_findings.py. Such an input is counted and the run goes on; any other exception
    fails the run."""
    place = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if any(part in filename for part in PRODUCT):
            place = (filename.rsplit("/", 1)[-1], tb.tb_frame.f_code.co_name, type(exc).__name__)
        tb = tb.tb_next
    if place in known:
        ROUTED[known[place]] += 1
        return True
    return False


ROUTED: Counter[str] = Counter()  # routed finding -> inputs that hit it in this session


@st.composite
def odd_numbered(draw: st.DrawFn, value: Any) -> Any:
    """`value` with every number in it replaced by an odd one (huge, negative, float for int)."""
    if isinstance(value, dict):
        return {k: draw(odd_numbered(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [draw(odd_numbered(v)) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return draw(odd_numbers)
    return value
