"""`voice-agent sim asterisk`: the Asterisk simulator as a process of its own (demo, load tests).

Prints `listening on http://HOST:PORT` as its first line; SIGTERM/SIGINT stop it cleanly (exit 0). ARI is at
/ari, the control API (see sim.asterisk.control) at /sim."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from shared import event_loop

from sim.asterisk.stasis_delay import DEFAULT_MS, ENV, StasisDelay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088, help="0: any free port (the URL is printed first)")
    parser.add_argument("--user", default="asterisk", help="ARI user")
    parser.add_argument("--password", default="secret", help="ARI password")
    parser.add_argument("--version", dest="asterisk_version", default="22.10.1", help="reported system.version")
    parser.add_argument("--dialplan", help="YAML dialplan {context: {exten: [App(args), ...]}} (default: built in)")
    parser.add_argument("--workdir", help="where voicemail WAVs go (default: a temporary directory)")
    parser.add_argument("--channelvars", default="AI_CONTEXT,AI_PROVIDER", help="ari.conf channelvars (csv)")
    parser.add_argument("--rtp-ports", default="20000-20999", help="UnicastRTP port range")
    parser.add_argument("--time-scale", type=float, default=1.0, help="dialplan Wait()/ring timers, times real time")
    parser.add_argument(
        "--stasis-delay-ms",
        type=_delay_ms,
        default=os.environ.get(ENV, f"{DEFAULT_MS[0]:g}:{DEFAULT_MS[1]:g}"),
        help=f"MIN:MAX ms from the answer to originate/create/externalMedia until the channel is "
        f"in Stasis, drawn per channel (env {ENV}; default %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="seed of the Stasis delay draws (default: unseeded)")
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the simulator's event loop (uvloop: the [uvloop] extra; the load test's benches use it when installed)",
    )
    parser.add_argument(
        "--keep-ended-calls",
        type=int,
        default=1000,
        help="ended callers kept for GET /sim/calls/{id} with what they heard (memory: a soak keeps few)",
    )


def _delay_ms(text: str) -> tuple[float, float]:
    try:
        delay = StasisDelay.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return delay.min_ms, delay.max_ms


async def _serve(args: argparse.Namespace) -> int:
    from sim.asterisk.server import AsteriskSim

    low, _, high = args.rtp_ports.partition("-")
    sim = AsteriskSim(
        users={args.user: args.password},
        version=args.asterisk_version,
        channelvars=tuple(v for v in args.channelvars.split(",") if v),
        dialplan=args.dialplan,
        rtp_port_range=(int(low), int(high or low)),
        workdir=args.workdir,
        time_scale=args.time_scale,
        stasis_delay_ms=args.stasis_delay_ms,
        seed=args.seed,
        record=False,
        keep_ended_calls=max(0, args.keep_ended_calls),
    )  # a long-running process keeps no event/request history
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sim.start(args.host, args.port)
    print(f"listening on {sim.url}", flush=True)
    await stop.wait()
    await sim.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return event_loop.run(_serve(args), args.event_loop, setting="--event-loop")
    except event_loop.EventLoopUnavailable as exc:
        print(exc)
        return 2
