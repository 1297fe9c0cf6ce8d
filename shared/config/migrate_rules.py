"""What each key of the existing voice agent's `config/ai-agent.yaml` becomes here: the table `migrate` applies.

The project we replace (AAVA, v6/v7 config format) is a multi-provider engine; we speak only OpenAI Realtime,
run as a cluster, and let the controller pick Asterisk's media format. So each old key is either mapped (to a
path of ours, through one of the small transforms below when the value changes shape), dropped with the
reason it has no place here, or left to a human with the reason it cannot be translated safely.

Rules are tried in order; the first whose pattern matches a key wins and consumes that key's whole value, so
a specific rule must come before a wildcard one. `*` in a pattern matches any one key; `{0}`, `{1}` in the
new path insert the keys the wildcards matched. Nothing here reads or prints a value that may be a secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.config.schema import ALL_TOOLS

PROVIDER = "providers.openai_realtime"


class Drop(Exception):
    """Raised by a transform: the key has no place here (the message says why)."""


class NeedsHuman(Exception):
    """Raised by a transform: the value cannot be translated safely (the message says what to do)."""


@dataclass(frozen=True)
class Append:
    """A transform's result: one item added to the list at the rule's new path."""

    item: Any


@dataclass(frozen=True)
class Writes:
    """A transform's result: several of our keys from one old key, {our path: value}."""

    values: dict[str, Any]


@dataclass(frozen=True)
class Checked:
    """A transform's result: the value, and something the user should check (kept as a note in the report)."""

    value: Any
    note: str


@dataclass(frozen=True)
class Ctx:
    """What a transform may look at besides the value: the whole old document and the keys `*` matched."""

    doc: Mapping[str, Any]
    keys: tuple[str, ...]

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.doc
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


Transform = Callable[[Any, Ctx], Any]


@dataclass(frozen=True)
class Rule:
    old: str  # dotted path in the old file; `*` matches any one key
    new: str = ""  # our dotted path; `{0}` … are the keys the wildcards matched
    transform: Transform | None = None  # old value -> our value (or Append / Writes / Checked; raises Drop)
    drop: str = ""  # why the key has no place here
    human: str = ""  # why a person has to translate it


# ---------------------------------------------------------------------------------------------------------------
# Placeholders. The old loader knows ${VAR}, ${VAR:-default}, ${VAR:=default} (same as :- there) and bare $VAR.

_PLACEHOLDER = re.compile(r"\$\{([^}:]+)(:-|:=)?([^}]*)\}")
_BARE = re.compile(r"(?<![$\w])\$([A-Za-z_][A-Za-z0-9_]*)")


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and "$" in value and bool(_PLACEHOLDER.search(value) or _BARE.search(value))


def placeholder_default(value: str) -> str | None:
    """The default of a value that is one `${VAR:-default}`; None when it has none or is not one placeholder."""
    match = _PLACEHOLDER.fullmatch(value.strip())
    if match is None or not match.group(2):
        return None
    return match.group(3)


def our_placeholders(text: str) -> tuple[str, list[str]]:
    """`text` in our loader's syntax, and what was rewritten: `${VAR:=d}` -> `${VAR:-d}`, `$VAR` -> `${VAR}`."""
    changes: list[str] = []

    def colon_equals(match: re.Match[str]) -> str:
        if match.group(2) == ":=":
            changes.append(f"${{{match.group(1)}:=…}} written as ${{{match.group(1)}:-…}} (the same there)")
            return f"${{{match.group(1)}:-{match.group(3)}}}"
        return match.group(0)

    def bare(match: re.Match[str]) -> str:
        changes.append(f"${match.group(1)} written as ${{{match.group(1)}}}")
        return f"${{{match.group(1)}}}"

    return _BARE.sub(bare, _PLACEHOLDER.sub(colon_equals, text)), changes


def env_names(text: str) -> list[tuple[str, bool]]:
    """(name, has a default) of every placeholder in a value of ours."""
    return [(m.group(1), bool(m.group(2))) for m in _PLACEHOLDER.finditer(text)]


# ---------------------------------------------------------------------------------------------------------------
# Transforms.

