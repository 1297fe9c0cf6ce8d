"""Call summary and transcript emails: pure functions from the call record and its log to an EmailMessage.

Everything that came from the call (names, numbers, what was said, tool arguments) is HTML-escaped. The
Message-ID is deterministic per email (`<{tool}.{call_id}[.{n}]@{domain}>`), so a resend after a crash is
recognisable as the same message by any mail client.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, parseaddr

from shared.config.schema import Config
from shared.messages import TIME_LIMIT

ROLE_LABELS = {"user": "Caller", "assistant": "Agent", "tool": "Action"}
_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def message_id(tool: str, call_id: str, from_address: str, n: int | None = None) -> str:
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "localhost"
    parts = [tool, _ID_SAFE.sub("-", call_id)] + ([str(n)] if n is not None else [])
    return f"<{'.'.join(parts)}@{domain}>"


def _int(call: dict, key: str) -> int | None:
    try:
        return int(call[key])
    except (KeyError, TypeError, ValueError):
        return None


def call_start_ms(call: dict) -> int | None:
    return _int(call, "admitted_ms") or _int(call, "created_ms")


def duration_s(call: dict) -> int | None:
    start, end = call_start_ms(call), _int(call, "ended_ms")
    if start is None or end is None or end < start:
        return None
    return round((end - start) / 1000)


def format_duration(seconds: int | None) -> str:
    if seconds is None:
        return "unknown length"
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def format_times(ms: int | None) -> str:
    """ISO local time (the worker's zone) and UTC, to the second."""
    if ms is None:
        return "unknown"
    local = datetime.fromtimestamp(ms / 1000).astimezone().replace(microsecond=0)
    utc = datetime.fromtimestamp(ms / 1000, timezone.utc).replace(microsecond=0)
    return f"{local.isoformat()} ({utc.strftime('%Y-%m-%dT%H:%M:%SZ')})"


def caller_label(call: dict) -> str:
    name, number = (call.get("caller_name") or "").strip(), (call.get("caller_number") or "").strip()
    if name and number and name != number:
        return f"{name} ({number})"
    return name or number or "unknown caller"


def _clock(t_ms: str | int | None) -> str:
    try:
        total = int(t_ms) // 1000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "--:--"
    return f"{total // 60:02d}:{total % 60:02d}"


def conversation(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("role") in ("user", "assistant") and (e.get("text") or "").strip()]


def actions(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("role") == "tool"]


def _action_text(entry: dict) -> str:
    name = entry.get("name") or "tool"
    args = entry.get("arguments") or ""
    args = "" if args in ("", "{}") else f" {args}"
    return f"{name}{args} -> {entry.get('output') or ''}".strip()


# End reasons a reader of the mail would not guess from their code.
_END_REASONS = {TIME_LIMIT: "the call reached its time limit (limits.max_call_duration_s); the agent said goodbye"}


def _facts(call: dict) -> list[tuple[str, str]]:
    return [
        ("Caller", caller_label(call)),
        ("Time", format_times(call_start_ms(call))),
        ("Duration", format_duration(duration_s(call))),
        ("Context", call.get("context") or "-"),
        ("End reason", _END_REASONS.get(call.get("end_reason") or "", call.get("end_reason") or "-")),
        ("Call id", call.get("id") or call.get("call_id") or "-"),
    ]


def _plain(title: str, call: dict, entries: list[dict], with_transcript: bool) -> str:
    lines = [title, ""] + [f"{k}: {v}" for k, v in _facts(call)]
    done = actions(entries)
    lines += ["", "Actions taken:"] + ([f"  [{_clock(e.get('t_ms'))}] {_action_text(e)}" for e in done] or ["  none"])
    if with_transcript:
        talk = conversation(entries)
        lines += ["", "Transcript:"] + (
            [f"  [{_clock(e.get('t_ms'))}] {ROLE_LABELS[e['role']]}: {e['text']}" for e in talk]
            or ["  (nothing was said)"]
        )
    return "\n".join(lines) + "\n"


def _html(title: str, call: dict, entries: list[dict], with_transcript: bool) -> str:
    esc = html.escape
    rows = "".join(f"<tr><th align='left'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _facts(call))
    done = actions(entries)
    acts = "".join(f"<li><code>{esc(_clock(e.get('t_ms')))}</code> {esc(_action_text(e))}</li>" for e in done)
    parts = [
        f"<html><body><h2>{esc(title)}</h2><table>{rows}</table>",
        f"<h3>Actions taken</h3><ul>{acts or '<li>none</li>'}</ul>",
    ]
    if with_transcript:
        talk = "".join(
            f"<tr><td><code>{esc(_clock(e.get('t_ms')))}</code></td><td><b>{esc(ROLE_LABELS[e['role']])}</b></td>"
            f"<td>{esc(e['text'])}</td></tr>"
            for e in conversation(entries)
        )
        parts.append(f"<h3>Transcript</h3><table>{talk or '<tr><td>(nothing was said)</td></tr>'}</table>")
    parts.append("</body></html>")
    return "".join(parts)


def _message(
    subject: str,
    from_address: str,
    to: list[str],
    msgid: str,
    plain: str,
    body_html: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = from_address
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = msgid
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the agent
    msg.set_content(plain)
    msg.add_alternative(body_html, subtype="html")
    return msg


def render_summary(call: dict, entries: list[dict], config: Config) -> EmailMessage:
    settings = config.tools.send_email_summary
    call_id = call.get("id") or call.get("call_id") or ""
    subject = f"Call summary: {caller_label(call)}, {format_duration(duration_s(call))}"
    title = f"Call summary - {config.company_name}"
    with_transcript = settings.include_transcript
    return _message(
        subject,
        config.email.from_address,
        list(settings.recipients),
        message_id("send_email_summary", call_id, config.email.from_address),
        _plain(title, call, entries, with_transcript),
        _html(title, call, entries, with_transcript),
    )


def render_transcript(
    call: dict,
    entries: list[dict],
    config: Config,
    to: str,
    n: int | None = None,
) -> EmailMessage:
    """The caller's copy. Bcc recipients are envelope-only (never in the headers)."""
    call_id = call.get("id") or call.get("call_id") or ""
    subject = f"Transcript of your call with {config.company_name}"
    title = f"Your call with {config.company_name}"
    return _message(
        subject,
        config.email.from_address,
        [to],
        message_id("request_transcript", call_id, config.email.from_address, n),
        _plain(title, call, entries, True),
        _html(title, call, entries, True),
    )


def header_addresses(value: str | None) -> list[str]:
    return [addr for _, addr in getaddresses([value or ""]) if addr]
