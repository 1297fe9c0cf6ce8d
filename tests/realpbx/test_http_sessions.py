"""Asterisk's HTTP session limit on the real Asterisk (issue 19): beyond http.conf's `sessionlimit` it closes new
connections without answering and logs 'HTTP session count exceeded' on its side only; ARI requests then failed
as a bare 'ServerDisconnectedError'. Now the error and a controller warning name the limit."""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import urlsplit

import pytest

from controller.ari.errors import AriUnavailable
from controller.ari.rest import AriRest
from sim.real_asterisk import RealAsterisk, RealAsteriskUnavailable


async def test_a_connection_beyond_the_session_limit_is_named_in_the_error_and_a_warning(
    real_asterisk: RealAsterisk, caplog
):
    try:
        http_conf = (real_asterisk.own_run_dir / "etc" / "http.conf").read_text()
    except RealAsteriskUnavailable:
        pytest.skip("an Asterisk the harness did not start: its http.conf is not readable here")
    limit = int(re.search(r"^sessionlimit\s*=\s*(\d+)", http_conf, re.M).group(1))  # the shipped file's
    url = urlsplit(real_asterisk.ari_url)
    # A few more than the limit: sessions of earlier requests (the fixtures') may still be counted for a moment,
    # and the connections refused meanwhile are made up for by the surplus. Then until one is closed unanswered.
    idle = [await asyncio.open_connection(url.hostname, url.port) for _ in range(limit + 10)]
    for _ in range(50):
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            refused = await asyncio.wait_for(reader.read(1), 0.2) == b""
        except TimeoutError:
            refused = False
        writer.close()
        if refused:
            break
        idle.append((reader, writer))  # accepted (fewer sessions were counted than opened): kept open too
    else:
        pytest.fail(f"Asterisk accepted {len(idle)} idle connections: its sessionlimit is not {limit}")
    caplog.set_level(logging.WARNING, logger="ari")
    try:
        async with AriRest(real_asterisk.ari_url, real_asterisk.user, real_asterisk.password, timeout=5) as rest:
            with pytest.raises(AriUnavailable) as refused:
                await rest.ping()
            assert "Asterisk closed the connection without answering (http.conf sessionlimit reached" in str(
                refused.value
            )
            (warning,) = [r.getMessage() for r in caplog.records if "closed 1 connection(s)" in r.getMessage()]
            assert "beyond http.conf's sessionlimit" in warning and "opens up to 64" in warning
    finally:
        for _, writer in idle:
            writer.close()
    async with AriRest(real_asterisk.ari_url, real_asterisk.user, real_asterisk.password, timeout=5) as rest:
        for _ in range(50):  # Asterisk ends a session's thread once it sees the close
            try:
                await rest.ping()
                break
            except AriUnavailable:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("ARI still refused connections after the idle ones closed")
    log = (real_asterisk.own_run_dir / "log" / "messages.log").read_text()
    assert f"HTTP session count exceeded {limit} sessions" in log  # Asterisk's own side of it
