"""The email tools: rendering, SMTP paths against aiosmtpd, and the jobs through real tool-worker processes
(exactly once under repeats, a SIGKILLed worker and an SMTP outage), every outcome in the call log and hash."""

from __future__ import annotations

import asyncio
import email
import os
import signal
import ssl
import subprocess
import threading
import time
import uuid
from email import policy
from pathlib import Path

import msgspec
import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from rq.job import Job

from shared import email_queue
from shared.config.schema import Config
from shared.keys import Keys
from sim.chaos import summaries_by_call
from sim.chaos_run import descendants
from sim.cluster import LocalCluster, free_port
from sim.loadtest import scrape
from sim.loadtest_report import metric
from tests.conftest import wait_for
from tool_worker import email_jobs, render, smtp
from tool_worker.smtp import SendFailed

FROM = "AI Voice Agent <agent@example.com>"


class Inbox:
    """An SMTP server's handler. A message counts as arrived only once its 250 reaches a live client:
    the point where a real MTA takes responsibility for it."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.delays: list[float] = []  # seconds to hold each DATA before answering, in order
        self.in_data = threading.Event()
        self.rcpt_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.in_data.set()
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        if server.transport is None or server.transport.is_closing():
            return "421 client gone"
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


def start_smtp(inbox: Inbox, **kwargs) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


@pytest.fixture
def inbox():
    box = Inbox()
    controller = start_smtp(box)
    box.port = controller.port
    yield box
    controller.stop()


def make_config(port: int, **email_settings) -> Config:
    return msgspec.convert(
        {
            "company_name": "Acme & Sons",
            "tools": {
                "send_email_summary": {"recipients": ["ops@example.com"]},
                "request_transcript": {"bcc": ["audit@example.com"]},
            },
            "email": {
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "from_address": FROM,
                "timeout_ms": 3000,
                **email_settings,
            },
        },
        Config,
    )


def write_call(client: redis.Redis, keys: Keys) -> str:
    """An ended call's record and log: the controller enqueues a call's emails only once it has ended."""
    call_id = str(uuid.uuid4())
    now = int(time.time() * 1000)
    record = {
        "caller_name": "Alice <script>",
        "caller_number": "5551234",
        "context": "support",
        "created_ms": str(now - 125_000),
        "admitted_ms": str(now - 124_000),
        "state": "ended",
        "ended_ms": str(now - 4000),
        "end_reason": "caller_hangup",
    }
    client.hset(keys.call(call_id), mapping=record)
    client.expire(keys.call(call_id), 3600)
    for entry in [
        {"role": "assistant", "text": "Hello, Acme support.", "item_id": "i1", "t_ms": "300"},
        {"role": "user", "text": "My order <b>42</b> never came & I'm upset", "item_id": "i2", "t_ms": "4200"},
        {
            "role": "tool",
            "text": 'transfer({"destination":"sales"}) -> ok',
            "name": "transfer",
            "arguments": '{"destination":"sales"}',
            "output": "transferred to sales",
            "item_id": "c1",
            "t_ms": "65000",
        },
        {"role": "assistant", "text": "Transferring you to sales now.", "item_id": "i3", "t_ms": "66000"},
    ]:
        client.xadd(keys.call_log(call_id), entry)
    return call_id


def email_entries(client: redis.Redis, keys: Keys, call_id: str) -> list[dict]:
    return [f for _, f in client.xrange(keys.call_log(call_id)) if f.get("name", "").startswith("email_")]


@pytest.fixture
def keys(prefix) -> Keys:
    return Keys(prefix)


@pytest.fixture
def conn(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# --- rendering ---------------------------------------------------------------------------------------------


def sample_call() -> tuple[dict, list[dict]]:
    call = {
        "id": "c-1",
        "caller_name": "Alice <script>",
        "caller_number": "5551234",
        "context": "support",
        "created_ms": "1700000000000",
        "admitted_ms": "1700000001000",
        "ended_ms": "1700000121000",
        "end_reason": "caller_hangup",
    }
    entries = [
        {"role": "user", "text": "Order <b>42</b> & more", "t_ms": "4200"},
        {"role": "assistant", "text": "Let me check.", "t_ms": "5000"},
        {"role": "tool", "name": "hangup_call", "arguments": "{}", "output": "farewell spoken", "t_ms": "119000"},
        {"role": "tool", "name": "leave_voicemail", "arguments": "{}", "output": "sent to voicemail", "t_ms": "90000"},
    ]
    return call, entries


def test_summary_has_plain_and_html_parts_facts_transcript_and_actions():
    call, entries = sample_call()
    msg = render.render_summary(call, entries, make_config(25))
    assert msg["Subject"] == "Call summary: Alice <script> (5551234), 2 min"
    assert msg["To"] == "ops@example.com" and msg["From"] == FROM
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Duration: 2 min" in plain and "Context: support" in plain and "End reason: caller_hangup" in plain
    assert "(2023-11-14T22:13:21Z)" in plain  # the UTC time beside the local one
    assert "[00:04] Caller: Order <b>42</b> & more" in plain and "[00:05] Agent: Let me check." in plain
    assert "hangup_call -> farewell spoken" in plain and "leave_voicemail -> sent to voicemail" in plain
    # Everything from the call is escaped in the HTML part.
    assert "<script>" not in html and "Alice &lt;script&gt;" in html
    assert "Order &lt;b&gt;42&lt;/b&gt; &amp; more" in html and "<b>42</b>" not in html
    assert "Acme &amp; Sons" in html


def test_summary_without_transcript_when_configured_off():
    call, entries = sample_call()
    config = make_config(25)
    config.tools.send_email_summary.include_transcript = False
    plain = render.render_summary(call, entries, config).get_body(("plain",)).get_content()
    assert "Transcript" not in plain and "Order" not in plain and "hangup_call" in plain


def test_message_ids_are_deterministic_per_email():
    call, entries = sample_call()
    config = make_config(25)
    first = render.render_summary(call, entries, config)["Message-ID"]
    assert first == render.render_summary(call, entries[:1], config)["Message-ID"]
    assert first == "<send_email_summary.c-1@example.com>"
    assert render.render_transcript(call, entries, config, "bob@example.org", 2)["Message-ID"] == (
        "<request_transcript.c-1.2@example.com>"
    )


def test_transcript_goes_to_the_caller_only_in_headers():
    call, entries = sample_call()
    msg = render.render_transcript(call, entries, make_config(25), "bob@example.org", 1)
    assert msg["To"] == "bob@example.org" and msg["Bcc"] is None
    assert "Acme & Sons" in msg["Subject"]
    assert "Caller: Order <b>42</b> & more" in msg.get_body(("plain",)).get_content()


def test_durations_and_unknown_caller():
    assert render.format_duration(45) == "45 s" and render.format_duration(3900) == "1 h 5 min"
    assert render.format_duration(None) == "unknown length"
    assert render.caller_label({"caller_number": "100"}) == "100"
    assert render.caller_label({}) == "unknown caller"


# --- SMTP paths --------------------------------------------------------------------------------------------


def test_plain_send_and_auth_success_and_failure(inbox):
    users = {"agent": "s3cret-pass"}

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and users.get(auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    box = Inbox()
    controller = start_smtp(box, authenticator=authenticator, auth_require_tls=False)
    try:
        call, entries = sample_call()
        msg = render.render_summary(call, entries, make_config(25))
        good = make_config(controller.port, username="agent", password="s3cret-pass").email
        assert smtp.send(msg, ["ops@example.com"], good) == {}
        assert [rcpts for rcpts, _ in box.messages] == [["ops@example.com"]]
        bad = make_config(controller.port, username="agent", password="wrong-pass-123").email
        with pytest.raises(SendFailed) as failed:
            smtp.send(msg, ["ops@example.com"], bad)
        assert failed.value.reason == "auth failed for agent (535)" and not failed.value.transient
        assert "wrong-pass-123" not in failed.value.reason
    finally:
        controller.stop()
    # No auth configured: plain send.
    assert smtp.send(msg, ["a@example.com"], make_config(inbox.port).email) == {}
    assert len(inbox.messages) == 1


def test_refusals_and_outages_are_sorted_for_retry(inbox):
    call, entries = sample_call()
    msg = render.render_summary(call, entries, make_config(25))
    inbox.rcpt_reply = "550 5.1.1 no such user"
    with pytest.raises(SendFailed) as failed:
        smtp.send(msg, ["nobody@example.com"], make_config(inbox.port).email)
    assert not failed.value.transient and "recipient refused: nobody@example.com (550)" == failed.value.reason
    inbox.rcpt_reply = "450 4.2.1 mailbox busy"
    with pytest.raises(SendFailed) as failed:
        smtp.send(msg, ["busy@example.com"], make_config(inbox.port).email)
    assert failed.value.transient
    closed = free_port()
    with pytest.raises(SendFailed) as failed:
        smtp.send(msg, ["a@example.com"], make_config(closed).email)
    assert failed.value.transient and failed.value.reason == f"connection refused by 127.0.0.1:{closed}"


@pytest.fixture
def tls_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_starttls_and_tls_against_a_self_signed_server(security, tls_files):
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    box = Inbox()
    if security == "tls":
        controller = start_smtp(box, ssl_context=server_ctx)
    else:
        controller = start_smtp(box, tls_context=server_ctx, require_starttls=True)
    try:
        call, entries = sample_call()
        msg = render.render_summary(call, entries, make_config(25))
        settings = make_config(controller.port, security=security).email
        assert smtp.send(msg, ["ops@example.com"], settings, ssl.create_default_context(cafile=str(cert))) == {}
        assert len(box.messages) == 1
        # Without the CA the certificate is refused: a configuration problem, not retried.
        with pytest.raises(SendFailed) as failed:
            smtp.send(msg, ["ops@example.com"], settings)
        assert failed.value.reason.startswith("TLS error") and not failed.value.transient
    finally:
        controller.stop()


# --- the job logic in-process ------------------------------------------------------------------------------


def test_a_message_marked_sent_is_recorded_but_not_sent_again(inbox, conn, keys, rclient):
    """A crash after SMTP accepted (marker written) but before the records: the retry only records."""
    call_id = write_call(rclient, keys)
    config = make_config(inbox.port)
    msgid = render.message_id("send_email_summary", call_id, FROM)
    conn.set(email_jobs.marker_key(keys, msgid), "sent to ops@example.com at 1", ex=60)
    for _ in range(2):
        result = email_jobs.run_summary(conn, config, keys, call_id, "call_end", "job-x")
        assert result["status"] == "sent"
    assert inbox.messages == []
    entries = email_entries(rclient, keys, call_id)
    assert [e["output"] for e in entries] == [f"sent to ops@example.com (Message-ID {msgid})"]
    assert rclient.hget(keys.call(call_id), "summary_email") == "sent"


def test_permanent_refusal_is_recorded_and_not_raised(inbox, conn, keys, rclient):
    call_id = write_call(rclient, keys)
    inbox.rcpt_reply = "550 5.1.1 no such user"
    result = email_jobs.run_summary(conn, make_config(inbox.port), keys, call_id, "call_end")
    assert result["status"] == "failed"
    assert rclient.hget(keys.call(call_id), "summary_email") == "failed:recipient refused: ops@example.com (550)"
    assert [e["output"] for e in email_entries(rclient, keys, call_id)] == [
        "failed: recipient refused: ops@example.com (550)"
    ]


def test_no_recipients_or_summaries_off_are_recorded_as_skipped(inbox, conn, keys, rclient):
    call_id = write_call(rclient, keys)
    config = make_config(inbox.port)
    config.tools.send_email_summary.recipients = []
    assert email_jobs.run_summary(conn, config, keys, call_id, "call_end")["status"] == "skipped"
    assert rclient.hget(keys.call(call_id), "summary_email") == "skipped:no recipients configured"
    other = write_call(rclient, keys)
    config = make_config(inbox.port)
    config.tools.send_email_summary.send_after_every_call = False
    assert email_jobs.run_summary(conn, config, keys, other, "call_end")["status"] == "skipped"
    assert email_jobs.run_summary(conn, config, keys, other, "tool")["status"] == "sent"  # asked for: sent
    assert inbox.messages and rclient.hget(keys.call(other), "summary_email") == "sent"


def test_a_send_in_progress_elsewhere_is_not_doubled(inbox, conn, keys, rclient, monkeypatch):
    monkeypatch.setattr(email_jobs, "LOCK_WAIT_S", 0.5)  # waited for this long, then given up for a retry
    call_id = write_call(rclient, keys)
    msgid = render.message_id("send_email_summary", call_id, FROM)
    conn.set(email_jobs.marker_key(keys, msgid) + ":lock", "someone-else", px=5000)
    with pytest.raises(SendFailed) as failed:
        email_jobs.run_summary(conn, make_config(inbox.port), keys, call_id, "call_end")
    assert failed.value.transient and inbox.messages == []


def test_a_lock_left_by_a_killed_sender_is_waited_for_not_failed(inbox, conn, keys, rclient):
    """A work horse killed to stop its worker leaves its send lock for up to LOCK_TTL_MS, and its job is put
    back at once: the next attempt waits for the lock rather than spend one of its retries."""
    call_id = write_call(rclient, keys)
    msgid = render.message_id("send_email_summary", call_id, FROM)
    conn.set(email_jobs.marker_key(keys, msgid) + ":lock", "killed-horse", px=700)
    assert email_jobs.run_summary(conn, make_config(inbox.port), keys, call_id, "call_end")["status"] == "sent"
    assert len(inbox.messages) == 1


def test_a_queued_job_expires_after_a_week_not_never(conn, keys, rclient):
    """Jobs that never ran (no tool worker) used to stay in Redis forever; a long TTL, so that none is dropped
    before a worker could take it (RQ skips an expired job without a word)."""
    call_id = write_call(rclient, keys)
    for job_id in (
        email_queue.enqueue_summary(conn, keys, call_id),
        email_queue.enqueue_transcript(conn, keys, call_id, "bob@example.org"),
    ):
        assert 6 * 24 * 3600 < rclient.ttl(f"rq:job:{job_id}") <= 7 * 24 * 3600


def test_each_confirmed_address_is_one_transcript_job_and_the_summary_keeps_its_reason(conn, keys, rclient):
    call_id = write_call(rclient, keys)
    queue_key = f"rq:queue:{keys.queue('email')}"
    first = email_queue.enqueue_transcript(conn, keys, call_id, "Bob@Example.org")
    assert first == email_queue.enqueue_transcript(conn, keys, call_id, "bob@example.org")  # same address
    second = email_queue.enqueue_transcript(conn, keys, call_id, "carol@example.org")
    assert (first, second) == (f"request_transcript-{call_id}-1", f"request_transcript-{call_id}-2")
    summary = email_queue.enqueue_summary(conn, keys, call_id, reason="tool")
    assert sorted(rclient.lrange(queue_key, 0, -1)) == sorted([summary, first, second])
    # A repeat changes nothing: the summary asked for by the caller keeps its reason.
    assert email_queue.enqueue_summary(conn, keys, call_id) == summary
    assert Job.fetch(summary, connection=conn).args[2] == "tool"
    assert rclient.llen(queue_key) == 3


# --- through real tool-worker processes --------------------------------------------------------------------


def worker_config(tmp_path: Path, smtp_port: int, timeout_ms: int = 5000, stop_grace_ms: int = 5000) -> Path:
    path = tmp_path / "ai-agent.yaml"
    path.write_text(f"""
