"""Loading `config/ai-agent.yaml`: the guide's config, every kind of error, env expansion, beta-key mapping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config
from shared.config.envsubst import EnvError, environment, expand, read_dotenv
from shared.config.ga_session import build_session
from shared.config.load import parse_config
from tests.conftest import CONFIG, ROOT, TEST_API_KEY
from voice_agent.cli import main as cli_main

GUIDE = ROOT / "tests" / "fixtures" / "guide-config.yaml"
ENV = {"OPENAI_API_KEY": TEST_API_KEY}


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml", ENV if env is None else env)
    return [str(p) for p in info.value.problems]


def paths_of(problems) -> list[str]:
    return [p.path for p in problems]


# --- the guide's config and the shipped one ---------------------------------------------------------------


def test_guide_config_loads_and_maps_to_a_ga_session():
    loaded = load_config(GUIDE, env=ENV)
    provider = loaded.config.providers.openai_realtime
    assert provider.api_key == TEST_API_KEY
    assert provider.tools == [
        "transfer",
        "cancel_transfer",
        "hangup_call",
        "leave_voicemail",
        "send_email_summary",
        "request_transcript",
    ]
    assert loaded.config.contexts["demo_openai"].profile == "telephony_pcm16_24k"
    assert loaded.config.vad.webrtc_aggressiveness == 1

    warned = {p.path: p for p in loaded.warnings}
    # The guide offers the transfer tool but configures no destination to transfer to.
    assert set(warned) == {
        "providers.openai_realtime.model",
        "providers.openai_realtime.temperature",
        "tools.transfer.destinations",
    }
    assert "retired" in warned["providers.openai_realtime.model"].message
    assert "'gpt-realtime-2.1'" in warned["providers.openai_realtime.model"].message
    assert warned["providers.openai_realtime.temperature"].line == 11  # the guide's `temperature:` line

    session = build_session(provider, instructions="be brief")
    assert session == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "be brief",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 1000,
                    "create_response": True,
                },
                "transcription": {"model": "gpt-4o-mini-transcribe"},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "shimmer"},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": 4096,
    }


def test_shipped_config_loads_cleanly_with_secrets_masked():
    loaded = load_config(CONFIG, env=ENV)
    assert loaded.warnings == []
    assert loaded.config.asterisk.app_name == "asterisk-ai-voice-agent"
    masked = loaded.masked()
    assert masked["providers"]["openai_realtime"]["api_key"] == "***"
    assert TEST_API_KEY in loaded.secrets


def test_check_config_prints_masked_config_or_every_error(tmp_path):
    env = {"OPENAI_API_KEY": TEST_API_KEY, "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "check-config", str(CONFIG)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"# {CONFIG}: OK")
    assert "api_key: '***'" in ok.stdout
    assert TEST_API_KEY not in ok.stdout + ok.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  openai_realtime:\n    turn_detection:\n      threshold: high\n    voise: ash\n")
    res = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "check-config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 1
    assert res.stdout == ""
    assert f"{bad}: 2 errors in the configuration" in res.stderr
    assert (
        "line 4: providers.openai_realtime.turn_detection.threshold: expected a number in [0, 1], got 'high'"
    ) in res.stderr
    assert "line 5: providers.openai_realtime.voise: unknown key (did you mean 'voice'?)" in res.stderr
    assert "Traceback" not in res.stderr


# --- each kind of error ----------------------------------------------------------------------------------


def test_wrong_type_names_the_key_and_the_value():
    assert errors_of("media_worker:\n  capacity: lots\n") == [
        "line 2: media_worker.capacity: expected an integer in [1, 10000], got 'lots'"
    ]
    assert errors_of("providers:\n  openai_realtime:\n    enabled: maybe\n") == [
        "line 3: providers.openai_realtime.enabled: expected true or false, got 'maybe'"
    ]
    assert errors_of("contexts:\n  sales: just a string\n") == [
        "line 2: contexts.sales: expected a mapping of settings, got 'just a string'"
    ]


def test_out_of_range_and_not_allowed_values():
    assert errors_of("providers:\n  openai_realtime:\n    turn_detection:\n      threshold: 1.5\n") == [
        "line 4: providers.openai_realtime.turn_detection.threshold: expected a number in [0, 1], got 1.5"
    ]
    assert errors_of("vad:\n  webrtc_aggressiveness: 4\n") == [
        "line 2: vad.webrtc_aggressiveness: expected an integer in [0, 3], got 4"
    ]
    [tool_error] = errors_of("providers:\n  openai_realtime:\n    tools: [transfer, hangup]\n")
    assert tool_error.startswith("line 3: providers.openai_realtime.tools[1]: expected one of ")
    assert tool_error.endswith("got 'hangup' (did you mean 'hangup_call'?)")
    assert errors_of("media_worker:\n  rtp_port_min: 20000\n  rtp_port_max: 10000\n") == [
        "line 1: media_worker: rtp_port_min (20000) must not be above rtp_port_max (10000)"
    ]


def test_missing_required_keys():
    assert errors_of("tools:\n  transfer:\n    destinations:\n      sales: {description: Sales}\n") == [
        "line 4: tools.transfer.destinations.sales.target: required key is missing"
    ]
    assert errors_of("company_name: x\n", env={}) == [
        "providers.openai_realtime.api_key: required when the provider is enabled "
        "(set OPENAI_API_KEY in the environment or .env)"
    ]


def test_unknown_keys_get_a_did_you_mean():
    assert errors_of("providers:\n  openai_realtime:\n    turn_detecton: {}\n") == [
        "line 3: providers.openai_realtime.turn_detecton: unknown key (did you mean 'turn_detection'?)"
    ]
    assert errors_of("redis:\n  host: localhost\n") == [
        "line 2: redis.host: unknown key (this section takes: url, key_prefix)"
    ]
    assert errors_of("providers:\n  deepgram: {}\n") == [
        "line 2: providers.deepgram: unknown key (this section takes: openai_realtime)"
    ]


def test_bad_placeholders():
    assert errors_of("company_name: ${COMPANY}\n", env=ENV) == [
        "line 1: company_name: environment variable COMPANY is not set "
        "(set it in the environment or in .env, or write ${COMPANY:-default})"
    ]
    assert errors_of("company_name: ${1ABC}\n") == [
        "line 1: company_name: '${1ABC}' is not a valid placeholder (use ${NAME} or ${NAME:-default})"
    ]
    assert errors_of("company_name: 'x ${ABC'\n") == [
        "line 1: company_name: unterminated placeholder in 'x ${ABC' (missing '}')"
    ]


def test_every_error_is_reported_at_once_in_file_order():
    text = (
        "providers:\n"
        "  openai_realtime:\n"
        "    api_key: ${NOPE}\n"
        "    turn_detection:\n"
        "      threshold: high\n"
        "      silence_duration_ms: -5\n"
        "    voise: ash\n"
        "contexts:\n"
        "  a:\n"
        "    prompt: 3\n"
        "    prompt: 4\n"
        "media_worker: {capacity: 0}\n"
    )
    problems = errors_of(text, env={})
    assert [p.split(":")[0] for p in problems] == [
        "line 3",
        "line 5",
        "line 6",
        "line 7",
        "line 11",
        "line 11",
        "line 12",
    ]
    assert "NOPE is not set" in problems[0]
    assert "contexts.a.prompt: duplicate key" in problems[4]
    assert "contexts.a.prompt: expected a string, got 4" in problems[5]  # YAML keeps the last duplicate


def test_cross_references_are_checked():
    problems = errors_of("default_context: suport\ncontexts:\n  support:\n    profile: telephony_pcm16_24\n")
    assert problems[1].startswith(
        "line 4: contexts.support.profile: unknown profile 'telephony_pcm16_24' (did you mean 'telephony_pcm16_24k'?)"
    )
    assert problems[0] == "line 1: default_context: no context named 'suport' (did you mean 'support'?); known: support"


def test_file_level_problems(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: 1 error .*\n  - file not found"):
        load_config(tmp_path / "missing.yaml", env=ENV)
    assert errors_of("providers:\n  openai_realtime: [\n")[0].startswith("line 3: not valid YAML")
    assert errors_of("- a\n- b\n") == ["the top level must be a mapping of sections, got list"]


# --- ${VAR} expansion and .env ---------------------------------------------------------------------------


def test_expansion_rules():
    env = {"HOST": "pbx.local", "PORT": "8088", "FLAG": "true", "EMPTY": ""}
    assert expand("http://${HOST}:${PORT}", env) == "http://pbx.local:8088"
    assert expand("${PORT}", env) == 8088  # a whole placeholder takes the YAML type of its value
    assert expand("${FLAG}", env) is True
    assert expand("${MISSING:-fallback}", env) == "fallback"
    assert expand("${EMPTY:-fallback}", env) == "fallback"  # like the shell, :- also covers empty
    assert expand("${EMPTY}", env) == ""
    assert expand("$${HOST} costs $5", env) == "${HOST} costs $5"
    assert expand("no placeholders", env) == "no placeholders"
    with pytest.raises(EnvError, match="MISSING is not set"):
        expand("${MISSING}", env)


def test_expanded_values_are_typed_and_checked():
    loaded = parse_config(
        "asterisk:\n  ari_url: http://${HOST}:${PORT}\nemail:\n  smtp_port: ${PORT}\n",
        "t.yaml",
        {**ENV, "HOST": "pbx", "PORT": "2525"},
    )
    assert loaded.config.asterisk.ari_url == "http://pbx:2525"
    assert loaded.config.email.smtp_port == 2525
    assert errors_of("email:\n  smtp_port: ${PORT}\n", env={**ENV, "PORT": "seventy"}) == [
        "line 2: email.smtp_port: expected an integer in [1, 65535], got 'seventy'"
    ]


def test_dotenv_file_and_environment_precedence(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\n"
        "export OPENAI_API_KEY=from-dotenv-key\n"
        'COMPANY_NAME="Acme Corp"\n'
        "QUOTED='single # not a comment'\n"
        "TRAILING=value # a comment\n"
    )
    assert read_dotenv(dotenv) == {
        "OPENAI_API_KEY": "from-dotenv-key",
        "COMPANY_NAME": "Acme Corp",
        "QUOTED": "single # not a comment",
        "TRAILING": "value",
    }
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "ai-agent.yaml").write_text(
        "company_name: ${COMPANY_NAME}\nproviders:\n  openai_realtime:\n    api_key: ${OPENAI_API_KEY}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("COMPANY_NAME", "Env Wins Ltd")
    loaded = load_config(config_dir / "ai-agent.yaml")
    assert loaded.config.company_name == "Env Wins Ltd"
    assert loaded.config.providers.openai_realtime.api_key == "from-dotenv-key"
    bad = tmp_path / "bad.env"
    bad.write_text("JUST_A_WORD\n")
    with pytest.raises(EnvError, match=r"bad\.env line 1: expected KEY=VALUE \(the line is not shown"):
        environment([bad])


# --- beta-era keys mapped to the GA session --------------------------------------------------------------


def provider(yaml_body: str):
    text = "providers:\n  openai_realtime:\n" + "".join(f"    {line}\n" for line in yaml_body.splitlines())
    loaded = parse_config(text, "t.yaml", ENV)
    return loaded, loaded.config.providers.openai_realtime


def test_modalities_map_to_one_output_modality():
    loaded, p = provider('modalities: ["text", "audio"]')
    assert build_session(p, instructions="")["output_modalities"] == ["audio"]
    assert paths_of(loaded.notes) == ["providers.openai_realtime.modalities"]
    loaded, p = provider('modalities: ["text"]')
    assert build_session(p, instructions="")["output_modalities"] == ["text"]
    [warning] = [w for w in loaded.warnings if w.path.endswith("modalities")]
    assert "callers will hear silence" in warning.message


@pytest.mark.parametrize(
    ("beta", "ga"),
    [
        ("pcm16", {"type": "audio/pcm", "rate": 24000}),
        ("g711_ulaw", {"type": "audio/pcmu"}),
        ("g711_alaw", {"type": "audio/pcma"}),
        ("audio/pcmu", {"type": "audio/pcmu"}),
    ],
)
def test_audio_formats_map_to_ga_format_objects(beta, ga):
    loaded, p = provider(f"input_audio_format: {beta}\noutput_audio_format: {beta}")
    session = build_session(p, instructions="")
    assert session["audio"]["input"]["format"] == ga
    assert session["audio"]["output"]["format"] == ga
    assert {"providers.openai_realtime.input_audio_format", "providers.openai_realtime.output_audio_format"} <= set(
        paths_of(loaded.notes)
    )


def test_sample_rates():
    assert errors_of("providers:\n  openai_realtime:\n    input_audio_sample_rate: 4000\n") == [
        "line 3: providers.openai_realtime.input_audio_sample_rate: expected an integer in [8000, 48000], got 4000"
    ]
    loaded, _ = provider("input_audio_format: g711_ulaw\ninput_audio_sample_rate: 24000")
    assert "providers.openai_realtime.input_audio_sample_rate" in paths_of(loaded.warnings)


def test_tokens_voice_and_temperature():
    loaded, p = provider("max_response_output_tokens: 500\nvoice: coral\ntemperature: 0.7")
    session = build_session(p, instructions="")
    assert session["max_output_tokens"] == 500
    assert session["audio"]["output"]["voice"] == "coral"
    assert "temperature" not in str(session)
    assert "providers.openai_realtime.temperature" in paths_of(loaded.warnings)
    assert {"providers.openai_realtime.max_response_output_tokens", "providers.openai_realtime.voice"} <= set(
        paths_of(loaded.notes)
    )
    _, p = provider('max_response_output_tokens: "inf"')
    assert build_session(p, instructions="")["max_output_tokens"] == "inf"
    loaded, _ = provider("voice: shimer")
    [voice] = [w for w in loaded.warnings if w.path.endswith(".voice")]
    assert "did you mean 'shimmer'?" in voice.message


def test_turn_detection_keys():
    _, p = provider("turn_detection_enabled: false")
    assert build_session(p, instructions="")["audio"]["input"]["turn_detection"] is None
    _, p = provider("turn_detection_type: semantic_vad\nturn_detection:\n  eagerness: high")
    assert build_session(p, instructions="")["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
    }
    loaded, p = provider(
        "turn_detection_type: semantic_vad\nturn_detection:\n  type: server_vad\n"
        "  interrupt_response: false\n  idle_timeout_ms: 8000"
    )
    td = build_session(p, instructions="")["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad" and td["interrupt_response"] is False and td["idle_timeout_ms"] == 8000
    assert "providers.openai_realtime.turn_detection_type" in paths_of(loaded.warnings)
    loaded, _ = provider("turn_detection:\n  type: semantic_vad\n  threshold: 0.7")
    assert "providers.openai_realtime.turn_detection.threshold" in paths_of(loaded.warnings)


def test_models_retired_and_sunsetting():
    loaded, p = provider("model: gpt-4o-mini-realtime-preview-2024-12-17\ntools: [hangup_call]")
    [w] = loaded.warnings
    assert "'gpt-realtime-2.1-mini'" in w.message and w.path == "providers.openai_realtime.model"
    loaded, _ = provider("model: gpt-realtime\ntools: [hangup_call]")
    [w] = loaded.warnings
    assert "2027-01-20" in w.message
    loaded, _ = provider("model: gpt-realtime-2.1\ntools: [hangup_call]")
    assert loaded.warnings == []
    loaded, _ = provider("model: gpt-realtime-2.1")
    assert paths_of(loaded.warnings) == ["providers.openai_realtime.tools"]  # no tools: cannot hang up


def test_advice_from_the_guide():
    loaded = parse_config("vad:\n  webrtc_aggressiveness: 0\n", "t.yaml", ENV)
    [w] = [w for w in loaded.warnings if w.path == "vad.webrtc_aggressiveness"]
    assert "MUST be 1" in w.message and w.line == 2


def test_check_config_masks_the_secrets_in_a_urls_query(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    good = tmp_path / "good.yaml"
    good.write_text("providers:\n  openai_realtime:\n    base_url: wss://x/v1?api_key=sk-123&model=m\n")
    assert cli_main(["check-config", str(good)]) == 0
    out = capsys.readouterr()
    assert "sk-123" not in out.out + out.err
    assert "base_url: wss://x/v1?api_key=***&model=m" in out.out

    bad = tmp_path / "bad.yaml"  # the URL is quoted in the error
    bad.write_text("providers:\n  openai_realtime:\n    base_url: https://x/v1?api_key=sk-123\n")
    assert cli_main(["check-config", str(bad)]) == 1
    out = capsys.readouterr()
    assert "sk-123" not in out.out + out.err
    assert "got 'https://x/v1?api_key=***'" in out.err


# --- OPENAI_API_KEY_FILE (the key a media worker re-reads on SIGHUP) ------------------------------------------


def test_the_key_file_wins_over_the_environment_and_its_problems_are_named(tmp_path):
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-from-the-file-1234\n")  # the newline an editor adds is not part of the key
    loaded = load_config(CONFIG, env={**ENV, "OPENAI_API_KEY_FILE": str(key_file)})
    assert loaded.config.providers.openai_realtime.api_key == "sk-from-the-file-1234"
    assert "sk-from-the-file-1234" in loaded.secrets  # masked in every log line and output

    for content, problem in (("", "is empty"), ("sk-a\nsk-b\n", "holds more than one line")):
        key_file.write_text(content)
        with pytest.raises(ConfigError, match=f"OPENAI_API_KEY_FILE: {key_file} {problem}"):
            load_config(CONFIG, env={**ENV, "OPENAI_API_KEY_FILE": str(key_file)})
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY_FILE: cannot read .*missing\.key: No such file"):
        load_config(CONFIG, env={**ENV, "OPENAI_API_KEY_FILE": str(tmp_path / "missing.key")})
    # A command that needs no key (status) runs with a broken key file, as it does without a key.
    env = {"OPENAI_API_KEY_FILE": str(tmp_path / "missing.key")}
    assert load_config(CONFIG, env=env, require_api_key=False).config.providers.openai_realtime.api_key == ""
