"""check-config finds every mistake at once: schema and rules together, template variables, placeholder secrets,
settings that can never work as meant; roles name the first error and how many; read-only commands need no key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from controller.contexts import template_values
from shared.config import Severity, check, check_text
from shared.config.placeholders import is_placeholder
from shared.config.schema import Config
from shared.config.templates import TEMPLATE_VARIABLES, unknown_variables
from tests.conftest import CONFIG, ROOT, TEST_API_KEY

ENV = {"OPENAI_API_KEY": TEST_API_KEY}
OPENAI = "wss://api.openai.com/v1/realtime"
EMULATOR = "ws://127.0.0.1:9/v1/realtime"

# Six different mistakes, of each kind: a typo'd key, a wrong type inside a list, a template variable, a
# placeholder key, a timing that cannot be reached, a name that points nowhere.
SIX_MISTAKES = """\
default_context: suport
providers:
  openai_realtime:
    api_key: your_api_key_here
    voise: ash
contexts:
  support:
    greeting: "Hello {caler_name}, this is {company_name}."
    tools: [transfer, hangup]
media_worker:
  greeting_guard_ms: 6000
  capacity: lots
"""


def errors(text: str, env: dict[str, str] | None = None, **kwargs) -> dict[str, str]:
    """{path: message} of the errors."""
    found = check_text(text, ENV if env is None else env, **kwargs)
    return {p.path: p.message for p in found if p.severity is Severity.ERROR}


def warnings(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    found = check_text(text, ENV if env is None else env)
    return {p.path: p.message for p in found if p.severity is Severity.WARNING}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        timeout=60,
    )


# --- all at once ------------------------------------------------------------------------------------------


def test_every_mistake_is_listed_with_its_path_and_line():
    found = check_text(SIX_MISTAKES, ENV, source="six.yaml")
    errs = [p for p in found if p.severity is Severity.ERROR]
    assert [(p.line, p.path) for p in errs] == [
        (1, "default_context"),
        (4, "providers.openai_realtime.api_key"),
        (5, "providers.openai_realtime.voise"),
        (8, "contexts.support.greeting"),
        (9, "contexts.support.tools[1]"),
        (11, "media_worker.greeting_guard_ms"),
        (12, "media_worker.capacity"),
    ]
    messages = {p.path: p.message for p in errs}
    assert messages["default_context"] == "no context named 'suport' (did you mean 'support'?); known: support"
    assert "did you mean {caller_name}?" in messages["contexts.support.greeting"]
    assert messages["contexts.support.tools[1]"].endswith("got 'hangup' (did you mean 'hangup_call'?)")
    assert "your_api_key_here" not in str(found)


def test_a_bad_key_leaves_the_rest_of_its_section_checked():
    # Before, one wrong key stopped the rules (references, cross-field) from running at all.
    assert set(errors("default_profile: nope\nmedia_worker: {capacity: 0}\n")) == {
        "default_profile",
        "media_worker.capacity",
    }
    # A cross-field rule of a section with another error is still reported ...
    both = errors("media_worker:\n  rtp_port_min: 20000\n  rtp_port_max: 10000\n  capacity: lots\n")
    assert both == {
        "media_worker": "rtp_port_min (20000) must not be above rtp_port_max (10000)",
        "media_worker.capacity": "expected an integer in [1, 10000], got 'lots'",
    }
    # ... unless it would only be judging the default that stands in for a wrong key.
    assert set(errors("media_worker:\n  rtp_port_min: abc\n  rtp_port_max: 100\n")) == {"media_worker.rtp_port_min"}


def test_a_wrong_item_in_an_optional_list_is_named():
    assert errors("contexts:\n  a:\n    tools: [transfer, 7]\n") == {
        "contexts.a.tools[1]": "expected one of 'cancel_transfer', 'hangup_call', 'leave_voicemail', "
        "'request_transcript', 'send_email_summary', 'transfer', got 7"
    }
    assert errors("contexts:\n  a:\n    tools: [transfer]\n") == {}
    assert errors("contexts:\n  a:\n    tools: transfer\n") == {
        "contexts.a.tools": "expected a list or null, got 'transfer'"
    }


def test_check_reads_a_file_and_never_raises(tmp_path):
    path = tmp_path / "six.yaml"
    path.write_text(SIX_MISTAKES)
    assert len([p for p in check(path, env=ENV) if p.severity is Severity.ERROR]) == 7
    [missing] = check(tmp_path / "none.yaml", env=ENV)
    assert "file not found" in missing.message
    assert all(p.severity is not Severity.ERROR for p in check(CONFIG, env=ENV))


# --- template variables -----------------------------------------------------------------------------------


def test_the_variables_checked_are_the_ones_the_controller_fills():
    assert tuple(template_values(Config(), "Ann", "100")) == TEMPLATE_VARIABLES


def test_unknown_template_variables():
    text = (
        "providers:\n  openai_realtime:\n    instructions: 'You work for {compnay_name}.'\n"
        "contexts:\n  a:\n    prompt: 'Caller {caller_number}. Answer as JSON {\"ok\": true} or {{literal}}.'\n"
        "    greeting: 'Hi {caller_name} {x:>3} {zzz}'\n"
    )
    # A typo of a variable is an error; another name a warning (braces meant as written, another project's
    # {current_date}): both would be said as written.
    assert errors(text) == {
        "providers.openai_realtime.instructions": "unknown template variable {compnay_name} (did you mean "
        "{company_name}?): it would be said as written; known: {caller_name}, {caller_number}, {company_name}",
    }
    assert warnings(text)["contexts.a.greeting"] == (
        "unknown template variable {zzz}: it would be said as written; known: "
        "{caller_name}, {caller_number}, {company_name}"
    )
    assert unknown_variables('{caller_name} {company_name} {caller_number} {"a": 1} } {') == []


# --- placeholder secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["your_api_key_here", "changeme", "change-me", "CHANGE_ME", "password", "<api key>", "sk-xxxxxxxx", "***"]
)
def test_placeholders_are_recognised(value):
    assert is_placeholder(value)


@pytest.mark.parametrize("value", [TEST_API_KEY, "sk-proj-4fG7hQ2kLm9", "ari-pwpwpwpw", "correct horse battery", ""])
def test_real_looking_secrets_are_not_placeholders(value):
    assert not is_placeholder(value)


def test_a_placeholder_api_key_is_an_error_towards_openai_only():
    key = "providers.openai_realtime.api_key"
    text = f"providers:\n  openai_realtime:\n    base_url: {OPENAI}\n"
    assert key in errors(text, env={"OPENAI_API_KEY": "your_api_key_here"})
    assert errors(text, env={"OPENAI_API_KEY": TEST_API_KEY}) == {}
    # The emulator (the demo, docker's demo profile) takes any non-empty key, .env.example's included.
    emulator = f"providers:\n  openai_realtime:\n    base_url: {EMULATOR}\n"
    assert errors(emulator, env={"OPENAI_API_KEY": "your_api_key_here"}) == {}


def test_placeholder_passwords_are_warnings_and_never_printed():
    text = (
        "asterisk: {password: change-me}\nemail: {password: '<smtp password>'}\n"
        "redis: {url: 'redis://:changeme@127.0.0.1:6379/0'}\n"
    )
    found = warnings(text)
    assert set(found) >= {"asterisk.password", "email.password", "redis.url"}
    assert not {"change-me", "<smtp password>", "changeme"} & set(" ".join(found.values()).split())
    assert errors(text) == {}
    assert not {"asterisk.password", "email.password", "redis.url"} & set(
        warnings("asterisk: {password: s3cr3t-Ari-9}\nredis: {url: 'redis://:Xk82jd@127.0.0.1:6379/0'}\n")
    )


# --- values that can never work as meant ------------------------------------------------------------------


def test_greeting_guard_must_be_below_the_greeting_timeout():
    assert "media_worker.greeting_guard_ms" in errors("media_worker: {greeting_guard_ms: 5000}\n")
    assert errors("media_worker: {greeting_guard_ms: 4999}\n") == {}


def test_stale_after_a_single_heartbeat_is_a_warning():
    assert "media_worker.stale_after_ms" in warnings("media_worker: {heartbeat_ms: 400, stale_after_ms: 700}\n")
    assert "media_worker.stale_after_ms" not in warnings("media_worker: {heartbeat_ms: 250, stale_after_ms: 750}\n")


def test_admission_tick_lag_limit_of_a_frame_or_more():
    path = "media_worker.admission.max_tick_lag_p99_ms"
    assert "skip frames" in warnings("media_worker:\n  admission: {max_tick_lag_p99_ms: 20}\n")[path]
    assert path not in warnings("media_worker:\n  admission: {max_tick_lag_p99_ms: 10}\n")
    assert path not in warnings("media_worker:\n  admission: {enabled: false, max_tick_lag_p99_ms: 50}\n")
    assert path in errors("media_worker:\n  admission: {max_tick_lag_p99_ms: 0}\n")


def test_rtp_range_smaller_than_capacity_when_rtp_is_used():
    small = "media_worker: {rtp_port_min: 20000, rtp_port_max: 20009, capacity: 50}\n"
    message = warnings(small + "default_profile: telephony_ulaw_8k\n")["media_worker.rtp_port_max"]
    assert "holds 10 ports but capacity is 50" in message
    assert "media_worker.rtp_port_max" not in warnings(small)  # AudioSocket only: no RTP port is taken


def test_health_port_on_the_audiosocket_port():
    assert "media_worker.health_port" in errors("media_worker: {audiosocket_port: 9000, health_port: 9000}\n")
    assert errors("media_worker: {audiosocket_port: 0, health_port: 0}\n") == {}


def test_vad_threshold_and_silence():
    td = "providers:\n  openai_realtime:\n    turn_detection: {%s}\n"
    path = "providers.openai_realtime.turn_detection"
    assert f"{path}.threshold" in errors(td % "threshold: 1.0")
    assert f"{path}.threshold" in warnings(td % "threshold: 0.97")
    assert f"{path}.threshold" in warnings(td % "threshold: 0.01")
    assert f"{path}.silence_duration_ms" in warnings(td % "silence_duration_ms: 50")
    assert errors(td % "threshold: 0.5, silence_duration_ms: 500") == {}
    assert not {f"{path}.threshold", f"{path}.silence_duration_ms"} & set(
        warnings(td % "threshold: 0.5, silence_duration_ms: 500")
    )


# --- the commands -----------------------------------------------------------------------------------------


@pytest.mark.slow  # measured 1.6 s (four interpreter starts)
def test_cli_lists_every_error_and_roles_name_the_first(tmp_path):
    bad = tmp_path / "six.yaml"
    bad.write_text(SIX_MISTAKES)
    res = run_cli("check-config", str(bad), env=ENV)
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[0] == f"{bad}: 7 errors in the configuration"
    assert (
        lines[1] == "   1. line 1: default_context: no context named 'suport' (did you mean 'support'?); known: support"
    )
    assert [line.split(": ")[1] for line in lines[1:8]] == [
        "default_context",
        "providers.openai_realtime.api_key",
        "providers.openai_realtime.voise",
        "contexts.support.greeting",
        "contexts.support.tools[1]",
        "media_worker.greeting_guard_ms",
        "media_worker.capacity",
    ]
    assert "your_api_key_here" not in res.stderr and "Traceback" not in res.stderr

    role = run_cli("--config", str(bad), "controller", env=ENV)
    assert role.returncode == 1
    assert role.stderr.splitlines() == [
        f"{bad}: line 1: default_context: no context named 'suport' (did you mean 'support'?); known: support",
        f"(and 6 more errors: run `voice-agent check-config {bad}` to list them all)",
    ]

    ok = run_cli("check-config", "-q", str(CONFIG), env=ENV)
    assert ok.returncode == 0 and ok.stdout.startswith(f"# {CONFIG}: OK"), ok.stderr


@pytest.mark.slow  # measured 1.5 s (four interpreter starts)
def test_read_only_commands_need_no_api_key(tmp_path, redis_url, prefix):
    no_key = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
    status = run_cli("--config", str(CONFIG), "status", env=no_key)
    assert status.returncode == 0, status.stderr
    assert "controllers: 0 live" in status.stdout

    assert run_cli("check-config", "-q", "--no-secrets", str(CONFIG), env=no_key).returncode == 0
    strict = run_cli("check-config", "-q", str(CONFIG), env=no_key)
    assert strict.returncode == 1 and "OPENAI_API_KEY is not set" in strict.stderr
    # The roles still require it.
    role = run_cli("--config", str(CONFIG), "media-worker", env=no_key)
    assert role.returncode == 1 and "providers.openai_realtime.api_key" in role.stderr


def test_a_bad_env_file_is_a_config_error_that_does_not_quote_the_line(tmp_path, monkeypatch):
    # Before: an EnvError traceback that printed the line, key included.
    secret = "sk-proj-" + "s3cr3t" * 4
    (tmp_path / ".env").write_text(f"COMPANY_NAME=x\nOPENAI_API_KEY {secret}\n")
    config = tmp_path / "ai-agent.yaml"
    config.write_text("company_name: ${COMPANY_NAME}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    [problem] = check(config)
    assert problem.message == (
        f"cannot use the .env file: {tmp_path / '.env'} line 2: expected KEY=VALUE"
        " (the line is not shown: it may hold a secret)"
    )
    assert secret not in problem.message


def test_messages_say_what_was_wrong():
    assert errors("tool_worker: {queues: []}\n") == {
        "tool_worker.queues": "expected a list of at least 1 item, got an empty list"
    }
    assert errors("company_name: [a, b]\n") == {"company_name": "expected a string, got a list of 2 items"}
    assert errors("media_worker: {heartbeat_ms: 1000, stale_after_ms: 800}\n") == {
        "media_worker": "stale_after_ms (800) must be longer than heartbeat_ms (1000): every worker would look "
        "dead between two beats"
    }
    assert errors("redis: {host: localhost}\n") == {"redis.host": "unknown key (this section takes: url, key_prefix)"}


def test_transfer_offered_without_destinations():
    offered = "contexts:\n  a: {tools: [transfer, hangup_call]}\n"
    assert "tools.transfer.destinations" in warnings(offered)
    with_one = offered + "tools:\n  transfer:\n    destinations: {sales: {target: '6001'}}\n"
    assert "tools.transfer.destinations" not in warnings(with_one)
    assert "tools.transfer.destinations" not in warnings("contexts:\n  a: {tools: [hangup_call]}\n")
