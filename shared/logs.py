"""Structured logging: console or JSON lines, the role and call id on every line, secrets redacted.

The call id travels in a context variable: set it once when a call's task starts (`bind_call`) and every
line that task and its children log carries it, with no extra argument at each call site.

What is logged often comes from outside (a caller's name, a URL, an error text from a peer), so the formatters
escape control characters (no value can start a line of its own or colour the console) and cut values that
are absurdly long. `LogThrottle` keeps a line that an outsider can trigger at will to one per interval.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from shared.masking import redact

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="")

_json = msgspec.json.Encoder()


MAX_ARG_CHARS = 1000  # one logged value (a caller name, a peer's error text)
MAX_MESSAGE_CHARS = 8000  # a whole message, whatever made it long

# C0 controls (a newline would start a forged line), DEL, C1 controls (0x9b is a one-byte ANSI CSI) and the
# Unicode line and paragraph separators, written as Python escapes. A traceback's own newlines are kept, apart.
_ESCAPES = {
    code: {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code, f"\\x{code:02x}")
    for code in (*range(0x20), *range(0x7F, 0xA0))
}
_ESCAPES |= {0x2028: "\\u2028", 0x2029: "\\u2029"}
_NO_NEWLINE_ESCAPE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}


def escape_controls(text: str) -> str:
    """`text` on one line, with nothing a terminal would act on."""
    return text.translate(_ESCAPES)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…[{len(text) - limit} more chars]"


def _message(record: logging.LogRecord) -> str:
    """The record's message with long string arguments cut, on one line, without control characters."""
    args = record.args
    if isinstance(args, tuple) and any(isinstance(a, str) and len(a) > MAX_ARG_CHARS for a in args):
        text = str(record.msg) % tuple(_shorten(a, MAX_ARG_CHARS) if isinstance(a, str) else a for a in args)
    else:
        text = record.getMessage()
    return escape_controls(_shorten(text, MAX_MESSAGE_CHARS))


def _traceback_lines(text: str) -> str:
    """A traceback with every line indented: the exception's text (which may come from outside) cannot make a
    line that looks like a record of its own."""
    return "\n".join("    " + line for line in text.translate(_NO_NEWLINE_ESCAPE).split("\n"))


def bind_call(call_id: str) -> contextvars.Token[str]:
    return call_id_var.set(call_id)


@contextmanager
def call_context(call_id: str) -> Iterator[None]:
    """The call id on every line logged inside the block, in a task that serves many calls (an inbox reader);
    tasks created inside inherit it."""
    token = call_id_var.set(call_id)
    try:
        yield
    finally:
        call_id_var.reset(token)


class CallLogger(logging.LoggerAdapter):
    """A logger for one call's object: its lines carry the call id whichever task logs them (the worker-wide
    playout clock, a transport's reader), where the context variable is not the call's. Made once per call; a
    line below the level costs what it costs on a plain logger (the adapter checks the level first)."""

    def __init__(self, logger: logging.Logger, call_id: str):
        super().__init__(logger, {"call_id": call_id})


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
        line += _message(record)
        if record.exc_info:
            line += "\n" + _traceback_lines(self.formatException(record.exc_info))
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        call_id, role = _call_and_role(record)
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "role": role,
            "logger": record.name,
            "msg": redact(_message(record)),
        }
        if call_id:
            entry["call_id"] = call_id
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info).translate(_NO_NEWLINE_ESCAPE))
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


class LogThrottle:
    """At most one line per key per `interval_s`, for what an outsider can trigger at will (a refused
    connection, a malformed request). The lines held back are counted and the next line says how many.
    At most `max_keys` keys are remembered (the oldest forgotten first), so the keys may come from outside."""

    def __init__(self, interval_s: float = 60.0, max_keys: int = 256):
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (last logged, held back since)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object) -> bool:
        """Log unless `key` was logged within the interval; True when the line was written."""
        now = time.monotonic()
        last, held = self._keys.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._keys[key] = (last, held + 1)
            return False
        if held:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, held, now - last)
        logger.log(level, msg, *args)
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return True
