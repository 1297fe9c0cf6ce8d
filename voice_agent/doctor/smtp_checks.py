"""SMTP: connect, EHLO, STARTTLS/TLS as configured, login when a username is set; one short test message
only with `--send-test-mail ADDRESS`."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from shared.config.schema import Config
from tool_worker.smtp import SendFailed, check_login, send
from voice_agent.doctor.result import Outcome, fail, ok, skipped
from voice_agent.doctor.runner import Probe

FIX = "check email.smtp_host, smtp_port, security (none | starttls | tls), username and password"
EMAIL_TOOLS = frozenset({"send_email_summary", "request_transcript"})


def email_in_use(config: Config) -> bool:
    tools = set(config.providers.openai_realtime.tools)
    for context in config.contexts.values():
        tools |= set(context.tools or ())
    summary = config.tools.send_email_summary
    return bool(tools & EMAIL_TOOLS) or (summary.send_after_every_call and bool(summary.recipients))


async def check_smtp(probe: Probe) -> Outcome:
    config = probe.loaded.config
    if not email_in_use(config) and probe.test_mail_to is None:
        return skipped("no email is sent with this config (no summary recipients, no email tool)")
    try:
        return ok(await asyncio.to_thread(check_login, config.email))
    except SendFailed as exc:
        return fail(exc.reason, FIX)


async def check_test_mail(probe: Probe) -> Outcome:
    address = probe.test_mail_to
    if address is None:
        return skipped("no test message (--send-test-mail ADDRESS sends one)")
    settings = probe.loaded.config.email
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = address
    message["Subject"] = "voice-agent doctor: test message"
    message.set_content("This message was sent by `voice-agent doctor --send-test-mail`: SMTP works.\n")
    try:
        refused = await asyncio.to_thread(send, message, [address], settings)
    except SendFailed as exc:
        return fail(f"test message to {address} not sent: {exc.reason}", FIX)
    if refused:
        return fail(f"the server refused {address}: {refused[address]}", "check the address")
    return ok(f"test message sent to {address}")