_KNOWN_TOOLS = frozenset(ALL_TOOLS)
# The old template variables that have an equal here, and those we do not fill in.
_TEMPLATE_RENAMES = {"caller_id": "caller_number"}
_TEMPLATE_OURS = ("caller_name", "caller_number", "company_name")
_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template(text: Any, ctx: Ctx) -> Any:
    """A prompt or greeting: `{caller_id}` becomes `{caller_number}`; variables we do not fill are pointed out."""
    if not isinstance(text, str):
        return text
    out = text
    for old, new in _TEMPLATE_RENAMES.items():
        out = out.replace("{" + old + "}", "{" + new + "}")
    unknown = sorted({m.group(1) for m in _TEMPLATE_VAR.finditer(out)} - set(_TEMPLATE_OURS))
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        return Checked(out, f"{names} not filled in here (only {', '.join(_TEMPLATE_OURS)}): reword it")
    return out


def tool_list(value: Any, ctx: Ctx) -> Any:
    """A context's tool allowlist: ours are kept, the old project's others (HTTP, MCP, calendar…) named."""
    if not isinstance(value, list):
        raise NeedsHuman("expected a list of tool names")
    kept = [t for t in value if t in _KNOWN_TOOLS]
    other = [str(t) for t in value if t not in _KNOWN_TOOLS]
    if other:
        return Checked(kept, f"not supported here, left out: {', '.join(other)}")
    return kept


def enables(tool: str) -> Transform:
    """`tools.<tool>.enabled: true` puts the tool in the provider's tool list."""

    def transform(value: Any, ctx: Ctx) -> Any:
        if value is True:
            return Append(tool)
        raise Drop("disabled in the old file: not in the provider's tools")

    return transform


def send_summary_enabled(value: Any, ctx: Ctx) -> Any:
    if value is True:
        return Writes(
            {f"{PROVIDER}.tools": Append("send_email_summary"), "tools.send_email_summary.send_after_every_call": True}
        )
    return Writes({"tools.send_email_summary.send_after_every_call": False})


def _tool_enabled(tool: str, ctx: Ctx) -> None:
    """Settings of a tool the old file had switched off are not worth a person's time."""
    if ctx.get(f"tools.{tool}.enabled") is not True:
        raise Drop("the tool is disabled in the old file")


def address_list(tool: str) -> Transform:
    """One address (often `${VAR:-}`) -> a list of addresses."""

    def transform(value: Any, ctx: Ctx) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise Drop("empty")
        default = placeholder_default(value)
        if default is not None and not default.strip():
            _tool_enabled(tool, ctx)
            raise NeedsHuman("the address came from the environment with an empty default: write the address(es)")
        return [value]

    return transform


def sender(tool: str) -> Transform:
    """`tools.<tool>.from_email` (+ `from_name` beside it) -> `email.from_address`: "Name <address>"."""

    def transform(value: Any, ctx: Ctx) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise Drop("empty")
        name = ctx.get(f"tools.{tool}.from_name")
        return f"{name} <{value}>" if isinstance(name, str) and name.strip() else value

    return transform


def sender_name(value: Any, ctx: Ctx) -> Any:
    raise Drop("part of email.from_address (with from_email)")


def first_sender(value: Any, ctx: Ctx) -> Any:
    """request_transcript's sender, unless send_email_summary already gave ours (one sender for all mail)."""
    if ctx.get("tools.send_email_summary.from_email"):
        raise Drop("one sender for all mail here: email.from_address, taken from send_email_summary")
    return sender("request_transcript")(value, ctx)


def mail_provider(tool: str) -> Transform:
    def transform(value: Any, ctx: Ctx) -> Any:
        if value == "smtp":
            raise Drop("mail always goes through SMTP here (the email section)")
        _tool_enabled(tool, ctx)
        raise NeedsHuman("mail goes through SMTP here, not Resend: check the email section (SMTP_HOST, …)")

    return transform


def provider_enabled(value: Any, ctx: Ctx) -> Any:
    if value is False:
        return Checked(False, "disabled there: every call would go to controller.fallback; set true to take calls")
    return value


def seconds_to_ms(value: Any, ctx: Ctx) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NeedsHuman("expected a number of seconds (a placeholder cannot be converted): write it in ms")
    return int(round(value * 1000))


