"""Rules a single key's type cannot express: names that must point at something defined elsewhere, template
variables, secrets left at an example's value, settings that together can never work as meant, and the guide's
advice. They run on the typed `Config` (wrong keys already replaced by their defaults) and add errors and
warnings to the checker; a rule that involves a key already reported stays quiet."""

from __future__ import annotations

import difflib
import zoneinfo
from urllib.parse import urlsplit

from shared.config.placeholders import is_placeholder
from shared.config.schema import ALL_TOOLS, BUILTIN_PROFILES, Config
from shared.config.templates import TEMPLATE_VARIABLES, unknown_variables
from shared.config.validate import Checker, Severity, suggest
from shared.masking import mask_url

WARNING = Severity.WARNING
PROVIDER = "providers.openai_realtime"
# A server VAD threshold at or beyond these is almost never crossed by speech, or crossed by any line noise.
VAD_THRESHOLD_DEAF = 0.95
VAD_THRESHOLD_JUMPY = 0.05
# Shorter pauses than this end the caller's turn in the middle of a sentence.
SILENCE_MIN_MS = 200
# The media worker's playout frame: a wakeup this late skips a frame slot (media_worker/audio/playout.py).
FRAME_MS = 20


def check(config: Config, checker: Checker, require_api_key: bool) -> None:
    _references(config, checker)
    _urls(config, checker)
    _templates(config, checker)
    _secrets(config, checker, require_api_key)
    _timing(config, checker)
    _ports(config, checker)
    _vad(config, checker)
    _tools(config, checker)
    _limits(config, checker)
    _advice(config, checker)


def _reported(checker: Checker, *paths: str) -> bool:
    """Whether an error was already reported at (or under) one of these key paths."""
    return any(
        p.severity is Severity.ERROR and (p.path == path or p.path.startswith((path + ".", path + "[")))
        for p in checker.problems
        for path in paths
    )


def _references(config: Config, checker: Checker) -> None:
    """Names that must point at something defined elsewhere."""
    profiles = set(BUILTIN_PROFILES) | set(config.profiles)
    known = ", ".join(sorted(profiles))
    if config.profile(config.default_profile) is None and not _reported(checker, "default_profile"):
        checker.add(
            "default_profile",
            f"unknown profile '{config.default_profile}'{suggest(config.default_profile, profiles)}; known: {known}",
        )
    for name, ctx in config.contexts.items():
        if ctx.profile is not None and config.profile(ctx.profile) is None:
            checker.add(
                f"contexts.{name}.profile",
                f"unknown profile '{ctx.profile}'{suggest(ctx.profile, profiles)}; known: {known}",
            )
    if config.default_context is not None and config.default_context not in config.contexts:
        contexts = ", ".join(sorted(config.contexts)) or "none defined"
        checker.add(
            "default_context",
            f"no context named '{config.default_context}'{suggest(config.default_context, config.contexts)}; "
            f"known: {contexts}",
        )
    for i, address in enumerate(config.tools.send_email_summary.recipients):
        if "@" not in address:
            checker.add(f"tools.send_email_summary.recipients[{i}]", f"not an email address: {address!r}")


def _urls(config: Config, checker: Checker) -> None:
    provider = config.providers.openai_realtime
    if not provider.base_url.startswith(("ws://", "wss://")):
        checker.add(f"{PROVIDER}.base_url", f"expected a ws:// or wss:// URL, got {mask_url(provider.base_url)!r}")
    if not config.asterisk.ari_url.startswith(("http://", "https://")):
        checker.add(
            "asterisk.ari_url", f"expected an http:// or https:// URL, got {mask_url(config.asterisk.ari_url)!r}"
        )
    if not config.redis.url.startswith(("redis://", "rediss://", "unix://")):
        checker.add("redis.url", f"expected a redis://, rediss:// or unix:// URL, got {mask_url(config.redis.url)!r}")


