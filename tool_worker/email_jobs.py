"""The email jobs: the call summary to the team, the transcript to the caller's confirmed address.

Each run reads the call record and the whole call log from Redis, renders, sends over SMTP and records the
outcome as a `tool` entry in the call log and a field of the call record. Exactly-once across crashes:

- a per-message marker `{prefix}email:{message_id}` is set once SMTP accepted the message; a later attempt
  that finds it sends nothing and only records (a crash between SMTP's 250 and the marker can still repeat
  the message, with the same Message-ID, so a mail client shows it once);
- a short lock, refreshed while the send runs, keeps two attempts from sending at the same time (a worker
  declared dead while its job still ran);
- records are written once per outcome (a Lua script with its own guard key).

Transient SMTP failures raise, so RQ retries with backoff; the last failure is recorded by `on_job_failure`.
Permanent ones (refused recipient, authentication) are recorded at once and not retried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from email.message import EmailMessage
from typing import Any

import redis
from rq import get_current_job

from shared.config import load_config
from shared.config.schema import Config
from shared.email_address import validate_email
from shared.email_queue import transcripts_key
from shared.keys import Keys
from tool_worker import render, smtp
from tool_worker.smtp import SendFailed

log = logging.getLogger("tool_worker.email")

MARKER_TTL_S = 7 * 24 * 3600
LOCK_TTL_MS = 5000  # a dead sender's lock is gone this soon
LOCK_REFRESH_S = 1.0
LOCK_WAIT_S = LOCK_TTL_MS / 1000 + 1.0  # a dead sender's lock is gone by then; a live one's is not
LOCK_POLL_S = 0.25
LOG_MAXLEN = 5000  # as media_worker.call_log

SUMMARY = "send_email_summary"
TRANSCRIPT = "request_transcript"
LOG_NAMES = {SUMMARY: "email_summary", TRANSCRIPT: "email_transcript"}

_config: Config | None = None


def configure(config: Config) -> None:
    """The tool-worker service sets the config it runs with; job processes forked from it inherit it."""
    global _config
    _config = config


def current_config() -> Config:
    global _config
    if _config is None:
        _config = load_config().config  # AI_AGENT_CONFIG or config/ai-agent.yaml
    return _config


def _connection(config: Config) -> redis.Redis:
    job = get_current_job()
    return job.connection if job is not None else redis.Redis.from_url(config.redis.url)


def marker_key(keys: Keys, msgid: str) -> str:
    return f"{keys.prefix}email:{msgid.strip('<>')}"


_RECORD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then return 2 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
local existed = redis.call('EXISTS', KEYS[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
if existed == 0 then
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return 1
"""
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_call(conn: redis.Redis, keys: Keys, call_id: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    call = {_text(k): _text(v) for k, v in conn.hgetall(keys.call(call_id)).items()}
    call_log = conn.xrange(keys.call_log(call_id)) or []
    entries = [{_text(k): _text(v) for k, v in fields.items()} for _, fields in call_log if fields is not None]
    if call:
        call.setdefault("id", call_id)
    return call, entries


class Outcome:
    """What one email job did, recorded in the call log and the call hash."""

    def __init__(self, tool: str, call_id: str, field: str, job_id: str):
        self.tool, self.call_id, self.field, self.job_id = tool, call_id, field, job_id

    def record(
        self,
        conn: redis.Redis,
        keys: Keys,
        msgid: str,
        kind: str,
        output: str,
        hash_value: str,
        arguments: dict[str, Any],
        call: dict[str, str],
    ) -> bool:
        start = render.call_start_ms(call)
        t_ms = str(max(0, int(time.time() * 1000) - start)) if start else "0"
        name = LOG_NAMES[self.tool]
        args = json.dumps(arguments, separators=(",", ":"))
        entry = {
            "role": "tool",
            "text": f"{name}({args}) -> {output}",
            "name": name,
            "arguments": args,
            "output": output,
            "item_id": self.job_id,
            "t_ms": t_ms,
        }
        flat = [x for kv in entry.items() for x in kv]
        done = conn.eval(
            _RECORD,
            3,
            f"{marker_key(keys, msgid)}:logged:{self.field}",
            keys.call(self.call_id),
            keys.call_log(self.call_id),
            kind,
            MARKER_TTL_S,
            self.field,
            hash_value,
            LOG_MAXLEN,
            *flat,
        )
        return int(done) == 1


class _Lock:
    """One sender per message at a time; refreshed while the send runs, gone soon after a crash."""

    def __init__(self, conn: redis.Redis, key: str):
        self.conn, self.key, self.token = conn, key, uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Lock:
        # A lock left by a sender that died (a work horse killed to stop its worker, then its job put back at
        # once) expires within LOCK_TTL_MS: wait that long rather than spend one of the job's retries on it.
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self.conn.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() >= deadline:
                raise SendFailed("another attempt is sending this message", True)
            time.sleep(LOCK_POLL_S)
        self._thread = threading.Thread(target=self._refresh, name="email-lock", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                self.conn.eval(_REFRESH, 1, self.key, self.token, LOCK_TTL_MS)
            except redis.RedisError as exc:
                log.warning("cannot refresh the send lock %s: %s", self.key, exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.conn.eval(_RELEASE, 1, self.key, self.token)


def _count_attempt() -> None:
    job = get_current_job()
    if job is not None:
        job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
        job.save_meta()


def deliver(
    conn: redis.Redis,
    config: Config,
    keys: Keys,
    outcome: Outcome,
    call: dict[str, str],
    message: EmailMessage,
    recipients: list[str],
    arguments: dict[str, Any],
) -> dict[str, Any]:
    """Send `message` to `recipients` at most once, and record what happened."""
    msgid = message["Message-ID"]
    marker = marker_key(keys, msgid)
    shown = ", ".join(render.header_addresses(message["To"]))
    with _Lock(conn, f"{marker}:lock"):
        # Checked under the lock: the attempt before us may have sent it a moment ago.
        previous = conn.get(marker)
        if previous is not None and _text(previous).startswith("sent"):
            log.info("%s already sent (%s); recording only", msgid, _text(previous))
            refused: dict[str, str] = {}
        else:
            try:
                refused = smtp.send(message, recipients, config.email)
            except SendFailed as exc:
                if exc.transient:
                    raise  # RQ retries; on_job_failure records the last failure
                log.warning("%s not sent: %s", msgid, exc.reason)
                outcome.record(
                    conn, keys, msgid, "failed", f"failed: {exc.reason}", f"failed:{exc.reason}", arguments, call
                )
                return {"status": "failed", "reason": exc.reason, "message_id": msgid}
            conn.set(marker, f"sent to {', '.join(recipients)} at {int(time.time() * 1000)}", ex=MARKER_TTL_S)
    output = f"sent to {shown} (Message-ID {msgid})"
    if refused:
        output += f"; refused: {', '.join(sorted(refused))}"
    outcome.record(conn, keys, msgid, "sent", output, "sent", arguments, call)
    log.info("%s sent to %d recipient(s)", msgid, len(recipients) - len(refused))
    return {"status": "sent", "message_id": msgid, "to": recipients, "refused": refused}


def _skip(
    conn: redis.Redis,
    keys: Keys,
    outcome: Outcome,
    call: dict[str, str],
    msgid: str,
    reason: str,
    arguments: dict[str, Any],
) -> dict[str, Any]:
    outcome.record(conn, keys, msgid, "skipped", f"skipped: {reason}", f"skipped:{reason}", arguments, call)
    return {"status": "skipped", "reason": reason, "message_id": msgid}


def run_summary(
    conn: redis.Redis, config: Config, keys: Keys, call_id: str, reason: str, job_id: str = ""
) -> dict[str, Any]:
    call, entries = read_call(conn, keys, call_id)
    if not call:
        log.warning("summary of call %s: no call record (expired?)", call_id)
        return {"status": "failed", "reason": "no call record"}
    settings = config.tools.send_email_summary
    outcome = Outcome(SUMMARY, call_id, "summary_email", job_id)
    message = render.render_summary(call, entries, config)
    recipients = list(settings.recipients)
    arguments = {"to": recipients, "reason": reason}
    if reason == "call_end" and not settings.send_after_every_call:
        return _skip(conn, keys, outcome, call, message["Message-ID"], "send_after_every_call is off", arguments)
    if not recipients:
        return _skip(conn, keys, outcome, call, message["Message-ID"], "no recipients configured", arguments)
    return deliver(conn, config, keys, outcome, call, message, recipients, arguments)


def transcript_number(conn: redis.Redis, keys: Keys, call_id: str, address: str) -> int | None:
    value = conn.hget(transcripts_key(keys, call_id), address.casefold())
    return int(value) if value is not None else None


def run_transcript(
    conn: redis.Redis, config: Config, keys: Keys, call_id: str, address: str, job_id: str = ""
) -> dict[str, Any]:
    call, entries = read_call(conn, keys, call_id)
    if not call:
        log.warning("transcript of call %s: no call record (expired?)", call_id)
        return {"status": "failed", "reason": "no call record"}
    n = transcript_number(conn, keys, call_id, address) or 1
    outcome = Outcome(TRANSCRIPT, call_id, f"transcript_email_{n}", job_id)
    message = render.render_transcript(call, entries, config, address, n)
    arguments = {"email": address}
    if not validate_email(address):
        outcome.record(
            conn,
            keys,
            message["Message-ID"],
            "failed",
            "failed: invalid address",
            "failed:invalid address",
            arguments,
            call,
        )
        return {"status": "failed", "reason": "invalid address"}
    recipients = [address] + [b for b in config.tools.request_transcript.bcc if b.casefold() != address.casefold()]
    return deliver(conn, config, keys, outcome, call, message, recipients, arguments)


# The RQ jobs (shared/email_queue.py names them by these import paths).


def send_email_summary(call_id: str, key_prefix: str, reason: str) -> dict:
    config = current_config()
    _count_attempt()
    job = get_current_job()
    return run_summary(_connection(config), config, Keys(key_prefix), call_id, reason, job.id if job else "")


def send_transcript(call_id: str, key_prefix: str, address: str) -> dict:
    config = current_config()
    _count_attempt()
    job = get_current_job()
    return run_transcript(_connection(config), config, Keys(key_prefix), call_id, address, job.id if job else "")


def on_job_failure(job, connection, exc_type, exc_value, _traceback) -> None:
    """RQ failure callback (an exception, or a job abandoned by a dead worker). Records the failure once no
    retry is left; a message already sent is not marked failed."""
    if job.retries_left:
        log.info("job %s failed (%s); %d retries left", job.id, exc_value, job.retries_left)
        return
    config = current_config()
    call_id, key_prefix, extra = job.args
    keys = Keys(key_prefix)
    reason = (
        exc_value.reason
        if isinstance(exc_value, SendFailed)
        else (f"{exc_type.__name__}: {exc_value}" if str(exc_value) else exc_type.__name__)
    )
    call, _ = read_call(connection, keys, call_id)
    if not call:
        return
    if job.func_name.endswith(".send_email_summary"):
        outcome = Outcome(SUMMARY, call_id, "summary_email", job.id)
        msgid = render.message_id(SUMMARY, call_id, config.email.from_address)
        arguments: dict[str, Any] = {"to": list(config.tools.send_email_summary.recipients), "reason": extra}
    else:
        n = transcript_number(connection, keys, call_id, extra) or 1
        outcome = Outcome(TRANSCRIPT, call_id, f"transcript_email_{n}", job.id)
        msgid = render.message_id(TRANSCRIPT, call_id, config.email.from_address, n)
        arguments = {"email": extra}
    sent = connection.get(marker_key(keys, msgid))
    if sent is not None and _text(sent).startswith("sent"):
        return
    log.warning("%s: giving up: %s", msgid, reason)
    outcome.record(connection, keys, msgid, "failed", f"failed: {reason}", f"failed:{reason}", arguments, call)
