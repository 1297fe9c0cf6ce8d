"""`voice-agent`: one command for every role and tool of the cluster."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys

import msgspec
import yaml

from shared import event_loop
from shared.config import ConfigError, LoadedConfig, Problem, load_config
from shared.logs import setup_logging
from shared.masking import mask_url, redact
from shared.version import VERSION

log = logging.getLogger("voice-agent")


def _load(path: str | None, *, require_api_key: bool = True) -> LoadedConfig:
    """The config, or exit 1 naming its first error and how many there are (check-config lists them all)."""
    try:
        loaded = load_config(path, require_api_key=require_api_key)
    except ConfigError as exc:
        print(redact(exc.summary()), file=sys.stderr)  # a value quoted in an error may hold a credential
        raise SystemExit(1) from None
    redact.register(loaded.secrets)
    return loaded


def _numbered(problems: list[Problem]) -> list[str]:
    return [f"  {i:>2}. {p}" for i, p in enumerate(problems, start=1)]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _start_role(args: argparse.Namespace, role: str) -> LoadedConfig:
    loaded = _load(args.config)
    settings = loaded.config.logging
    setup_logging(role, args.log_level or settings.level, settings.format)
    config_log = logging.getLogger("config")
    config_log.info("loaded %s", loaded.source)
    for problem in loaded.warnings:
        config_log.warning("%s", problem)
    for problem in loaded.notes:
        config_log.debug("%s", problem)
    return loaded


def _health(args: argparse.Namespace, section) -> tuple[str, int]:
    host = args.health_host or section.health_host
    port = section.health_port if args.health_port is None else args.health_port
    return host, port


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.service import Controller

    loaded = _start_role(args, "controller")
    host, port = _health(args, loaded.config.controller)
    return asyncio.run(Controller(loaded, instance_id=args.id, health_host=host, health_port=port).run())


def cmd_media_worker(args: argparse.Namespace) -> int:
    from media_worker.service import MediaWorker

    loaded = _start_role(args, "media-worker")
    host, port = _health(args, loaded.config.media_worker)
    worker = MediaWorker(
        loaded,
        instance_id=args.id,
        health_host=host,
        health_port=port,
        audiosocket_port=args.audiosocket_port,
        rtp_ports=args.rtp_ports,
    )
    try:
        return event_loop.run(worker.run(), loaded.config.media_worker.event_loop)
    except event_loop.EventLoopUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2


def cmd_tool_worker(args: argparse.Namespace) -> int:
    from tool_worker.service import run

    loaded = _start_role(args, "tool-worker")
    host, port = _health(args, loaded.config.tool_worker)
    return run(loaded, instance_id=args.id, health_host=host, health_port=port, burst=args.burst)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every error at once, numbered, with its line and key path (exit 1); or the config with secrets masked."""
    try:
        loaded = load_config(args.path or args.config, require_api_key=not args.no_secrets)
    except ConfigError as exc:
        out = [f"{exc.source}: {_plural(len(exc.problems), 'error')} in the configuration", *_numbered(exc.problems)]
        if exc.warnings:
            out += [f"and {_plural(len(exc.warnings), 'warning')}:", *_numbered(exc.warnings)]
        print(redact("\n".join(out)), file=sys.stderr)  # a value quoted in an error may hold a credential
        return 1
    redact.register(loaded.secrets)
    out = [f"# {loaded.source}: OK"]
    for problem in loaded.warnings:
        out.append(f"# warning: {problem}")
    for problem in loaded.notes:
        out.append(f"# note: {problem}")
    print(redact("\n".join(out)))
    if not args.quiet:
        print(yaml.safe_dump(loaded.masked(), sort_keys=False, allow_unicode=True, width=110))
    return 0


def cmd_migrate_config(args: argparse.Namespace) -> int:
    """Exit 0: a valid config written; 1: written, but it does not validate (errors listed); 2: unreadable input."""
    from datetime import UTC, datetime
    from pathlib import Path

    from shared.config.envsubst import environment
    from shared.config.migrate import Unreadable, migrate, read_old, report

    old = Path(args.old)
    if args.output and Path(args.output).resolve() == old.resolve():
        print(f"{args.output}: would overwrite the file being migrated; choose another output", file=sys.stderr)
        return 2
    try:
        doc = read_old(old)
    except Unreadable as exc:
        print(redact(str(exc)), file=sys.stderr)
        return 2
    # The environment our loader would see (the old project's .env beside config/ works for both).
    env = environment([Path(".env"), old.resolve().parent.parent / ".env"])
    migration = migrate(doc, str(old), env, datetime.now(UTC))
    if args.output:
        try:
            Path(args.output).write_text(migration.text, encoding="utf-8")
        except OSError as exc:
            print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(migration.text)
    print(redact(report(migration, str(old), args.output or "stdout")), file=sys.stderr)
    return 0 if migration.valid else 1


