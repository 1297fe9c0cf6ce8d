"""CPU and quality of the media worker's per-call audio path (media_worker/audio), without sockets.

    .venv/bin/python bench/media_audio.py [--seconds 20] [--rounds 7]

One call-second is 50 wire frames of 20 ms in (`to_provider`) and 10 model deltas of 100 ms out (`to_wire`),
the load every benchmark here uses; base64/JSON are not included here (bench/realtime_codec.py has them).
Variants run interleaved round by round and report the median µs of CPU per call-second. The baselines
run on the same frames: `numpy.interp` with a one-sample carry (the anchor's default resampler) and a
soxr VHQ stream (Pipecat's default), each with the same μ-law tables where the pairing has μ-law.
Quality figures of the 24k->8k FIR: alias rejection, pass-band ripple and impulse group delay.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import soxr

from media_worker.audio.convert import PROVIDER_FORMATS, WIRE_FORMATS, Converter, silence
from media_worker.audio.fir import Downsampler3, delay_samples
from media_worker.audio.g711 import DECODE_TABLE, ENCODE_TABLE, ulaw_encode
from media_worker.audio.gate import SpeechGate
from media_worker.audio.playout import PlayoutQueue


def speechlike(rate: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 140 * (1 + 0.2 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 25))
    x *= 0.3 + 0.7 * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t))
    x += 0.05 * rng.standard_normal(len(t))
    x *= 0.1 * 32767 / np.sqrt(np.mean(x**2))
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def wire_frames(wire: str, seconds: int) -> list[bytes]:
    conv = Converter(wire, "pcm16")
    x = speechlike(conv.wire_rate, seconds, 1)
    data = ulaw_encode(x.tobytes()) if wire == "ulaw" else x.astype(">i2" if wire == "slin_be" else "<i2").tobytes()
    n = conv.wire_frame_bytes
    return [data[i : i + n] for i in range(0, len(data), n)]


def provider_deltas(provider: str, seconds: int) -> list[bytes]:
    x = speechlike(24000 if provider == "pcm16" else 8000, seconds, 2)
    data = x.tobytes() if provider == "pcm16" else ulaw_encode(x.tobytes())
    n = len(data) // (10 * seconds)
    return [data[i : i + n] for i in range(0, len(data), n)]


# -- baselines (same frames, same μ-law tables) ----------------------------------------------------------


class InterpResampler:
    """The anchor's linear resampler: np.interp at exact positions with a one-sample carry."""

    def __init__(self, src: int, dst: int) -> None:
        self.step = src / dst
        self.last = 0.0
        self.pos = 0.0  # position of the next output, in input samples from the carried sample

    def process(self, x: np.ndarray) -> np.ndarray:
        ext = np.concatenate(([self.last], x.astype(np.float64)))
        count = int((len(x) - self.pos) / self.step) + 1 if len(x) else 0
        positions = self.pos + self.step * np.arange(count)
        y = np.interp(positions, np.arange(len(ext)), ext)
        self.pos = self.pos + self.step * count - len(x)
        self.last = float(ext[-1])
        return y.astype(np.int16)


class SoxrVhq:
    def __init__(self, src: int, dst: int) -> None:
        self.stream = soxr.ResampleStream(src, dst, 1, dtype="int16", quality="VHQ")

    def process(self, x: np.ndarray) -> np.ndarray:
        return self.stream.resample_chunk(x)


