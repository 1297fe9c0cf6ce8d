"""The real-PBX suite's fixtures: one real Asterisk for the whole session (Debian's package, installed into the
cache and started by sim.real_asterisk, or the user's own with --ari-url), skipped loudly when none can be
had, and a check that every test leaves no channel or bridge behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sim.real_asterisk import RealAsterisk, RealAsteriskUnavailable, connect, start

LEFTOVER_TIMEOUT = 5.0  # hangups and bridge destruction are asynchronous in Asterisk
_unavailable: dict[str, object] = {"cause": None, "skipped": set()}


@pytest.fixture(scope="session")
def real_asterisk(request, tmp_path_factory) -> RealAsterisk:
    opt = request.config.getoption
    try:
        if opt("--ari-url"):
            ast = connect(opt("--ari-url"), opt("--ari-user"), opt("--ari-password"))
        else:
            ast = start(tmp_path_factory.mktemp("real-asterisk") / "ast")
    except RealAsteriskUnavailable as exc:
        _unavailable["cause"] = str(exc)
        pytest.skip(f"real Asterisk unavailable: {exc}")
    yield ast
    ast.stop()


@pytest.hookimpl(tryfirst=True)  # before -m selects: every test in this folder is a real-PBX test, and slow
def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.realpbx)
            item.add_marker(pytest.mark.slow)


def _live(ast: RealAsterisk) -> dict[str, dict[str, str]]:
    found = {}
    for kind in ("channels", "bridges"):
        status, items = ast.ari("GET", f"/{kind}")
        assert status == 200, f"GET /ari/{kind} answered {status}"
        found[kind] = {i["id"]: i.get("name") or i.get("bridge_type", "") for i in items}
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """After a realpbx test: no channel or bridge that was not there before it (they are removed, then the test
    fails, so the next test starts clean)."""
    if request.node.get_closest_marker("realpbx") is None:
        yield
        return
    ast: RealAsterisk = request.getfixturevalue("real_asterisk")
    before = _live(ast)
    yield
    deadline = time.monotonic() + LEFTOVER_TIMEOUT
    while True:
        left = {kind: {i: n for i, n in items.items() if i not in before[kind]} for kind, items in _live(ast).items()}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for channel in left["channels"]:
        ast.ari("DELETE", f"/channels/{channel}")
    for bridge in left["bridges"]:
        ast.ari("DELETE", f"/bridges/{bridge}")
    assert not any(left.values()), f"left in Asterisk after the test: {left}"


def pytest_runtest_logreport(report):
    if report.skipped and _unavailable["cause"] and "realpbx" in report.keywords:
        _unavailable["skipped"].add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    skipped, cause = _unavailable["skipped"], _unavailable["cause"]
    if not skipped:
        return
    tr = terminalreporter
    first, *rest = str(cause).splitlines() or [""]
    tr.write_sep(
        "!", f"REAL ASTERISK UNAVAILABLE — {len(skipped)} real-PBX tests SKIPPED: {first}", red=True, bold=True
    )
    for line in rest:
        tr.write_line(f"  {line}", red=True, bold=True)
    tr.write_line(
        "  These tests did not pass: they did not run. Fix the cause (scripts/real-asterisk install), "
        "or point the suite at a running Asterisk with --ari-url.",
        red=True,
        bold=True,
    )
    tr.write_sep("!", red=True, bold=True)