def cmd_status(args: argparse.Namespace) -> int:
    from shared.redis_conn import UNAVAILABLE
    from shared.status import collect, render

    loaded = _load(args.config, require_api_key=False)  # status reads Redis only; it opens no Realtime session
    try:
        status = asyncio.run(collect(loaded.config))
    except UNAVAILABLE as exc:
        print(f"Redis at {mask_url(loaded.config.redis.url)} is unreachable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(status).decode())
    else:
        print(render(status))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from voice_agent.doctor import run

    return run(args)


def cmd_usage(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from shared.keys import Keys
    from shared.redis_conn import UNAVAILABLE
    from shared.usage_limits import read, render

    loaded = _load(args.config, require_api_key=False)  # usage reads Redis only
    config = loaded.config

    async def collect() -> dict:
        client = aioredis.Redis.from_url(config.redis.url, socket_connect_timeout=2)
        try:
            return await read(client, Keys(config.redis.key_prefix), config.limits, args.month)
        finally:
            await client.aclose()

    try:
        report = asyncio.run(collect())
    except UNAVAILABLE as exc:
        print(f"Redis at {mask_url(config.redis.url)} is unreachable: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(report).decode() if args.json else render(report))
    return 0


def _month(text: str) -> str:
    try:
        return datetime.datetime.strptime(text, "%Y-%m").strftime("%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a month as YYYY-MM, got {text!r}") from None


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the URL answers 200; else one line saying why (the slim image has no curl)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a health URL is never proxied
    try:
        with opener.open(args.url, timeout=args.timeout) as response:
            status, reason, body = response.status, response.reason, b""
    except urllib.error.HTTPError as exc:  # 4xx/5xx: the body says which readiness check fails
        status, reason = exc.code, exc.reason
        try:
            body = exc.read(300)
        except OSError:
            body = b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"{args.url}: {cause}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    detail = " ".join(body.decode("utf-8", "replace").split())
    print(f"{args.url}: HTTP {status} {reason}" + (f": {detail}" if detail else ""), file=sys.stderr)
    return 1


def cmd_sim_realtime(args: argparse.Namespace) -> int:
    from sim.realtime.cli import run

    setup_logging("sim-realtime", args.log_level or "info")
    return run(args)


def cmd_sim_asterisk(args: argparse.Namespace) -> int:
    from sim.asterisk.cli import run

    setup_logging("sim-asterisk", args.log_level or "info")
    return run(args)


def cmd_sim_mail(args: argparse.Namespace) -> int:
    from sim.mail import run

    setup_logging("sim-mail", args.log_level or "warning")
    return run(args)


def cmd_real_asterisk(args: argparse.Namespace) -> int:
    from sim.real_asterisk.__main__ import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from sim.demo import main as demo_main

    return demo_main(args)


def cmd_loadtest(args: argparse.Namespace) -> int:
    from sim.loadtest import main as loadtest_main

    return loadtest_main(args)


def _port_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split("-", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from None
    if not 1 <= low <= high <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port range within 1-65535")
    return low, high


def _add_dev_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The simulators, the real Asterisk and the load test: their arguments are defined in `sim`."""
    from sim.realtime.cli import add_arguments as realtime_arguments
    from sim.asterisk.cli import add_arguments as asterisk_arguments
    from sim.mail import add_arguments as mail_arguments
    from sim.real_asterisk.__main__ import add_arguments as real_asterisk_arguments
    from sim.loadtest import add_arguments as loadtest_arguments

    sim = sub.add_parser("sim", help="the simulators: an OpenAI Realtime emulator and an Asterisk (ARI) simulator")
    sims = sim.add_subparsers(dest="simulator", required=True, metavar="SIMULATOR")
    realtime = sims.add_parser("realtime", help="run the OpenAI Realtime GA emulator")
    realtime_arguments(realtime)
    realtime.set_defaults(func=cmd_sim_realtime)
    asterisk = sims.add_parser("asterisk", help="run the Asterisk 22.10.1 (ARI) simulator")
    asterisk_arguments(asterisk)
    asterisk.set_defaults(func=cmd_sim_asterisk)

    mail = sims.add_parser("mail", help="run a local SMTP server that keeps every message as a .eml file")
    mail_arguments(mail)
    mail.set_defaults(func=cmd_sim_mail)

    ra = sub.add_parser("real-asterisk", help="a real Asterisk 22 (Debian's package, cached) for tests and trials")
    real_asterisk_arguments(ra)
    ra.set_defaults(func=cmd_real_asterisk)

    lt = sub.add_parser("loadtest", help="N concurrent scripted calls through the cluster, with a report")
    loadtest_arguments(lt)
    lt.set_defaults(func=cmd_loadtest)


def build_parser(with_dev_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voice-agent {VERSION}")
    parser.add_argument(
        "--config",
        help="config file (default: $AI_AGENT_CONFIG, else /etc/voice-agent/ai-agent.yaml if it exists, "
        "else config/ai-agent.yaml in the working directory)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides logging.level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def role(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--id", help="instance id (default: role-host-pid-random)")
        p.add_argument("--health-host", help="address of /healthz, /readyz and /metrics")
        p.add_argument("--health-port", type=int, help="port of the health endpoints (0: any free port)")
        p.set_defaults(func=func)
        return p

    role("controller", cmd_controller, "run the controller (ARI, admission, call control)")
    mw = role("media-worker", cmd_media_worker, "run a media worker (audio path and Realtime sessions)")
    mw.add_argument("--audiosocket-port", type=int, help="overrides media_worker.audiosocket_port (0: any free)")
    mw.add_argument(
        "--rtp-ports",
        type=_port_range,
        metavar="MIN-MAX",
        help="overrides media_worker.rtp_port_min/max (workers on one host need their own ranges)",
    )
    tw = role("tool-worker", cmd_tool_worker, "run an RQ tool worker on the configured queues")
    tw.add_argument("--burst", action="store_true", help="exit once the queues are empty")

    cc = sub.add_parser("check-config", help="check the config; print it with secrets masked, or every error")
    cc.add_argument("path", nargs="?", help="config file (default: as --config)")
    cc.add_argument("--quiet", "-q", action="store_true", help="only the verdict, warnings and notes")
    cc.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not require the OpenAI API key (checking a config on a machine that does not hold it)",
    )
    cc.set_defaults(func=cmd_check_config)

    mc = sub.add_parser(
        "migrate-config",
        help="turn the existing voice agent's config/ai-agent.yaml into ours; report every key on stderr",
    )
    mc.add_argument("old", metavar="OLD.yaml", help="the existing voice agent's config file")
    mc.add_argument("-o", "--output", metavar="NEW.yaml", help="write here instead of stdout")
    mc.set_defaults(func=cmd_migrate_config)

    st = sub.add_parser("status", help="live controllers, media workers (capacity, load) and tool workers")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    dr = sub.add_parser("doctor", help="check everything the cluster needs: ✔/✘ per check, the cause and the fix")
    dr.add_argument("--json", action="store_true", help="machine-readable list of the checks")
    dr.add_argument("--send-test-mail", metavar="ADDRESS", help="send one short test message to ADDRESS")
    dr.add_argument("--timeout", type=float, default=5.0, help="seconds per check (default: 5)")
    dr.set_defaults(func=cmd_doctor)
    us = sub.add_parser("usage", help="sessions, minutes and estimated spend today and this month, beside the caps")
    us.add_argument("--json", action="store_true", help="machine-readable output")
    us.add_argument("--month", type=_month, metavar="YYYY-MM", help="that month instead of today and this month")
    us.set_defaults(func=cmd_usage)

    hc = sub.add_parser(
        "healthcheck", help="GET a URL: exit 0 on HTTP 200, else say why and exit 1 (container healthchecks)"
    )
    hc.add_argument("url", help="e.g. http://127.0.0.1:15000/readyz")
    hc.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    hc.set_defaults(func=cmd_healthcheck)

    if with_dev_commands:
        _add_dev_commands(sub)

    demo = sub.add_parser("demo", help="start the cluster locally, show it working, stop it cleanly")
    demo.add_argument("--keep-running", action="store_true", help="leave the cluster up until Ctrl-C")
    demo.add_argument(
        "--real-asterisk",
        action="store_true",
        help="call through a real Asterisk 22 (scripts/real-asterisk, cached) instead of the simulator",
    )
    demo.set_defaults(func=cmd_demo)

    return parser


# Commands whose arguments come from `sim`. A role's process has no business loading the simulators, so their
# parsers are built only when the command line asks for one of them (or for the top-level help).
DEV_COMMANDS = frozenset({"sim", "real-asterisk", "loadtest"})


def _command_word(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--log-level")
    pre.add_argument("command", nargs="?")
    return pre.parse_known_args(argv)[0].command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_word(argv)
    args = build_parser(with_dev_commands=command is None or command in DEV_COMMANDS).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
