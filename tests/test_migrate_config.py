"""`voice-agent migrate-config`: the existing voice agent's config/ai-agent.yaml becomes ours.

The fixtures are small examples of our own written in the old project's shape (tests/fixtures/migrate/). Each
migrated file must load with our loader, and the report must account for every old key exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shared.config import load_config
from shared.config.migrate import Outcome, migrate, read_old, report
from tests.conftest import TEST_API_KEY

FIXTURES = Path(__file__).parent / "fixtures" / "migrate"
NOW = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def _migrate(name: str, env: dict[str, str] | None = None):
    return migrate(read_old(FIXTURES / name), name, env or {}, NOW)


def _outcomes(migration) -> dict[str, tuple[Outcome, str]]:
    """old key -> (outcome, our key(s)); each old key appears once."""
    olds = [e.old for e in migration.entries]
    assert len(olds) == len(set(olds)), "an old key is reported twice"
    return {e.old: (e.outcome, e.new) for e in migration.entries}


def _loads(text: str, tmp_path: Path, env: dict[str, str]):
    path = tmp_path / "ai-agent.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env=env).config


def test_minimal_config_maps_every_key_and_loads(tmp_path):
    migration = _migrate("minimal.yaml")
    assert migration.valid, migration.errors
    assert _outcomes(migration) == {
        "config_version": (Outcome.DROPPED, ""),
        "default_provider": (Outcome.DROPPED, ""),
        "audio_transport": (Outcome.MAPPED, "default_profile"),
        "providers.openai_realtime.enabled": (Outcome.MAPPED, "providers.openai_realtime.enabled"),
        "providers.openai_realtime.api_key": (Outcome.MAPPED, "providers.openai_realtime.api_key"),
        "providers.openai_realtime.model": (Outcome.MAPPED, "providers.openai_realtime.model"),
        "providers.openai_realtime.voice": (Outcome.MAPPED, "providers.openai_realtime.voice"),
    }
    assert migration.unset == ["OPENAI_API_KEY"]
    # The placeholder is kept as written, and expands when the file is loaded.
    assert "api_key: ${OPENAI_API_KEY}\n" in migration.text
    config = _loads(migration.text, tmp_path, {"OPENAI_API_KEY": TEST_API_KEY})
    assert config.providers.openai_realtime.api_key == TEST_API_KEY
    assert config.default_profile == "telephony_pcm16_24k"


def test_typical_openai_deployment(tmp_path):
    migration = _migrate("typical.yaml")
    assert migration.valid, migration.errors
    outcomes = _outcomes(migration)
    by_outcome = {kind: sorted(old for old, (o, _) in outcomes.items() if o is kind) for kind in Outcome}
    assert by_outcome[Outcome.BY_HAND] == []
    assert by_outcome[Outcome.DROPPED] == sorted(
        [
            "config_version",
            "default_provider",
            "active_pipeline",
            "downstream_mode",
            "farewell_hangup_delay_sec",
            "asterisk.ws_ping_interval_sec",
            "audiosocket.format",
            "external_media.rtp_host",
            "external_media.port_range",
            "external_media.codec",
            "llm.prompt",
            "llm.model",
            "barge_in.enabled",
            "barge_in.initial_protection_ms",
            "barge_in.min_ms",
            "barge_in.energy_threshold",
            "barge_in.pipeline_min_ms",
            "vad.enhanced_enabled",
            "vad.webrtc_start_frames",
            "contexts.default.profile",
            "providers.openai_realtime.type",
            "providers.openai_realtime.api_version",
            "providers.openai_realtime.input_encoding",
            "providers.openai_realtime.input_sample_rate_hz",
            "providers.openai_realtime.provider_input_encoding",
            "providers.openai_realtime.provider_input_sample_rate_hz",
            "providers.openai_realtime.output_encoding",
            "providers.openai_realtime.output_sample_rate_hz",
            "providers.openai_realtime.target_encoding",
            "providers.openai_realtime.target_sample_rate_hz",
            "providers.openai_realtime.egress_pacer_enabled",
            "providers.openai_realtime.temperature",
            "providers.openai_realtime.continuous_input",
            "streaming",
            "tools.enabled",
            "tools.cancel_transfer.allow_during_ring",
            "tools.hangup_call.require_confirmation",
            "tools.send_email_summary.provider",
            "tools.send_email_summary.from_name",
            "tools.request_transcript.provider",
            "tools.request_transcript.from_email",
            "tools.request_transcript.confirm_email",
        ]
    )
    # A few mappings whose target differs from the old path.
    assert outcomes["llm.initial_greeting"] == (Outcome.MAPPED, "providers.openai_realtime.greeting")
    assert outcomes["providers.openai_realtime.response_modalities"][1] == "providers.openai_realtime.modalities"
    assert outcomes["providers.openai_realtime.project_id"][1] == "providers.openai_realtime.project"
    assert outcomes["barge_in.greeting_protection_ms"][1] == "media_worker.greeting_guard_ms"
    assert outcomes["audiosocket.host"][1] == "media_worker.listen_host, media_worker.advertise_host"
    assert outcomes["tools.transfer.predial_timeout_seconds"][1] == "tools.transfer.ring_timeout_ms"
    assert outcomes["on_provider_failure"][1] == "controller.fallback.action"
    mapped = len(by_outcome[Outcome.MAPPED])
    assert mapped == 54 and len(outcomes) == mapped + 42

    env = {"OPENAI_API_KEY": TEST_API_KEY, "AUDIOSOCKET_PORT": "9090"}
    config = _loads(migration.text, tmp_path, env)
    provider = config.providers.openai_realtime
    assert provider.tools == [
        "transfer",
        "cancel_transfer",
        "hangup_call",
        "leave_voicemail",
        "send_email_summary",
        "request_transcript",
    ]
    assert provider.greeting == "Hello, how can I help you today?"  # llm.* fills what the provider left empty
    assert provider.instructions == "You are a concise voice assistant."  # the provider's own wins
    assert provider.turn_detection.silence_duration_ms == 1000
    assert config.default_context == "default"
    default, sales = config.contexts["default"], config.contexts["sales"]
    assert "{caller_number}" in default.prompt and "{caller_id}" not in default.prompt
    assert default.tools == ["transfer", "hangup_call", "send_email_summary"]  # check_extension_status left out
    assert sales.tools == []  # there, a context without a tools list had none
    assert sales.voice == "shimmer"
    assert config.tools.transfer.ring_timeout_ms == 25_000
    assert set(config.tools.transfer.destinations) == {"sales_team", "support_agent"}
    assert config.tools.send_email_summary.recipients == ["ops@example.com"]
    assert config.email.from_address == "Example Corp Agent <agent@example.com>"
    assert config.controller.fallback.action == "continue" and config.controller.fallback.context == "ai-fallback"
    assert config.controller.fallback.prompt == "sound:sorry-youre-having-problems"
    assert config.media_worker.advertise_host == "192.0.2.20"
    # `${VAR:=default}` (the old loader's) is written in ours and still reads the environment.
    assert "${AUDIOSOCKET_PORT:-8090}" in migration.text
    assert config.media_worker.audiosocket_port == 9090
    assert config.asterisk.ari_url == "http://127.0.0.1:8088"  # from ASTERISK_* as the old project did

    notes = {e.old: e.reason for e in migration.entries}
    assert "{current_date}" in notes["contexts.default.prompt"]
    assert "check_extension_status" in notes["contexts.default.tools"]
    assert "live_agent" in notes["tools.transfer.destinations.support_agent"]


def test_unsupported_providers_pipelines_and_unknown_keys():
    migration = _migrate("unsupported.yaml", {"OPENAI_API_KEY": TEST_API_KEY})
    assert migration.valid, migration.errors
    outcomes = _outcomes(migration)
    by_hand = sorted(old for old, (o, _) in outcomes.items() if o is Outcome.BY_HAND)
    assert by_hand == sorted(
        [
            "dashboard_theme",
            "barge_in.enabled",
            "contexts.support.provider",
            "providers.openai_realtime.turn_detection.vad_flavour",
            "providers.openai_realtime_sales",
            "tools.transfer.destinations.dialer",
            "tools.extensions",
            "(no context named default)",
        ]
    )
    reasons = {e.old: e.reason for e in migration.entries}
    assert reasons["dashboard_theme"] == "unknown key"
    assert reasons["pipelines"].startswith("not supported: local and modular STT/LLM/TTS pipelines")
    assert reasons["providers.local"] == "not supported: provider local (only OpenAI Realtime here)"
    assert reasons["tools.crm_lookup"] == "not supported: HTTP lookup and webhook tools"
    assert reasons["tools.transfer.destinations.old_queue"] == "empty (null) destination"
    assert {e.old: e.keys for e in migration.entries}["pipelines"] == 5
    # Every by-hand item is also in the file's header, for whoever opens it later.
    header = migration.text.split("\n\n", 1)[0]
    assert all(f"#   - {old}:" in header for old in by_hand)

    # A key written in clear never reaches the output or the report; the file reads OPENAI_API_KEY instead.
    secret = "sk-fake-not-a-real-key-000000000000"
    assert secret not in migration.text and secret not in report(migration, "old", "new")
    assert "api_key: ${OPENAI_API_KEY}" in migration.text
    tree = yaml.safe_load(migration.text)
    assert tree["default_profile"] == "telephony_ulaw_8k"  # externalmedia with ulaw: RTP u-law end to end
    assert tree["media_worker"] == {
        "listen_host": "0.0.0.0",
        "rtp_port_min": 18080,
        "rtp_port_max": 18099,
        "allowed_media_hosts": ["192.0.2.10"],
    }
    assert "tools" not in tree  # the vicidial destination is not half-copied
    assert "provider" not in tree["contexts"]["support"]


def test_a_result_that_does_not_validate_lists_its_errors():
    doc = {"vad": {"webrtc_aggressiveness": 7}, "audiosocket": {"port": 70000}, "audio_transport": "audiosocket"}
    migration = migrate(doc, "old.yaml", {"OPENAI_API_KEY": TEST_API_KEY}, NOW)
    assert not migration.valid
    assert sorted(p.path for p in migration.errors) == ["media_worker.audiosocket_port", "vad.webrtc_aggressiveness"]
    assert "NOT valid (2 errors)" in report(migration, "old.yaml", "stdout")


def test_a_transform_that_meets_an_unexpected_value_reports_it():
    doc = {"tools": {"transfer": {"predial_timeout_seconds": "${RING:-30}", "destinations": {"x": "6001"}}}}
    migration = migrate(doc, "old.yaml", {"OPENAI_API_KEY": TEST_API_KEY}, NOW)
    reasons = {e.old: (e.outcome, e.reason) for e in migration.entries}
    assert reasons["tools.transfer.predial_timeout_seconds"][0] is Outcome.BY_HAND
    assert reasons["tools.transfer.destinations.x"] == (Outcome.BY_HAND, "expected a mapping with target and type")
    assert migration.valid


# --- the command, end to end ----------------------------------------------------------------------------------


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ASTERISK_", "SMTP_", "AI_AGENT"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "voice_agent", "migrate-config", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_writes_yaml_only_to_stdout_and_the_report_to_stderr(tmp_path):
    done = _run(str(FIXTURES / "typical.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Migrated by `voice-agent migrate-config` from ")
    tree = yaml.safe_load(done.stdout)
    assert tree["providers"]["openai_realtime"]["model"] == "gpt-realtime"
    assert "mapped   llm.initial_greeting -> providers.openai_realtime.greeting" in done.stderr
    assert done.stderr.rstrip().endswith("54 mapped, 42 dropped, 0 by hand; the result is a valid configuration")
    assert "migrate-config" not in done.stdout.split("\n", 1)[1]  # nothing of the report on stdout

    # -o writes the file; an invalid result is still written, with exit 1 and the errors on stderr.
    bad = tmp_path / "old.yaml"
    bad.write_text("vad:\n  webrtc_aggressiveness: 9\n", encoding="utf-8")
    out = tmp_path / "new.yaml"
    done = _run(str(bad), "-o", str(out), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "vad.webrtc_aggressiveness: expected an integer in [0, 3], got 9" in done.stderr
    assert "webrtc_aggressiveness: 9" in out.read_text(encoding="utf-8")

    # Unreadable input: exit 2 with the cause, nothing written.
    bad.write_text("providers: [unclosed\n", encoding="utf-8")
    done = _run(str(bad), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert "not valid YAML" in done.stderr and "Traceback" not in done.stderr


def test_cli_refuses_missing_input_and_overwriting_it(tmp_path):
    done = _run(str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert done.returncode == 2 and "cannot read the file" in done.stderr and done.stdout == ""
    old = tmp_path / "old.yaml"
    old.write_text("config_version: 6\n", encoding="utf-8")
    done = _run(str(old), "-o", str(old), cwd=tmp_path)
    assert done.returncode == 2 and "would overwrite" in done.stderr
    assert old.read_text(encoding="utf-8") == "config_version: 6\n"


def test_keys_with_line_breaks_stay_inside_the_header_comment(tmp_path):
    doc = {"tools": {"evil\nproviders: {x: 1}": {"url": "http://x"}}, "dash\x1b[2Jboard": 1}
    migration = migrate(doc, "old\nvoice: x.yaml", {"OPENAI_API_KEY": TEST_API_KEY}, NOW)
    assert migration.valid, migration.errors
    header = migration.text.split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert "\x1b" not in report(migration, "old", "new")
    config = _loads(migration.text, tmp_path, {"OPENAI_API_KEY": TEST_API_KEY})
    assert config.providers.openai_realtime.voice == "alloy"


def test_read_old_rejects_what_is_not_a_config(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(Exception, match="the top level must be a mapping of sections, got list"):
        read_old(path)


def test_every_rule_of_the_table_can_be_reached():
    """A rule placed after a wildcard that already matches its keys would never apply: the order is the table's."""
    from shared.config.migrate import match_rule
    from shared.config.migrate_rules import RULES

    for index, rule in enumerate(RULES):
        parts = tuple(part.replace("*", "x") for part in rule.old.split("."))
        first = next(i for i, candidate in enumerate(RULES) if match_rule(candidate, parts) is not None)
        assert first == index, f"{rule.old!r} is shadowed by {RULES[first].old!r}"