def port_range(value: Any, ctx: Ctx) -> Any:
    """`'18080:18099'` -> media_worker.rtp_port_min/max."""
    low, sep, high = str(value).partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise NeedsHuman("expected 'first:last' port numbers")
    return Writes({"media_worker.rtp_port_min": int(low), "media_worker.rtp_port_max": int(high)})


def audio_transport(value: Any, ctx: Ctx) -> Any:
    """The old transport (+ its codec) -> our default_profile, which fixes transport and formats together."""
    if value == "audiosocket":
        # The controller asks Asterisk for slin24 itself: 24 kHz PCM to the model, no resampling.
        return "telephony_pcm16_24k"
    if value == "externalmedia":
        codec = ctx.get("external_media.codec", "ulaw")
        if codec in ("ulaw", "mulaw"):
            return "telephony_ulaw_8k"
        raise NeedsHuman(f"RTP with codec {codec!r}: define a profile (transport: rtp, format: ulaw or slin)")
    raise NeedsHuman(f"unknown transport {value!r}: choose default_profile")


def when_transport(transport: str, then: Transform | None = None) -> Transform:
    """A setting of one transport's section: used only when that transport was the active one."""

    def transform(value: Any, ctx: Ctx) -> Any:
        active = ctx.get("audio_transport", "externalmedia")  # the old model's default
        if active != transport:
            raise Drop(f"unused in the old file (audio_transport: {active})")
        return then(value, ctx) if then else value

    return transform


def listen_host(value: Any, ctx: Ctx) -> Any:
    """The old bind address; a specific one is also where Asterisk reached the engine."""
    if value in ("0.0.0.0", "::", "127.0.0.1", "localhost") or is_placeholder(value):
        return value
    return Writes({"media_worker.listen_host": value, "media_worker.advertise_host": value})


def default_provider(value: Any, ctx: Ctx) -> Any:
    if value == "openai_realtime":
        raise Drop("OpenAI Realtime is the only provider here")
    raise Drop(f"not supported: provider {value!r}; every call here uses OpenAI Realtime")


def context_provider(value: Any, ctx: Ctx) -> Any:
    if value == "openai_realtime":
        return value
    raise NeedsHuman(f"provider {value!r} is not supported: this context will use OpenAI Realtime")


def other_provider(value: Any, ctx: Ctx) -> Any:
    if isinstance(value, Mapping) and value.get("type") == "openai_realtime":
        raise NeedsHuman("a second OpenAI Realtime instance: one provider here; use contexts' prompt and voice")
    raise Drop(f"not supported: provider {ctx.keys[0]} (only OpenAI Realtime here)")


def api_key(value: Any, ctx: Ctx) -> Any:
    """Kept when it is a placeholder; a key written in clear is replaced by one (never copied into output)."""
    if not isinstance(value, str) or not value:
        raise Drop("empty: OPENAI_API_KEY from the environment is used")
    if is_placeholder(value):
        return value
    return Checked("${OPENAI_API_KEY}", "the old file held the key in clear: put it in .env as OPENAI_API_KEY")


def api_key_env(value: Any, ctx: Ctx) -> Any:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise NeedsHuman("expected an environment variable name")
    if ctx.get(f"{PROVIDER}.api_key"):
        raise Drop("api_key is set")
    return "${" + value + "}"


def modalities(value: Any, ctx: Ctx) -> Any:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not set(items) <= {"audio", "text"}:
        raise NeedsHuman("expected audio and/or text")
    return items


def llm_fallback(provider_key: str) -> Transform:
    """`llm.*` filled the provider's greeting/instructions only when the provider left them empty."""

    def transform(value: Any, ctx: Ctx) -> Any:
        if ctx.get(f"{PROVIDER}.{provider_key}"):
            raise Drop(f"{PROVIDER}.{provider_key} is set and wins (as it did there)")
        return template(value, ctx)

    return transform


def failure_action(value: Any, ctx: Ctx) -> Any:
    if value == "announce_hangup":
        return "hangup"
    if value == "dialplan_redirect":
        return "continue"
    raise NeedsHuman(f"unknown policy {value!r}: choose controller.fallback.action")


def sound(value: Any, ctx: Ctx) -> Any:
    text = str(value)
    return text if ":" in text else f"sound:{text}"


def log_level(value: Any, ctx: Ctx) -> Any:
    level = str(value).lower()
    levels = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning", "error": "error"}
    if level == "critical":
        return "error"
    if level not in levels:
        raise NeedsHuman(f"unknown level {value!r}")
    return levels[level]


