"""Log lines: the call id rides along with the task, secrets are masked, JSON lines parse."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from shared import logs
import pytest

from shared.masking import Redactor, mask_url, redact


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