def _limits(config: Config, checker: Checker) -> None:
    try:
        zoneinfo.ZoneInfo(config.limits.timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        checker.add(
            "limits.timezone", f"unknown time zone {config.limits.timezone!r} (an IANA name: UTC, Europe/Berlin)"
        )


def _templates(config: Config, checker: Checker) -> None:
    """`{caler_name}` reaches the caller as written: only TEMPLATE_VARIABLES are filled in."""
    texts = [(f"{PROVIDER}.greeting", config.providers.openai_realtime.greeting)]
    texts.append((f"{PROVIDER}.instructions", config.providers.openai_realtime.instructions))
    for name, ctx in config.contexts.items():
        texts += [(f"contexts.{name}.greeting", ctx.greeting or ""), (f"contexts.{name}.prompt", ctx.prompt)]
    known = ", ".join("{" + v + "}" for v in TEMPLATE_VARIABLES)
    for path, text in texts:
        for name in unknown_variables(text):
            # Close to a variable: a typo, an error. Otherwise a warning: braces may be meant as written (a
            # prompt about a form to fill in), or come from another project's prompt ({current_date}).
            close = difflib.get_close_matches(name, TEMPLATE_VARIABLES, n=1, cutoff=0.6)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            message = f"unknown template variable {{{name}}}{hint}: it would be said as written; known: {known}"
            checker.add(path, message, Severity.ERROR if close else WARNING)


def _secrets(config: Config, checker: Checker, require_api_key: bool) -> None:
    """Secrets still at an example's value. The API key is an error when it goes to OpenAI (no request can
    succeed with it); the others are warnings: a lab may really have set Asterisk's or Redis's password to
    `changeme`, and that works, but anyone who read the same example can log in."""
    provider = config.providers.openai_realtime
    to_openai = provider.enabled and "api.openai.com" in provider.base_url
    if require_api_key and to_openai and not _reported(checker, f"{PROVIDER}.api_key"):
        if not provider.api_key:
            checker.add(
                f"{PROVIDER}.api_key",
                "required when the provider is enabled (set OPENAI_API_KEY in the environment or .env)",
            )
        elif is_placeholder(provider.api_key):
            checker.add(
                f"{PROVIDER}.api_key",
                "looks like a placeholder (such as .env.example's), not an OpenAI API key: set OPENAI_API_KEY "
                "to your key (https://platform.openai.com/api-keys)",
            )
    weak = "looks like a placeholder or a well-known default: anyone who read the same example can log in"
    if is_placeholder(config.asterisk.password):
        checker.add("asterisk.password", f"{weak}; set ASTERISK_ARI_PASSWORD (and ari.conf) to a secret", WARNING)
    if is_placeholder(config.email.password):
        checker.add("email.password", f"{weak}; set SMTP_PASSWORD to the mailbox's password", WARNING)
    try:
        redis_password = urlsplit(config.redis.url).password or ""
    except ValueError:
        redis_password = ""
    if is_placeholder(redis_password):
        checker.add("redis.url", f"the password in the URL {weak}; set REDIS_URL with Redis's requirepass", WARNING)


def _timing(config: Config, checker: Checker) -> None:
    """Durations that only make sense relative to each other."""
    mw = config.media_worker
    guard, timeout = "media_worker.greeting_guard_ms", "media_worker.greeting_timeout_ms"
    if mw.greeting_guard_ms >= mw.greeting_timeout_ms and not _reported(checker, guard, timeout):
        checker.add(
            guard,
            f"{mw.greeting_guard_ms} is not below greeting_timeout_ms ({mw.greeting_timeout_ms}), which ends the "
            "guard anyway: a guard this long can never be reached (the default is 800)",
        )
    beat, stale = "media_worker.heartbeat_ms", "media_worker.stale_after_ms"
    if mw.stale_after_ms < 2 * mw.heartbeat_ms and not _reported(checker, beat, stale):
        checker.add(
            stale,
            f"{mw.stale_after_ms} is less than two heartbeats ({mw.heartbeat_ms} ms each): one late beat from a "
            "busy worker would declare it dead and move its calls (the default is three beats: 750/250)",
            WARNING,
        )
    admission, lag = mw.admission, "media_worker.admission.max_tick_lag_p99_ms"
    if admission.enabled and admission.max_tick_lag_p99_ms >= FRAME_MS and not _reported(checker, lag):
        checker.add(
            lag,
            f"{admission.max_tick_lag_p99_ms:g} ms is a {FRAME_MS} ms frame or more: wakeups that late already skip "
            "frames, so the audio degrades before the worker stops taking calls (the default is 10)",
            WARNING,
        )


def _ports(config: Config, checker: Checker) -> None:
    mw = config.media_worker
    if mw.audiosocket_port and mw.audiosocket_port == mw.health_port:
        checker.add(
            "media_worker.health_port",
            f"{mw.health_port} is also audiosocket_port: both listen on TCP in the same process; one would fail",
        )
    in_use = [config.default_profile] + [ctx.profile or config.default_profile for ctx in config.contexts.values()]
    uses_rtp = any((profile := config.profile(name)) is not None and profile.transport == "rtp" for name in in_use)
    ports = mw.rtp_port_max - mw.rtp_port_min + 1
    if uses_rtp and ports < mw.capacity and not _reported(checker, "media_worker"):
        checker.add(
            "media_worker.rtp_port_max",
            f"the RTP range {mw.rtp_port_min}-{mw.rtp_port_max} holds {ports} ports but capacity is {mw.capacity}: "
            f"an RTP call takes one port, so at most {ports} RTP calls fit on a worker (widen the range)",
            WARNING,
        )


def _vad(config: Config, checker: Checker) -> None:
    td = config.providers.openai_realtime.turn_detection
    path = f"{PROVIDER}.turn_detection"
    if not config.providers.openai_realtime.turn_detection_enabled:
        return
    if _reported(checker, f"{path}.threshold"):
        pass
    elif td.threshold >= 1.0:
        checker.add(f"{path}.threshold", "1 can never be reached: the server would never hear the caller speak")
    elif td.threshold >= VAD_THRESHOLD_DEAF:
        checker.add(
            f"{path}.threshold", f"{td.threshold:g} is almost never reached by speech (the guide uses 0.5)", WARNING
        )
    elif td.threshold <= VAD_THRESHOLD_JUMPY:
        checker.add(
            f"{path}.threshold",
            f"{td.threshold:g}: any line noise counts as speech and interrupts the agent (the guide uses 0.5)",
            WARNING,
        )
    if td.silence_duration_ms < SILENCE_MIN_MS and not _reported(checker, f"{path}.silence_duration_ms"):
        checker.add(
            f"{path}.silence_duration_ms",
            f"{td.silence_duration_ms} ms: the agent would answer in the middle of the caller's sentences "
            f"(use {SILENCE_MIN_MS} or more; the guide uses 1000)",
            WARNING,
        )


def _tools(config: Config, checker: Checker) -> None:
    provider = config.providers.openai_realtime
    in_use = set(provider.tools).union(*(ctx.tools or () for ctx in config.contexts.values()))
    if "transfer" in in_use and not config.tools.transfer.destinations and not _reported(checker, "tools.transfer"):
        checker.add(
            "tools.transfer.destinations",
            "none, but the transfer tool is offered to the model: every transfer it tries is refused "
            "(only configured destinations are ever dialled)",
            WARNING,
        )


def _advice(config: Config, checker: Checker) -> None:
    """Settings that load but work against the guide's advice."""
    if config.vad.webrtc_aggressiveness == 0:
        checker.add(
            "vad.webrtc_aggressiveness",
            "0 lets the agent's own echo interrupt it; the guide says "
            "it MUST be 1 (see Troubleshooting: Echo / Self-Interruption)",
            WARNING,
        )
    provider = config.providers.openai_realtime
    if provider.enabled and not provider.tools:
        checker.add(
            f"{PROVIDER}.tools",
            f"no tools: the agent cannot transfer or hang up; available: {', '.join(ALL_TOOLS)}",
            WARNING,
        )
    if not provider.greeting and any(ctx.greeting is None for ctx in config.contexts.values()):
        checker.add(
            f"{PROVIDER}.greeting",
            "empty, and a context has no greeting of its own: those calls start in silence until the caller speaks",
            WARNING,
        )