def baseline_pair(kind: type, wire: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """wire (8 kHz slin or ulaw) <-> pcm16 24 kHz with a baseline resampler."""
    up, down = kind(8000, 24000), kind(24000, 8000)
    if wire == "ulaw":

        def to_provider(frame: bytes) -> bytes:
            return up.process(DECODE_TABLE.take(np.frombuffer(frame, np.uint8))).tobytes()

        def to_wire(delta: bytes) -> bytes:
            return ENCODE_TABLE.take(down.process(np.frombuffer(delta, "<i2")).view(np.uint16)).tobytes()
    else:

        def to_provider(frame: bytes) -> bytes:
            return up.process(np.frombuffer(frame, "<i2")).tobytes()

        def to_wire(delta: bytes) -> bytes:
            return down.process(np.frombuffer(delta, "<i2")).tobytes()

    return to_provider, to_wire


# -- timing ------------------------------------------------------------------------------------------------


def call_seconds(
    to_provider: Callable[[bytes], bytes],
    to_wire: Callable[[bytes], bytes],
    frames: list[bytes],
    deltas: list[bytes],
    seconds: int,
) -> float:
    """µs of CPU per call-second over `seconds` call-seconds."""
    t0 = time.process_time()
    for s in range(seconds):
        for frame in frames[s * 50 : (s + 1) * 50]:
            to_provider(frame)
        for delta in deltas[s * 10 : (s + 1) * 10]:
            to_wire(delta)
    return (time.process_time() - t0) * 1e6 / seconds


def run_interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            results[name].append(fn())
    return {name: statistics.median(values) for name, values in results.items()}


def converter_variant(wire: str, provider: str, seconds: int) -> Callable[[], float]:
    frames, deltas = wire_frames(wire, seconds), provider_deltas(provider, seconds)

    def run() -> float:
        conv = Converter(wire, provider)
        return call_seconds(conv.to_provider, conv.to_wire, frames, deltas, seconds)

    return run


def baseline_variant(kind: type, wire: str, seconds: int) -> Callable[[], float]:
    frames, deltas = wire_frames(wire, seconds), provider_deltas("pcm16", seconds)

    def run() -> float:
        return call_seconds(*baseline_pair(kind, wire), frames, deltas, seconds)

    return run


def playout_variant(seconds: int) -> Callable[[], float]:
    deltas = [d[: len(d) // 6] for d in provider_deltas("g711_ulaw", seconds)]  # 100 ms of 8 kHz μ-law

    def run() -> float:
        q = PlayoutQueue(160, silence("ulaw"))
        t0 = time.process_time()
        for s in range(seconds):
            for delta in deltas[s * 10 : (s + 1) * 10]:
                q.push(f"item{s}", delta)
                for _ in range(5):
                    q.tick()
            q.end_item(f"item{s}")
        return (time.process_time() - t0) * 1e6 / seconds

    return run


def gate_variant(rate: int, seconds: int) -> Callable[[], float]:
    out = speechlike(rate, seconds, 3)
    inc = (speechlike(rate, seconds, 4) // 4).astype(np.int16)
    n = rate // 50
    outs = [out[i : i + n].tobytes() for i in range(0, len(out), n)]
    incs = [inc[i : i + n].tobytes() for i in range(0, len(inc), n)]

    def run() -> float:
        gate = SpeechGate(rate)
        t0 = time.process_time()
        for o, i in zip(outs, incs, strict=True):
            gate.outgoing(o)
            gate.incoming(i)
        return (time.process_time() - t0) * 1e6 / seconds

    return run


# -- quality -------------------------------------------------------------------------------------------------


def fir_quality() -> dict[str, float]:
    def through(x24: np.ndarray) -> np.ndarray:
        down = Downsampler3()
        data = np.clip(np.rint(x24), -32768, 32767).astype("<i2").tobytes()
        return np.concatenate([np.frombuffer(down.process(data[i : i + 960]), "<i2") for i in range(0, len(data), 960)])

    def fit(y: np.ndarray, f: float) -> float:
        t = np.arange(len(y)) / 8000
        basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
        return float(np.hypot(*coef))

    amp = 0.5 * 32767
    t = np.arange(12000) / 24000
    out: dict[str, float] = {}
    for f in (4600, 5000, 8000):
        y = through(amp * np.sin(2 * np.pi * f * t))[400:]
        alias = abs((f + 4000) % 8000 - 4000)
        level = max(fit(y, alias), np.sqrt(2 * np.mean(y.astype(np.float64) ** 2)), 0.5)
        out[f"rejection {f} Hz (dB)"] = -20 * np.log10(level / amp)
    gains = [
        20 * np.log10(fit(through(amp * np.sin(2 * np.pi * f * t))[400:], f) / amp)
        for f in (100, 300, 1000, 2000, 3000, 3400)
    ]
    out["pass-band ripple to 3.4 kHz (dB p-p)"] = max(gains) - min(gains)
    impulse = np.zeros(2400)
    impulse[300] = 30000
    y = through(impulse)
    out["group delay, impulse (ms)"] = (int(np.argmax(np.abs(y))) - 100) / 8.0
    out["group delay, design (ms)"] = delay_samples(3) / 24.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20, help="call-seconds per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    s = args.seconds

    variants: dict[str, Callable[[], float]] = {}
    for wire in WIRE_FORMATS:
        for provider in PROVIDER_FORMATS:
            variants[f"{wire} <-> {provider}"] = converter_variant(wire, provider, s)
    for wire in ("slin", "ulaw"):
        variants[f"interp: {wire} <-> pcm16"] = baseline_variant(InterpResampler, wire, s)
        variants[f"soxr VHQ: {wire} <-> pcm16"] = baseline_variant(SoxrVhq, wire, s)
    variants["PlayoutQueue push+tick"] = playout_variant(s)
    variants["SpeechGate 8 kHz"] = gate_variant(8000, s)
    variants["SpeechGate 24 kHz"] = gate_variant(24000, s)
    medians = run_interleaved(variants, args.rounds)

    print(f"µs CPU per call-second, median of {args.rounds} interleaved rounds of {s} call-seconds")
    print(f"{'variant':34} {'µs/call-s':>10}   vs interp   vs soxr VHQ")
    for name, value in medians.items():
        ratio = ""
        for wire in ("slin", "ulaw"):
            if name == f"{wire} <-> pcm16":
                ratio = (
                    f"   {value / medians[f'interp: {wire} <-> pcm16']:9.2f}"
                    f"   {value / medians[f'soxr VHQ: {wire} <-> pcm16']:11.2f}"
                )
        print(f"{name:34} {value:10.0f}{ratio}")
    print()
    print("Downsampler3 (24k -> 8k) quality, 20 ms chunks:")
    for name, value in fir_quality().items():
        print(f"  {name:40} {value:8.2f}")


if __name__ == "__main__":
    main()