company_name: Acme
redis:
  url: ${{REDIS_URL}}
  key_prefix: ${{REDIS_KEY_PREFIX}}
tool_worker:
  queues: [tools, email]
  stop_grace_ms: {stop_grace_ms}
tools:
  send_email_summary:
    recipients: [ops@example.com]
  request_transcript:
    bcc: [audit@example.com]
email:
  smtp_host: 127.0.0.1
  smtp_port: {smtp_port}
  from_address: "{FROM}"
  timeout_ms: {timeout_ms}
logging:
  level: info
""")
    return path


@pytest.fixture
def workers(tmp_path, cluster_env, inbox):
    cluster = LocalCluster(worker_config(tmp_path, inbox.port), tmp_path, cluster_env)
    yield cluster
    cluster.stop_all()


def start_worker(cluster: LocalCluster):
    proc = cluster.start("tool-worker")
    assert cluster.wait_ready([proc], timeout=30), proc.log_text()
    return proc


def job_status(conn, job_id: str) -> str | None:
    return Job.fetch(job_id, connection=conn).get_status(refresh=True) if Job.exists(job_id, connection=conn) else None


def test_summary_arrives_once_with_the_transcript_however_often_enqueued(workers, inbox, conn, keys, rclient):
    proc = start_worker(workers)
    call_id = write_call(rclient, keys)
    t0 = time.monotonic()
    job_id = email_queue.enqueue_summary(conn, keys, call_id)
    assert email_queue.enqueue_summary(conn, keys, call_id) == job_id == f"send_email_summary-{call_id}"
    wait_for(lambda: inbox.messages, timeout=10)
    latency = time.monotonic() - t0
    wait_for(lambda: job_status(conn, job_id) == "finished", timeout=10)
    email_queue.enqueue_summary(conn, keys, call_id)  # after it finished: still the same job
    time.sleep(0.5)
    assert len(inbox.messages) == 1, latency
    rcpts, msg = inbox.messages[0]
    assert rcpts == ["ops@example.com"]
    assert msg["Message-ID"].strip() == f"<send_email_summary.{call_id}@example.com>"
    assert "Caller: My order <b>42</b> never came & I'm upset" in msg.get_body(("plain",)).get_content()
    assert "transfer" in msg.get_body(("plain",)).get_content()
    assert rclient.hget(keys.call(call_id), "summary_email") == "sent"
    [entry] = email_entries(rclient, keys, call_id)
    assert entry["role"] == "tool" and entry["name"] == "email_summary" and entry["item_id"] == job_id
    assert entry["output"] == f"sent to ops@example.com (Message-ID <send_email_summary.{call_id}@example.com>)"
    assert int(entry["t_ms"]) > 120_000  # after the call's end, on the call's clock
    assert "Traceback" not in proc.log_text()
    # Counted by the worker process although the job ran in a forked work horse (once the horse has exited).
    wait_for(
        lambda: metric(scrape(proc), "va_tool_jobs_total", task="send_email_summary", status="finished"), timeout=5
    )
    samples = scrape(proc)
    assert metric(samples, "va_tool_jobs_total", task="send_email_summary", status="finished") == 1
    assert metric(samples, "va_tool_jobs_total", task="send_transcript") == 0
    assert metric(samples, "va_tool_job_seconds_count", task="send_email_summary") == 1


def test_transcript_goes_to_the_confirmed_address_plus_bcc(workers, inbox, conn, keys, rclient):
    start_worker(workers)
    call_id = write_call(rclient, keys)
    job_id = email_queue.enqueue_transcript(conn, keys, call_id, "bob@example.org")
    assert email_queue.enqueue_transcript(conn, keys, call_id, "BOB@example.org") == job_id
    wait_for(lambda: job_status(conn, job_id) == "finished", timeout=10)
    [(rcpts, msg)] = inbox.messages
    assert rcpts == ["bob@example.org", "audit@example.com"]
    assert msg["To"] == "bob@example.org" and msg["Bcc"] is None
    assert msg["Message-ID"].strip() == f"<request_transcript.{call_id}.1@example.com>"
    assert rclient.hget(keys.call(call_id), "transcript_email_1") == "sent"
    [entry] = email_entries(rclient, keys, call_id)
    assert entry["name"] == "email_transcript" and entry["arguments"] == '{"email":"bob@example.org"}'
    assert entry["output"].startswith("sent to bob@example.org (Message-ID <request_transcript.")


@pytest.mark.slow  # measured 8.3 s
def test_worker_killed_mid_job_the_email_still_arrives_exactly_once(workers, inbox, conn, keys, rclient):
    first = start_worker(workers)
    call_id = write_call(rclient, keys)
    inbox.delays = [3.0]  # the first delivery hangs in DATA: the worker dies before the server's 250
    job_id = email_queue.enqueue_summary(conn, keys, call_id)
    assert inbox.in_data.wait(10), first.log_text()
    # The whole worker goes, as when its container or host dies: the worker, its job process and scheduler.
    for pid in [first.popen.pid] + descendants(first.popen.pid):
        os.kill(pid, signal.SIGKILL)
    first.popen.wait(5)
    assert job_status(conn, job_id) == "started"  # as the dead worker left it
    t_killed = time.monotonic()

    second = start_worker(workers)
    wait_for(lambda: job_status(conn, job_id) == "finished", timeout=30)
    recovered = time.monotonic() - t_killed
    time.sleep(1.0)
    assert len(inbox.messages) == 1, (recovered, second.log_text())
    assert inbox.messages[0][1]["Message-ID"].strip() == f"<send_email_summary.{call_id}@example.com>"
    assert recovered < 20
    assert "abandoned by a dead worker; requeued" in second.log_text()
    assert len(email_entries(rclient, keys, call_id)) == 1
    assert rclient.hget(keys.call(call_id), "summary_email") == "sent"


@pytest.mark.slow  # measured 9 s
def test_worker_killed_while_the_mail_server_process_holds_its_data_sends_once_after_restart(
    tmp_path, cluster_env, conn, keys, rclient
):
    """The chaos load test's path, all processes: `voice-agent sim mail` holds each DATA 2 s; inside that
    window the tool worker, its work horse and its scheduler are SIGKILLed; a new tool worker is started. RQ
    2.12 alone would leave the job in its StartedJobRegistry until the heartbeat expires and a maintenance pass
    runs (minutes); the new worker's `reclaim_abandoned` puts it back, and the summary is on disk once: the
    server dropped the copy whose client died before its 250."""
    mail_dir = tmp_path / "mail"
    cluster = LocalCluster(tmp_path / "ai-agent.yaml", tmp_path, cluster_env)
    try:
        mail = cluster.start_sim("mail", "--dir", str(mail_dir), "--data-delay-ms", "2000")
        worker_config(tmp_path, int(mail.url.rsplit(":", 1)[1]))
        first = start_worker(cluster)
        call_id = write_call(rclient, keys)
        job_id = email_queue.enqueue_summary(conn, keys, call_id)
        wait_for(lambda: "holding it" in mail.log_text(), timeout=10)
        for pid in [first.popen.pid] + descendants(first.popen.pid):
            os.kill(pid, signal.SIGKILL)
        first.popen.wait(5)
        assert job_status(conn, job_id) == "started"  # as the dead worker left it
        assert not list(mail_dir.glob("*.eml"))

        second = start_worker(cluster)
        wait_for(lambda: job_status(conn, job_id) == "finished", timeout=30)
        time.sleep(2.5)  # longer than the server's hold: a late copy of the first attempt would be on disk now
        assert summaries_by_call(mail_dir) == {call_id: 1}, mail.log_text()
        assert mail.log_text().count("holding it") == 2  # two attempts reached DATA; one was accepted
        assert "abandoned by a dead worker; requeued" in second.log_text()
        assert rclient.hget(keys.call(call_id), "summary_email") == "sent"
        assert len(email_entries(rclient, keys, call_id)) == 1
    finally:
        cluster.stop_all()


@pytest.mark.slow  # measured 9 s
def test_sigterm_during_a_stalled_send_stops_the_worker_and_the_email_arrives_once(
    tmp_path, cluster_env, inbox, conn, keys, rclient
):
    """A worker stopped while the SMTP server stalls in DATA used to wait for the whole send (its SMTP timeout,
    up to the 60 s job timeout) before exiting. Now the job gets stop_grace_ms, then goes back to the front of
    its queue (no retry used) and the next worker delivers it, once; the job queued behind it stays queued."""
    cluster = LocalCluster(
        worker_config(tmp_path, inbox.port, timeout_ms=30_000, stop_grace_ms=1000), tmp_path, cluster_env
    )
    try:
        first = start_worker(cluster)
        call_id = write_call(rclient, keys)
        inbox.delays = [60.0]  # the first DATA stalls far beyond the grace
        summary = email_queue.enqueue_summary(conn, keys, call_id)
        assert inbox.in_data.wait(10), first.log_text()
        transcript = email_queue.enqueue_transcript(conn, keys, call_id, "bob@example.org")  # queued behind it
        t0 = time.monotonic()
        first.popen.send_signal(signal.SIGTERM)
        try:
            code = first.popen.wait(8)
        except subprocess.TimeoutExpired:
            first.popen.kill()
            first.popen.wait()
            pytest.fail(f"not stopped within 8 s of SIGTERM:\n{first.log_text()[-3000:]}")
        stopped_in = time.monotonic() - t0
        assert code == 0, first.log_text()[-3000:]
        assert "put back at the front" in first.log_text()
        assert (job_status(conn, summary), job_status(conn, transcript)) == ("queued", "queued")
        assert Job.fetch(summary, connection=conn).retries_left == 4  # stopping is not a failure
        assert inbox.messages == []  # the stalled DATA never got its 250

        start_worker(cluster)
        wait_for(lambda: job_status(conn, summary) == job_status(conn, transcript) == "finished", timeout=30)
        time.sleep(1.0)
        ids = sorted(msg["Message-ID"].strip() for _, msg in inbox.messages)
        assert ids == sorted(
            [f"<send_email_summary.{call_id}@example.com>", f"<request_transcript.{call_id}.1@example.com>"]
        ), stopped_in
        assert rclient.hget(keys.call(call_id), "summary_email") == "sent"
        assert len(email_entries(rclient, keys, call_id)) == 2
    finally:
        cluster.stop_all()


@pytest.mark.slow  # measured 6.5 s
def test_smtp_down_is_retried_with_backoff_then_recorded_as_failed(
    tmp_path, cluster_env, conn, keys, rclient, monkeypatch
):
    closed = free_port()
    cluster = LocalCluster(worker_config(tmp_path, closed), tmp_path, cluster_env)
    monkeypatch.setenv(email_queue.RETRY_ENV, "1,1,1,1")
    try:
        proc = start_worker(cluster)
        call_id = write_call(rclient, keys)
        t0 = time.monotonic()
        job_id = email_queue.enqueue_summary(conn, keys, call_id)
        wait_for(lambda: job_status(conn, job_id) == "failed", timeout=30)
        elapsed = time.monotonic() - t0
        job = Job.fetch(job_id, connection=conn)
        assert job.meta["attempts"] == 5 and job.retries_left == 0
        # Four 1 s waits between the five attempts; RQ's scheduler keys whole seconds, so one can be shorter,
        # but immediate retries would be over in a fraction of a second.
        assert elapsed >= 2.5
        reason = f"connection refused by 127.0.0.1:{closed}"
        assert rclient.hget(keys.call(call_id), "summary_email") == f"failed:{reason}"
        assert [e["output"] for e in email_entries(rclient, keys, call_id)] == [f"failed: {reason}"]
        wait_for(
            lambda: metric(scrape(proc), "va_tool_jobs_total", task="send_email_summary", status="failed"), timeout=5
        )
        samples = scrape(proc)
        assert metric(samples, "va_tool_jobs_total", task="send_email_summary", status="retrying") == 4
        assert metric(samples, "va_tool_jobs_total", task="send_email_summary", status="failed") == 1
    finally:
        cluster.stop_all()


@pytest.mark.slow  # measured 4.6 s
def test_smtp_back_during_the_retries_delivers(tmp_path, cluster_env, conn, keys, rclient, monkeypatch):
    port = free_port()
    cluster = LocalCluster(worker_config(tmp_path, port), tmp_path, cluster_env)
    monkeypatch.setenv(email_queue.RETRY_ENV, "2,2,2,2")
    box = Inbox()
    controller = None
    try:
        start_worker(cluster)
        call_id = write_call(rclient, keys)
        job_id = email_queue.enqueue_summary(conn, keys, call_id)
        wait_for(lambda: Job.fetch(job_id, connection=conn).meta.get("attempts", 0) >= 1, timeout=10)
        controller = Controller(box, hostname="127.0.0.1", port=port)
        controller.start()
        wait_for(lambda: job_status(conn, job_id) == "finished", timeout=20)
        assert len(box.messages) == 1
        assert rclient.hget(keys.call(call_id), "summary_email") == "sent"
        assert [e["output"][:8] for e in email_entries(rclient, keys, call_id)] == ["sent to "]
    finally:
        if controller is not None:
            controller.stop()
        cluster.stop_all()