_DESTINATION_KEYS = ("target", "type", "description", "dialplan_context")


def destination(value: Any, ctx: Ctx) -> Any:
    """A transfer destination, whole: one of a type we cannot dial is left out rather than half-copied."""
    if value is None:
        raise Drop("empty (null) destination")
    if not isinstance(value, Mapping) or "target" not in value:
        raise NeedsHuman("expected a mapping with target and type")
    kind = value.get("type", "extension")
    if kind not in ("extension", "queue", "ringgroup"):
        raise NeedsHuman(f"type {kind!r} is not supported (extension, queue, ringgroup): left out")
    kept = {key: value[key] for key in _DESTINATION_KEYS if key in value}
    other = [str(key) for key in value if key not in _DESTINATION_KEYS]
    if other:
        return Checked(kept, f"left out, not supported here: {', '.join(other)}")
    return kept


def barge_in_enabled(value: Any, ctx: Ctx) -> Any:
    if value is False:
        raise NeedsHuman("barge-in cannot be turned off here: the caller can always interrupt the agent")
    raise Drop("always on here")


def http_tool(value: Any, ctx: Ctx) -> Any:
    if isinstance(value, Mapping) and "kind" in value:
        raise Drop(HTTP_TOOLS)
    raise NeedsHuman(f"unknown tool {ctx.keys[0]!r}")


# ---------------------------------------------------------------------------------------------------------------
# Drop reasons used more than once.

PIPELINES = "not supported: local and modular STT/LLM/TTS pipelines (only OpenAI Realtime here)"
AUDIO_FORMAT = "the media worker converts between Asterisk and the model itself; default_profile fixes both formats"
PROFILES = "the old audio profiles tune resampling and chunking; here default_profile (from audio_transport) fixes it"
PACING = "playout pacing: the media worker sends 20 ms frames itself"
LOCAL_VAD = "local utterance segmentation for pipelines: OpenAI's VAD takes turns here (turn_detection)"
BARGE_IN = "energy-based barge-in tuning: here the server's VAD with an echo-aware local gate decides"
HANGUP_POLICY = "the model decides when to hang up (prompt and hangup_call tool); no phrase markers here"
ENGINE_HINT = "an engine hint of the old project; nothing to set here"
ARI_KEEPALIVE = "the controller's ARI connection keeps itself alive"
HTTP_TOOLS = "not supported: HTTP lookup and webhook tools"
RESEND_KEY = "Resend's key: mail goes through SMTP here"
CALENDARS = "not supported: calendar tools"
SECTION_NAME = "the section's name says it"
INPUT_GAIN = "not supported: inbound gain control"


