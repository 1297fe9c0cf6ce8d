"""Sending one message over SMTP (security none | starttls | tls), with failures sorted for the retry policy.

`SendFailed.reason` names the cause in words an operator can act on and never holds the password.
`transient` says whether trying again later can help (connection refused, timeout, 4xx) or not (5xx refusals,
authentication failure, a server without STARTTLS).
"""

from __future__ import annotations

import binascii
import smtplib
import socket
import ssl
from email.message import EmailMessage

from shared.config.schema import Email


class SendFailed(Exception):
    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())[:120]}".strip()


def _connect(settings: Email, timeout: float, context: ssl.SSLContext | None) -> smtplib.SMTP:
    if settings.security == "tls":
        return smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout, context=context)
    client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    if settings.security == "starttls":
        client.ehlo()
        client.starttls(context=context)
        client.ehlo()
    return client


_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


def _login(client: smtplib.SMTP, settings: Email, where: str) -> None:
    """One AUTH attempt with one mechanism. smtplib's login() tries each advertised mechanism in turn, so a
    wrong password counts several failures against the account's lockout policy (and some servers hang up
    after the first)."""
    client.ehlo_or_helo_if_needed()
    offered = (client.esmtp_features.get("auth") or "").upper().split()
    mechanism = next((m for m in _MECHANISMS if m in offered), None)
    if mechanism is None:
        raise SendFailed(f"{where} does not offer AUTH PLAIN or LOGIN (use starttls or tls?)", False)
    client.user, client.password = settings.username, settings.password
    try:
        if mechanism == "PLAIN":
            client.auth("PLAIN", client.auth_plain)
        elif mechanism == "LOGIN":
            client.auth("LOGIN", client.auth_login)
        else:
            client.auth("CRAM-MD5", client.auth_cram_md5, initial_response_ok=False)
    except smtplib.SMTPAuthenticationError as exc:
        raise SendFailed(f"auth failed for {settings.username} ({exc.smtp_code})", False) from None
    except (binascii.Error, ValueError) as exc:  # a 334 challenge that is not base64: the server is not speaking SMTP
        raise SendFailed(f"{where} sent an AUTH {mechanism} challenge that is not base64 ({exc})", False) from None


def send(
    message: EmailMessage, recipients: list[str], settings: Email, context: ssl.SSLContext | None = None
) -> dict[str, str]:
    """Send to the envelope `recipients` (To + Bcc); return the refused ones (address -> reply) when some were
    accepted. Raises SendFailed when none was."""
    if settings.security != "none" and context is None:
        context = ssl.create_default_context()
    client = _open(settings, context)
    try:
        return _deliver(client, message, recipients, settings)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _where(settings: Email) -> str:
    return f"{settings.smtp_host}:{settings.smtp_port}"


def _open(settings: Email, context: ssl.SSLContext | None) -> smtplib.SMTP:
    """A connected (and, with starttls or tls, encrypted) client; SendFailed when there is none."""
    timeout = settings.timeout_ms / 1000
    where = _where(settings)
    try:
        return _connect(settings, timeout, context)
    except ConnectionRefusedError:
        raise SendFailed(f"connection refused by {where}", True) from None
    except (socket.timeout, TimeoutError):
        raise SendFailed(f"timeout connecting to {where} after {timeout:g} s", True) from None
    except ssl.SSLCertVerificationError as exc:
        raise SendFailed(f"TLS error with {where}: {exc.verify_message or exc.reason}", False) from None
    except ssl.SSLError as exc:
        raise SendFailed(f"TLS error with {where}: {exc.reason or exc.__class__.__name__}", True) from None
    except smtplib.SMTPNotSupportedError:
        raise SendFailed(f"{where} does not offer STARTTLS", False) from None
    except smtplib.SMTPResponseException as exc:  # greeting or STARTTLS refused
        raise SendFailed(f"{where} refused the connection: {_reply(exc)}", exc.smtp_code < 500) from None
    except smtplib.SMTPServerDisconnected:
        raise SendFailed(f"{where} closed the connection", True) from None
    except OSError as exc:
        raise SendFailed(f"cannot reach {where}: {exc.strerror or exc.__class__.__name__}", True) from None


def _deliver(client: smtplib.SMTP, message: EmailMessage, recipients: list[str], settings: Email) -> dict[str, str]:
    """Log in when configured and send; the refused recipients, or SendFailed when none was accepted."""
    where = _where(settings)
    try:
        if settings.username:
            _login(client, settings, where)
        refused = client.send_message(message, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = ", ".join(f"{addr} ({code})" for addr, (code, _) in exc.recipients.items())
        raise SendFailed(f"recipient refused: {detail}", all(c < 500 for c in codes)) from None
    except smtplib.SMTPSenderRefused as exc:
        raise SendFailed(f"sender refused: {_reply(exc)}", exc.smtp_code < 500) from None
    except smtplib.SMTPResponseException as exc:  # DATA refused, or an unexpected reply
        raise SendFailed(f"message refused: {_reply(exc)}", exc.smtp_code < 500) from None
    except (socket.timeout, TimeoutError):
        raise SendFailed(f"timeout talking to {where} after {settings.timeout_ms / 1000:g} s", True) from None
    except smtplib.SMTPServerDisconnected:
        raise SendFailed(f"{where} closed the connection", True) from None
    except ssl.SSLError as exc:
        raise SendFailed(f"TLS error with {where}: {exc.reason or exc.__class__.__name__}", True) from None
    except OSError as exc:
        raise SendFailed(f"connection to {where} failed: {exc.strerror or exc.__class__.__name__}", True) from None
    return {
        addr: f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
        for addr, (code, text) in refused.items()
    }


def check_login(settings: Email, context: ssl.SSLContext | None = None) -> str:
    """Connect, greet, encrypt as configured and log in when a username is set, then quit without sending
    (`voice-agent doctor`). What was done, in words; SendFailed when a step fails."""
    if settings.security != "none" and context is None:
        context = ssl.create_default_context()
    client = _open(settings, context)
    where = _where(settings)
    try:
        client.ehlo_or_helo_if_needed()
        if settings.username:
            _login(client, settings, where)
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailed(f"{where} failed after connecting: {exc.__class__.__name__}", True) from None
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
    security = {"none": "unencrypted", "starttls": "STARTTLS", "tls": "TLS"}[settings.security]
    login = f", logged in as {settings.username}" if settings.username else ", no login (no username set)"
    return f"{where}: connected, {security}{login}"
