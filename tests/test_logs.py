"""Log lines: the call id rides along with the task, secrets are masked, JSON lines parse."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from shared import logs
import pytest

from shared.masking import Redactor, mask_tree, mask_url, redact, secret_values


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(fmt: str) -> io.StringIO:
    logs.setup_logging("media-worker", "debug", fmt)
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    return stream


def test_call_id_is_on_every_line_of_a_calls_task_and_its_children():
    stream = capture("json")
    log = logging.getLogger("call")

    async def child():
        log.info("child line")

    async def call(call_id: str):
        logs.bind_call(call_id)
        log.info("first line")
        await asyncio.create_task(child())

    async def main():
        await asyncio.gather(call("c-1"), call("c-2"))
        log.info("not about a call")

    asyncio.run(main())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_msg = {}
    for line in lines:
        by_msg.setdefault(line["msg"], []).append(line.get("call_id"))
    assert sorted(by_msg["first line"]) == ["c-1", "c-2"]
    assert sorted(by_msg["child line"]) == ["c-1", "c-2"]
    assert by_msg["not about a call"] == [None]
    assert {line["role"] for line in lines} == {"media-worker"}


def test_console_lines_mask_registered_secrets_and_credential_shapes():
    stream = capture("console")
    redact.register({"hunter2-secret"})
    log = logging.getLogger("x")
    log.info("password is hunter2-secret")
    log.info("key sk-proj-ABCDEFGH12345678 header Bearer abcdefgh.12345678")
    log.info("url redis://:pw123456@host:6379/0")
    log.info("events of app=asterisk-ai-voice-agent")  # "sk-ai-voice-agent" inside a word is no key
    try:
        raise ValueError("boom with hunter2-secret")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert "hunter2-secret" not in text and "ABCDEFGH12345678" not in text and "abcdefgh.12345678" not in text
    assert "pw123456" not in text
    assert "password is ***" in text
    assert "Bearer ***" in text
    assert "redis://:***@host:6379/0" in text
    assert "app=asterisk-ai-voice-agent" in text
    assert "ValueError: boom with ***" in text


def test_redactor_masks_the_longest_secret_first():
    r = Redactor()
    r.register({"abcd", "abcdefgh"})
    assert r("x abcdefgh y abcd") == "x *** y ***"
    assert mask_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_mask_url_hides_secret_query_parameters_whatever_their_case():
    assert mask_url("https://x/v1?api_key=sk-123") == "https://x/v1?api_key=***"
    assert (
        mask_url("wss://h/v1/realtime?model=m&API_KEY=a1&X-Api-Key=a2&access_token=a3&sig=a4&monkey=banana#f")
        == "wss://h/v1/realtime?model=m&API_KEY=***&X-Api-Key=***&access_token=***&sig=***&monkey=banana#f"
    )
    assert mask_url("redis://:pw@h:1/0?password=p2&db=0") == "redis://:***@h:1/0?password=***&db=0"
    assert mask_url("https://x/v1?model=gpt") == "https://x/v1?model=gpt"
    assert mask_url("http://[::1/?token=abcd") == "http://[::1/?token=***"  # unparsable: masked as text
    masked = mask_tree({"providers": {"openai_realtime": {"base_url": "wss://x/v1?key=sk-123"}}})
    assert masked["providers"]["openai_realtime"]["base_url"] == "wss://x/v1?key=***"
    assert secret_values({"base_url": "wss://u:pw12@x/v1?token=tok-5678&model=m"}) == {"pw12", "tok-5678"}


def test_log_lines_mask_secrets_in_a_urls_query_string():
    for fmt in ("console", "json"):
        stream = capture(fmt)
        logging.getLogger("realtime").warning("cannot connect to %s: 401", "https://x/v1?model=m&api_key=sk-123")
        logging.getLogger("realtime").warning("redirected to wss://y/?Token=opaque-value;sig=s1 (again)")
        text = stream.getvalue()
        assert "sk-123" not in text and "opaque-value" not in text and "s1 " not in text, text
        assert "api_key=***" in text and "Token=***" in text and "sig=***" in text


def test_no_logged_value_can_start_a_line_or_colour_the_console():
    forged = "2026-01-01 00:00:00.000 INFO    controller auth: operator admin logged in"
    name = f"x\n{forged}\r\x1b[31m\x9b31m\u2028\x00"
    for fmt in ("console", "json"):
        stream = capture(fmt)
        log = logging.getLogger("stasis")
        log.info("call from %s", name)
        try:
            raise ValueError(f"bad name {name}")
        except ValueError:
            log.exception("failed for %s", name)
        text = stream.getvalue()
        lines = text.splitlines()
        assert not any(line.startswith("2026-01-01") for line in lines), text
        assert not any(c in text for c in "\r\x1b\x9b\u2028\x00"), text
        if fmt == "json":
            assert len(lines) == 2
            first = json.loads(lines[0])
            assert first["msg"] == "call from x\\n" + forged + "\\r\\x1b[31m\\x9b31m\\u2028\\x00"
        else:
            assert lines[0].endswith("call from x\\n" + forged + "\\r\\x1b[31m\\x9b31m\\u2028\\x00")
            assert all(line.startswith("    ") for line in lines[2:])  # the traceback, indented


def test_absurdly_long_values_are_cut():
    stream = capture("console")
    logging.getLogger("x").info("name %s, count %d", "n" * 50_000, 7)
    logging.getLogger("x").info("n" * 50_000)
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"{'n' * logs.MAX_ARG_CHARS}…[{50_000 - logs.MAX_ARG_CHARS} more chars], count 7")
    assert second.endswith(f"…[{50_000 - logs.MAX_MESSAGE_CHARS} more chars]")


def test_log_throttle_writes_one_line_per_key_per_interval_and_counts_the_rest(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    stream = capture("console")
    log = logging.getLogger("http")
    throttle = logs.LogThrottle(interval_s=60, max_keys=2)
    written = [throttle.log(log, logging.WARNING, "refused", "refused %s", peer) for peer in ("a", "b", "c")]
    assert written == [True, False, False]
    assert throttle.log(log, logging.WARNING, "bad", "bad request")  # another key: its own line
    now[0] += 61
    assert throttle.log(log, logging.WARNING, "refused", "refused %s", "d")
    text = stream.getvalue()
    assert "refused a" in text and "refused b" not in text and "bad request" in text
    assert "refused d (2 more like this in the last 61 s)" in text
    throttle.log(log, logging.WARNING, "other", "other")
    throttle.log(log, logging.WARNING, "more", "more")
    assert len(throttle._keys) == 2  # bounded: keys may come from outside