RULES: tuple[Rule, ...] = (
    # Top level.
    Rule("config_version", drop="the old format's version number"),
    Rule("default_provider", transform=default_provider),
    Rule("active_pipeline", drop=PIPELINES),
    Rule("pipelines", drop=PIPELINES),
    Rule("downstream_mode", drop="audio is always streamed here"),
    Rule("audio_transport", "default_profile", audio_transport),
    Rule("farewell_hangup_delay_sec", drop="the call ends once the farewell is played (tools.hangup_call)"),
    Rule("on_provider_failure", "controller.fallback.action", failure_action),
    Rule("provider_failure_prompt", "controller.fallback.prompt", sound),
    Rule("provider_failure_redirect_context", "controller.fallback.context"),
    Rule("provider_failure_redirect_extension", "controller.fallback.extension"),
    Rule("provider_failure_redirect_priority", "controller.fallback.priority"),
    Rule("streaming", drop=PACING),
    Rule("profiles", drop=PROFILES),
    Rule("no_input", drop="not supported: no-input check-ins (turn_detection.idle_timeout_ms prompts the caller)"),
    Rule("mcp", drop="not supported: MCP tool servers"),
    Rule("in_call_tools", drop="not supported: in-call HTTP tools"),
    Rule("health.host", "controller.health_host"),
    Rule("health.port", "controller.health_port"),
    Rule("logging.level", "logging.level", log_level),
    Rule("llm.initial_greeting", f"{PROVIDER}.greeting", llm_fallback("greeting")),
    Rule("llm.prompt", f"{PROVIDER}.instructions", llm_fallback("instructions")),
    Rule("llm.*", drop=PIPELINES),
    # Asterisk: the old project reads host, port, credentials and scheme from ASTERISK_* only (see ENV_SECTIONS).
    Rule("asterisk.app_name", "asterisk.app_name"),
    Rule("asterisk.ws_ping_interval_sec", drop=ARI_KEEPALIVE),
    Rule("asterisk.ws_ping_timeout_sec", drop=ARI_KEEPALIVE),
    Rule("asterisk.*", drop="ignored by the old project too (ASTERISK_* from the environment; see asterisk.ari_url)"),
    # Transports.
    Rule("audiosocket.host", "media_worker.listen_host", when_transport("audiosocket", listen_host)),
    Rule("audiosocket.port", "media_worker.audiosocket_port", when_transport("audiosocket")),
    Rule("audiosocket.advertise_host", "media_worker.advertise_host", when_transport("audiosocket")),
    Rule("audiosocket.format", drop="the controller asks Asterisk for the profile's format itself"),
    Rule("external_media.rtp_host", "media_worker.listen_host", when_transport("externalmedia", listen_host)),
    Rule("external_media.port_range", "media_worker.rtp_port_min", when_transport("externalmedia", port_range)),
    Rule("external_media.rtp_port", drop="the first port of port_range"),
    Rule("external_media.advertise_host", "media_worker.advertise_host", when_transport("externalmedia")),
    Rule("external_media.allowed_remote_hosts", "media_worker.allowed_media_hosts", when_transport("externalmedia")),
    Rule("external_media.codec", drop="part of default_profile (with audio_transport)"),
    Rule("external_media.lock_remote_endpoint", drop="always: the first packet's source is latched"),
    Rule("external_media.*", drop=AUDIO_FORMAT),
    # The OpenAI Realtime provider.
    Rule(f"{PROVIDER}.enabled", f"{PROVIDER}.enabled", provider_enabled),
    Rule(f"{PROVIDER}.api_key", f"{PROVIDER}.api_key", api_key),
    Rule(f"{PROVIDER}.api_key_env", f"{PROVIDER}.api_key", api_key_env),
    Rule(f"{PROVIDER}.api_key_file", human="the key is read from api_key or OPENAI_API_KEY: put it in .env"),
    Rule(f"{PROVIDER}.api_version", drop="the beta API is shut down; sessions here are always GA"),
    Rule(f"{PROVIDER}.type", drop=SECTION_NAME),
    Rule(f"{PROVIDER}.name", drop=SECTION_NAME),
    Rule(f"{PROVIDER}.model", f"{PROVIDER}.model"),
    Rule(f"{PROVIDER}.base_url", f"{PROVIDER}.base_url"),
    Rule(f"{PROVIDER}.voice", f"{PROVIDER}.voice"),
    Rule(f"{PROVIDER}.organization", f"{PROVIDER}.organization"),
    Rule(f"{PROVIDER}.project_id", f"{PROVIDER}.project"),
    Rule(f"{PROVIDER}.instructions", f"{PROVIDER}.instructions", template),
    Rule(f"{PROVIDER}.greeting", f"{PROVIDER}.greeting", template),
    Rule(f"{PROVIDER}.response_modalities", f"{PROVIDER}.modalities", modalities),
    Rule(f"{PROVIDER}.max_response_output_tokens", f"{PROVIDER}.max_response_output_tokens"),
    Rule(f"{PROVIDER}.temperature", drop="GA Realtime sessions have no temperature (the old project never sent it)"),
    Rule(f"{PROVIDER}.turn_detection.type", f"{PROVIDER}.turn_detection.type"),
    Rule(f"{PROVIDER}.turn_detection.threshold", f"{PROVIDER}.turn_detection.threshold"),
    Rule(f"{PROVIDER}.turn_detection.silence_duration_ms", f"{PROVIDER}.turn_detection.silence_duration_ms"),
    Rule(f"{PROVIDER}.turn_detection.prefix_padding_ms", f"{PROVIDER}.turn_detection.prefix_padding_ms"),
    Rule(f"{PROVIDER}.turn_detection.create_response", f"{PROVIDER}.turn_detection.create_response"),
    Rule(f"{PROVIDER}.turn_detection.interrupt_response", f"{PROVIDER}.turn_detection.interrupt_response"),
    Rule(f"{PROVIDER}.turn_detection.idle_timeout_ms", f"{PROVIDER}.turn_detection.idle_timeout_ms"),
    Rule(f"{PROVIDER}.turn_detection.eagerness", f"{PROVIDER}.turn_detection.eagerness"),
    Rule(f"{PROVIDER}.input_encoding", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.input_sample_rate_hz", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.provider_input_encoding", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.provider_input_sample_rate_hz", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.output_encoding", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.output_sample_rate_hz", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.target_encoding", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.target_sample_rate_hz", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.output_resampler", drop=AUDIO_FORMAT),
    Rule(f"{PROVIDER}.egress_pacer_enabled", drop=PACING),
    Rule(f"{PROVIDER}.egress_pacer_warmup_ms", drop=PACING),
    Rule(f"{PROVIDER}.input_gain_target_rms", drop=INPUT_GAIN),
    Rule(f"{PROVIDER}.input_gain_max_db", drop=INPUT_GAIN),
    Rule(f"{PROVIDER}.continuous_input", drop=ENGINE_HINT),
    Rule(f"{PROVIDER}.capabilities", drop=ENGINE_HINT),
    Rule("providers.*", transform=other_provider),
    # Contexts.
    Rule("contexts.*.prompt", "contexts.{0}.prompt", template),
    Rule("contexts.*.greeting", "contexts.{0}.greeting", template),
    Rule("contexts.*.voice", "contexts.{0}.voice"),
    Rule("contexts.*.tools", "contexts.{0}.tools", tool_list),
    Rule("contexts.*.provider", "contexts.{0}.provider", context_provider),
    Rule("contexts.*.profile", drop=PROFILES),
    Rule("contexts.*.pipeline", drop=PIPELINES),
    Rule("contexts.*.name", drop="the context's key says it"),
    Rule("contexts.*.pre_call_tools", drop=HTTP_TOOLS),
    Rule("contexts.*.in_call_http_tools", drop=HTTP_TOOLS),
    Rule("contexts.*.post_call_tools", drop=HTTP_TOOLS),
    Rule("contexts.*.disable_global_pre_call_tools", drop=HTTP_TOOLS),
    Rule("contexts.*.disable_global_in_call_tools", drop=HTTP_TOOLS),
    Rule("contexts.*.disable_global_post_call_tools", drop=HTTP_TOOLS),
    Rule("contexts.*.tool_overrides", human="per-context tool settings: set the tools section by hand"),
    Rule("contexts.*.connection_audio", drop="not supported: audio while the session connects"),
    Rule("contexts.*.background_music", drop="not supported: background music under the conversation"),
    # Barge-in and VAD.
    Rule("barge_in.enabled", transform=barge_in_enabled),
    Rule("barge_in.greeting_protection_ms", "media_worker.greeting_guard_ms"),
    Rule("barge_in.pipeline_*", drop=PIPELINES),
    Rule("barge_in.*", drop=BARGE_IN),
    Rule("vad.webrtc_aggressiveness", "vad.webrtc_aggressiveness"),
    Rule("vad.*", drop=LOCAL_VAD),
    # Tools.
    Rule("tools.enabled", drop="each tool is enabled by listing it (providers.openai_realtime.tools)"),
    Rule("tools.default_action_timeout", drop="each tool has its own timeout here"),
    Rule("tools.ai_identity", drop="not supported: a caller id of the agent's own"),
    Rule("tools.transfer.enabled", f"{PROVIDER}.tools", enables("transfer")),
    Rule("tools.transfer.technology", "tools.transfer.technology"),
    Rule("tools.transfer.extension_context", "tools.transfer.extension_context"),
    Rule("tools.transfer.queue_context", "tools.transfer.queue_context"),
    Rule("tools.transfer.ringgroup_context", "tools.transfer.ringgroup_context"),
    Rule("tools.transfer.predial_timeout_seconds", "tools.transfer.ring_timeout_ms", seconds_to_ms),
    Rule("tools.transfer.predial_wait_moh_class", "controller.moh_class"),
    Rule("tools.transfer.destinations.*", "tools.transfer.destinations.{0}", destination),
    Rule("tools.transfer.*", drop="the controlled transfer (tools.transfer.mode) rings and bridges itself"),
    Rule("tools.attended_transfer", drop="not supported: attended (screened) transfer"),
    Rule("tools.cancel_transfer.enabled", f"{PROVIDER}.tools", enables("cancel_transfer")),
    Rule("tools.cancel_transfer.allow_during_ring", drop="always allowed while the destination rings"),
    Rule("tools.hangup_call.enabled", f"{PROVIDER}.tools", enables("hangup_call")),
    Rule("tools.hangup_call.farewell_message", "tools.hangup_call.farewell_message", template),
    Rule("tools.hangup_call.*", drop=HANGUP_POLICY),
    Rule("tools.leave_voicemail.enabled", f"{PROVIDER}.tools", enables("leave_voicemail")),
    Rule(
        "tools.leave_voicemail.extension",
        "tools.leave_voicemail.extension",
        lambda v, c: Checked(str(v), "check tools.leave_voicemail.dialplan_context (ours: default)"),
    ),
    Rule("tools.send_email_summary.enabled", transform=send_summary_enabled),
    Rule(
        "tools.send_email_summary.admin_email",
        "tools.send_email_summary.recipients",
        address_list("send_email_summary"),
    ),
    Rule("tools.send_email_summary.include_transcript", "tools.send_email_summary.include_transcript"),
    Rule("tools.send_email_summary.from_email", "email.from_address", sender("send_email_summary")),
    Rule("tools.send_email_summary.from_name", transform=sender_name),
    Rule("tools.send_email_summary.provider", transform=mail_provider("send_email_summary")),
    Rule("tools.send_email_summary.api_key", drop=RESEND_KEY),
    Rule("tools.send_email_summary.include_metadata", drop="the summary always names the call's details"),
    Rule("tools.request_transcript.enabled", f"{PROVIDER}.tools", enables("request_transcript")),
    Rule("tools.request_transcript.admin_email", "tools.request_transcript.bcc", address_list("request_transcript")),
    Rule("tools.request_transcript.from_email", "email.from_address", first_sender),
    Rule("tools.request_transcript.from_name", transform=sender_name),
    Rule("tools.request_transcript.provider", transform=mail_provider("request_transcript")),
    Rule("tools.request_transcript.api_key", drop=RESEND_KEY),
    Rule("tools.request_transcript.*", drop="the address is confirmed by the model with the caller here"),
    Rule("tools.extensions", human="a directory of live agents: add them to tools.transfer.destinations"),
    Rule("tools.check_extension_status", drop="not supported: extension status checks"),
    Rule("tools.google_calendar", drop=CALENDARS),
    Rule("tools.microsoft_calendar", drop=CALENDARS),
    Rule("tools.*", transform=http_tool),
)


