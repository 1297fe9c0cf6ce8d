"""Structured logging: console or JSON lines, the role and call id on every line, secrets redacted.

The call id travels in a context variable: set it once when a call's task starts (`bind_call`) and every
line that task and its children log carries it, with no extra argument at each call site.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import msgspec

from shared.masking import redact

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="")

_json = msgspec.json.Encoder()


def bind_call(call_id: str) -> contextvars.Token[str]:
    return call_id_var.set(call_id)


class _ContextFilter(logging.Filter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        record.call_id = getattr(record, "call_id", "") or call_id_var.get()
        return True


def _call_and_role(record: logging.LogRecord) -> tuple[str, str]:
    """The fields _ContextFilter adds to every record (absent on a record that did not pass through it)."""
    return getattr(record, "call_id", ""), getattr(record, "role", "")


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        call_id, role = _call_and_role(record)
        call = f" [call={call_id}]" if call_id else ""
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {role} {record.name}{call}: "
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        call_id, role = _call_and_role(record)
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "role": role,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if call_id:
            entry["call_id"] = call_id
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return _json.encode(entry).decode()


def setup_logging(role: str, level: str = "info", fmt: str = "console") -> None:
    """Configure the root logger once per process; output goes to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(_ContextFilter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter about every connection attempt would drown the one clear line we log ourselves.
    for noisy in ("aiohttp.access", "websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
