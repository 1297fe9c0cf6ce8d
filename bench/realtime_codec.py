"""CPU of the Realtime client's per-call audio work, without sockets: caller frames encoded into
`input_audio_buffer.append` events (50 a second) and model audio deltas decoded back to PCM.

    .venv/bin/python bench/realtime_codec.py [--seconds 600] [--format pcm16|g711_ulaw]

Reports CPU milliseconds per call-second (budget: ≤ 0.15 ms on passthrough profiles for all
audio conversions including base64 and JSON) and per-event percentiles.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import time

from media_worker.realtime.protocol import RealtimeProtocol
from shared.config.ga_session import build_session
from shared.config.schema import OpenAIRealtime


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1e6:.1f} µs, p99 {q[98] * 1e6:.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600, help="call-seconds of two-way audio")
    parser.add_argument("--format", choices=["pcm16", "g711_ulaw"], default="pcm16")
    args = parser.parse_args()

    bytes_per_ms = 48 if args.format == "pcm16" else 8
    provider = OpenAIRealtime(input_audio_format=args.format, output_audio_format=args.format)
    protocol = RealtimeProtocol(build_session(provider, instructions=""))
    rng = random.Random(1)
    frame = bytes(rng.getrandbits(8) for _ in range(20 * bytes_per_ms))

    # Model audio arrives in uneven deltas (as the GA server sends them): build one call-second's worth of them.
    deltas = []
    remaining = 1000 * bytes_per_ms
    while remaining > 0:
        size = min(remaining, rng.randrange(30, 130) * bytes_per_ms // 2 * 2)
        deltas.append(
            json.dumps(
                {
                    "type": "response.output_audio.delta",
                    "event_id": "event_" + "x" * 21,
                    "response_id": "resp_1",
                    "item_id": "item_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": base64.b64encode(bytes(rng.getrandbits(8) for _ in range(size))).decode(),
                }
            )
        )
        remaining -= size

    cpu0 = time.process_time()
    for _ in range(args.seconds):
        for _ in range(50):
            RealtimeProtocol.append_frame(frame)
        for raw in deltas:
            protocol.receive(raw)
    cpu = time.process_time() - cpu0

    append_times, delta_times = [], []  # a second pass, timed per event, for the percentiles
    for _ in range(min(args.seconds, 100)):
        for _ in range(50):
            t = time.perf_counter()
            RealtimeProtocol.append_frame(frame)
            append_times.append(time.perf_counter() - t)
        for raw in deltas:
            t = time.perf_counter()
            protocol.receive(raw)
            delta_times.append(time.perf_counter() - t)

    print(f"format {args.format}: {args.seconds} call-seconds, {len(deltas)} deltas per second of model audio")
    print(f"CPU per call-second (both directions): {cpu / args.seconds * 1000:.4f} ms")
    print(f"append encode: {percentiles(append_times)}")
    print(f"delta decode:  {percentiles(delta_times)}")


if __name__ == "__main__":
    main()