# Settings the old project took from the environment whatever its YAML said; the migrated file reads the same
# variables, so the old .env keeps working. Written when the old file has one of the trigger keys.
@dataclass(frozen=True)
class EnvSection:
    triggers: tuple[str, ...]  # old dotted paths; any one present writes the section
    variables: str  # the environment variables the old project read, for the report
    values: dict[str, str]  # our path -> value


ENV_SECTIONS: tuple[EnvSection, ...] = (
    EnvSection(
        ("asterisk",),
        "ASTERISK_HOST, ASTERISK_ARI_PORT, ASTERISK_ARI_SCHEME, ASTERISK_ARI_USERNAME, ASTERISK_ARI_PASSWORD",
        {
            "asterisk.ari_url": "${ASTERISK_ARI_SCHEME:-http}://${ASTERISK_HOST:-127.0.0.1}:${ASTERISK_ARI_PORT:-8088}",
            "asterisk.username": "${ASTERISK_ARI_USERNAME:-asterisk}",
            "asterisk.password": "${ASTERISK_ARI_PASSWORD:-}",
        },
    ),
    EnvSection(
        ("tools.send_email_summary", "tools.request_transcript"),
        "SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD (SMTP_TLS_MODE: check email.security)",
        {
            "email.smtp_host": "${SMTP_HOST:-127.0.0.1}",
            "email.smtp_port": "${SMTP_PORT:-587}",
            "email.username": "${SMTP_USERNAME:-}",
            "email.password": "${SMTP_PASSWORD:-}",
            "email.security": "starttls",
        },
    ),
)
