"""`voice-agent doctor`: checks everything the cluster needs, one line per check with the cause and the fix.

Exit 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when the config cannot be loaded."""

from __future__ import annotations

import argparse
import asyncio

from shared.config import ConfigError, load_config
from shared.masking import redact
from voice_agent.doctor import ari_checks, clock_checks, media_checks, openai_checks, redis_checks, smtp_checks
from voice_agent.doctor.report import render_json, render_text
from voice_agent.doctor.result import CheckResult, Status
from voice_agent.doctor.runner import Check, Probe, run_checks

CHECKS = [
    Check("openai.key", openai_checks.check_key),
    Check("openai.models", openai_checks.check_models, ("openai.key",)),
    Check("openai.realtime", openai_checks.check_realtime, ("openai.models",)),
    Check("ari.connect", ari_checks.check_connect),
    Check("ari.app", ari_checks.check_app, ("ari.connect",)),
    Check("ari.modules", ari_checks.check_modules, ("ari.connect",)),
    Check("ari.dialplan", ari_checks.check_dialplan, ("ari.connect",)),
    Check("redis", redis_checks.check_redis),
    Check("redis.persistence", redis_checks.check_persistence, ("redis",)),
    Check("redis.eviction", redis_checks.check_eviction, ("redis",)),
    Check("smtp", smtp_checks.check_smtp),
    Check("smtp.test_mail", smtp_checks.check_test_mail, ("smtp",)),
    Check("media.audiosocket", media_checks.check_audiosocket),
    Check("media.rtp", media_checks.check_rtp),
    Check("clock.redis", clock_checks.check_redis_clock, ("redis",)),
    Check("clock.asterisk", clock_checks.check_ari_clock, ("ari.connect",)),
]

EXIT_OK, EXIT_FAILED, EXIT_NO_CONFIG = 0, 1, 2


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print(f"--timeout must be more than 0 s, got {args.timeout:g}")
        return EXIT_NO_CONFIG
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        result = CheckResult("config", Status.FAIL, f"{exc.source}: {problems}", "fix the lines named above", 0)
        print(redact(render_json([result]) if args.json else render_text([result])))
        return EXIT_NO_CONFIG
    redact.register(loaded.secrets)
    warnings = [str(p) for p in loaded.warnings]
    config_result = CheckResult(
        "config",
        Status.WARN if warnings else Status.OK,
        f"{loaded.source} loaded" + (f"; {len(warnings)} warning(s): {'; '.join(warnings)}" if warnings else ""),
        "see voice-agent check-config" if warnings else "",
        0,
    )
    probe = Probe(loaded, args.timeout, args.send_test_mail)
    results = [config_result, *asyncio.run(run_checks(CHECKS, probe))]
    print(render_json(results) if args.json else render_text(results))
    return EXIT_FAILED if any(r.status is Status.FAIL for r in results) else EXIT_OK
