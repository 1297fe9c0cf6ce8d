"""python -m sim.real_asterisk install|start|stop|status|record-swagger (scripts/real-asterisk wraps it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.real_asterisk.install import RealAsteriskUnavailable, default_cache, install, installed
from sim.real_asterisk.process import STATE, RealAsterisk, default_run_root, start
from sim.real_asterisk.swagger import record_swagger


def _instance(args) -> RealAsterisk | None:
    run = args.run_root / args.name
    if not (run / STATE).exists():
        return None
    ast = RealAsterisk.from_state(run)
    return ast if ast.running() else None


def cmd_install(args) -> int:
    inst = install(args.cache)
    print(f"{inst.version} (Debian package {inst.package_version}) in {inst.prefix}")
    return 0


def cmd_start(args) -> int:
    if ast := _instance(args):
        print(f"already running: {ast.ari_url} (run dir {ast.run_dir}); stop it first", file=sys.stderr)
        return 1
    # Asterisk runs in a session of its own: it stays up after this command returns.
    ast = start(args.run_root / args.name, args.cache)
    print(
        f"ARI URL   {ast.ari_url}\nuser      {ast.user}\npassword  {ast.password}\napp       {ast.app}\n"
        f"run dir   {ast.run_dir}\nversion   {ast.version}\n"
        f"stop with: scripts/real-asterisk stop{'' if args.name == 'default' else ' --name ' + args.name}"
    )
    return 0


def cmd_stop(args) -> int:
    ast = _instance(args)
    if ast is None:
        print(f"no real Asterisk runs in {args.run_root / args.name}")
        return 0
    ast.stop()
    print(f"stopped the real Asterisk of {ast.run_dir}")
    return 0


def cmd_status(args) -> int:
    inst = installed(args.cache)
    print(
        f"installed: {inst.version} in {inst.prefix}"
        if inst
        else f"not installed (cache {args.cache or default_cache()}; run: scripts/real-asterisk install)"
    )
    found = 0
    for state in sorted(args.run_root.glob(f"*/{STATE}")):
        ast = RealAsterisk.from_state(state.parent)
        if ast.running():
            found += 1
            print(
                f"running: {state.parent.name}  pid {ast.pid}  {ast.ari_url}  user {ast.user}  "
                f"password {ast.password}  run dir {ast.run_dir}"
            )
    if not found:
        print(f"no real Asterisk running under {args.run_root}")
    return 0


def cmd_record_swagger(args) -> int:
    ast = _instance(args)
    if ast is not None:
        out = record_swagger(ast, args.out)
    else:
        with start(cache_dir=args.cache) as ast:
            out = record_swagger(ast, args.out)
    print(f"the ARI swagger of Asterisk {ast.version} is in {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="install cache (default $VA_ASTERISK_CACHE or ~/.cache/voice-agent/asterisk)",
    )
    parser.add_argument(
        "--run-root",
        type=Path,
        default=default_run_root(),
        help="where run directories go (default $VA_ASTERISK_RUN_ROOT or /tmp/voice-agent-asterisk-UID)",
    )
    parser.add_argument("--name", default="default", help="the instance's run directory name (default: default)")
    sub = parser.add_subparsers(dest="real_asterisk_command", required=True, metavar="COMMAND")
    sub.add_parser("install", help="download and unpack the package (once; cached)").set_defaults(action=cmd_install)
    sub.add_parser("start", help="start one in the background; print its ARI URL, user and password").set_defaults(
        action=cmd_start
    )
    sub.add_parser("stop", help="stop the one `start` started").set_defaults(action=cmd_stop)
    sub.add_parser("status", help="what is installed and running").set_defaults(action=cmd_status)
    rs = sub.add_parser(
        "record-swagger",
        help="write the ARI swagger it serves to tests/fixtures/ari-api-docs-<version>/"
        " (uses the running instance, else starts one for the purpose)",
    )
    rs.add_argument("--out", type=Path, default=None, help="another folder to write to")
    rs.set_defaults(action=cmd_record_swagger)


def run(args: argparse.Namespace) -> int:
    try:
        return args.action(args)
    except RealAsteriskUnavailable as exc:
        print(f"real Asterisk unavailable: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="real-asterisk",
        description="a real Asterisk 22 (Debian's package, installed into a cache) for tests and trials, on loopback",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
