"""`voice-agent sim realtime`: the emulator as a process of its own (for the demo and load tests)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from shared import event_loop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port (the URL is printed first)")
    parser.add_argument(
        "--script", help="YAML script of replies: greeting, turns, after_tool, default, idle, transcripts"
    )
    parser.add_argument("--wire-log", help="JSONL log of every frame, both directions")
    parser.add_argument("--speed", type=float, default=3.0, help="audio pace, times real time (0: burst)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay per audio chunk")
    parser.add_argument("--first-audio-delay-ms", type=int, default=0)
    parser.add_argument(
        "--session-created-delay-ms", type=int, default=0, help="wait before a new connection's session.created"
    )
    parser.add_argument("--max-session-s", type=float, default=3600.0)
    parser.add_argument(
        "--truncate-shortfall-ms",
        type=float,
        default=0.0,
        help="the server thinks emitted audio is this much shorter (the drift seen in the field)",
    )
    parser.add_argument("--api-key", action="append", help="an accepted key (repeatable; default: any non-empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the emulator's event loop (uvloop: the [uvloop] extra; the load test's benches use it when installed)",
    )


async def _serve(args: argparse.Namespace) -> int:
    from sim.realtime.script import Script
    from sim.realtime.server import Emulator

    emu = Emulator(
        script=Script.from_yaml(args.script) if args.script else None,
        api_keys=set(args.api_key) if args.api_key else None,
        seed=args.seed,
        speed=args.speed,
        first_audio_delay_ms=args.first_audio_delay_ms,
        session_created_delay_ms=args.session_created_delay_ms,
        max_session_s=args.max_session_s,
        wire_log=args.wire_log,
        truncate_shortfall_ms=args.truncate_shortfall_ms,
        jitter_ms=args.jitter_ms,
        record=False,
        keep_closed=False,
    )  # a long-running process: the wire log is the record, and a closed session is forgotten
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await emu.start(args.host, args.port)
    print(f"listening on {emu.url}", flush=True)
    await stop.wait()
    await emu.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return event_loop.run(_serve(args), args.event_loop, setting="--event-loop")
    except event_loop.EventLoopUnavailable as exc:
        print(exc)
        return 2
