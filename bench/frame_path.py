"""The per-frame media path, ours against the usual alternatives, on the same frames in one process.

    .venv/bin/python bench/frame_path.py [--seconds 20] [--rounds 21] [--json out.json]

One call-second is 50 caller frames of 20 ms in and 10 `response.output_audio.delta` events of 100 ms out (GA
field layout), with 50 playout ticks, as in bench/media_audio.py. Per profile and direction:
- in:   caller frame -> `input_audio_buffer.append` JSON text (codec, resample, base64, framing);
- out:  delta JSON text -> wire frames queued for the clock (decode, base64, resample, codec, framing);
- tick: the 20 ms clock taking one frame from the queue.
Alternatives, on the same frames: the anchor's way (`np.interp` linear resampling, `audioop` μ-law, stdlib
base64 + `json`, a bytearray pacer), Pipecat's default (soxr VHQ streams, `audioop` μ-law, stdlib base64 +
`json`; its pydantic models are not included, so its figure is a lower bound) and `audioop` alone (`ratecv`,
`ulaw2lin`/`lin2ulaw`, stdlib glue). Each variant runs interleaved round by round (A B C … A B C …) and is
timed with `time.process_time`; the figures are medians and min–max over the rounds.

Then the floor of our 8k <-> 24k conversion (its numpy calls alone, no glue), the resamplers' delay (impulse
group delay *and* audio held back after each call: a soxr stream's delay does not show in an impulse, only
as output missing between calls) and 24k -> 8k quality (alias rejection, pass-band ripple) for our FIR, soxr
QQ/LQ/VHQ streams, `np.interp` and `audioop.ratecv`.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with warnings.catch_warnings():  # stdlib audioop up to 3.12 (deprecated), the audioop-lts package from 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from media_audio import InterpResampler, speechlike  # noqa: E402

from media_worker.audio.convert import Converter, silence  # noqa: E402
from media_worker.audio.fir import _HI, _LO, PCM16_LE, Downsampler3, Upsampler3, _clip  # noqa: E402
from media_worker.audio.g711 import DECODE_TABLE_F32, ENCODE_TABLE, ulaw_encode  # noqa: E402
from media_worker.audio.playout import PlayoutQueue  # noqa: E402
from media_worker.realtime.protocol import AudioChunk, RealtimeProtocol  # noqa: E402

FRAMES_PER_S, DELTAS_PER_S, TICKS_PER_DELTA = 50, 10, 5
PARTS = ("in", "out", "tick")

# profile -> (wire format, provider format, anti-aliased resampling?)
PROFILES = {
    "slin24 <-> pcm16 (passthrough)": ("slin24", "pcm16", False),
    "ulaw <-> pcmu (passthrough)": ("ulaw", "g711_ulaw", False),
    "slin 8k <-> pcm16 24k": ("slin", "pcm16", True),
    "ulaw 8k <-> pcm16 24k": ("ulaw", "pcm16", True),
}
WIRE_FRAME = {"slin24": 960, "ulaw": 160, "slin": 320}


# -- the same input for every variant ---------------------------------------------------------------------


def wire_frames(wire: str, seconds: int) -> list[bytes]:
    rate = 24000 if wire == "slin24" else 8000
    x = speechlike(rate, seconds, 1)
    data = ulaw_encode(x.tobytes()) if wire == "ulaw" else x.tobytes()
    n = WIRE_FRAME[wire]
    return [data[i : i + n] for i in range(0, len(data), n)]


def delta_texts(provider: str, seconds: int) -> list[str]:
    """GA `response.output_audio.delta` texts of 100 ms each; one item per call-second."""
    x = speechlike(24000 if provider == "pcm16" else 8000, seconds, 2)
    data = x.tobytes() if provider == "pcm16" else ulaw_encode(x.tobytes())
    n = len(data) // (DELTAS_PER_S * seconds)
    return [
        json.dumps(
            {
                "type": "response.output_audio.delta",
                "event_id": f"event_C{i:020d}",
                "response_id": "resp_C0000000000001",
                "item_id": f"item_C{i // DELTAS_PER_S:018d}",
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(data[i * n : (i + 1) * n]).decode("ascii"),
            }
        )
        for i in range(DELTAS_PER_S * seconds)
    ]


# -- a call's per-frame path: in(frame) -> text, out(text) -> None (queued), tick() -> frame -----------------


class OurPath:
    """What media_worker/session.py runs per frame: Converter, RealtimeProtocol, PlayoutQueue."""

    def __init__(self, wire: str, provider: str, glue: bool = True) -> None:
        self.conv = Converter(wire, provider)
        fmt = "audio/pcm" if provider == "pcm16" else "audio/pcmu"
        self.protocol = RealtimeProtocol({"audio": {"output": {"format": {"type": fmt}}}})
        self.queue = PlayoutQueue(self.conv.wire_frame_bytes, silence(wire))
        self.glue = glue

    def inbound(self, frame: bytes) -> bytes:
        pcm = self.conv.to_provider(frame)
        return RealtimeProtocol.append_frame(pcm) if self.glue else pcm

    def outbound(self, text: str) -> None:
        for event in self.protocol.receive(text):
            if type(event) is AudioChunk:
                self.queue.push(event.item_id, self.conv.to_wire(event.data))

    def tick(self) -> bytes:
        return self.queue.tick()[0]


class _Interp:
    def __init__(self, src: int, dst: int) -> None:
        self._r = InterpResampler(src, dst)

    def __call__(self, x: bytes) -> bytes:
        return self._r.process(np.frombuffer(x, "<i2")).tobytes()


class _Soxr:
    def __init__(self, src: int, dst: int, quality: str = "VHQ") -> None:
        self._s = soxr.ResampleStream(src, dst, 1, dtype="int16", quality=quality)

    def __call__(self, x: bytes) -> bytes:
        return self._s.resample_chunk(np.frombuffer(x, "<i2")).tobytes()


class _Ratecv:
    def __init__(self, src: int, dst: int) -> None:
        self._src, self._dst, self._state = src, dst, None

    def __call__(self, x: bytes) -> bytes:
        y, self._state = audioop.ratecv(x, 2, 1, self._src, self._dst, self._state)
        return y


RESAMPLERS: dict[str, type] = {"np.interp": _Interp, "soxr VHQ": _Soxr, "audioop.ratecv": _Ratecv}


class StdlibPath:
    """The common other way: stdlib base64 + `json` glue, `audioop` μ-law, a chosen resampler (None for the
    passthrough profiles) and a bytearray pacer. An empty resampler output sends no append (as Pipecat)."""

    def __init__(self, wire: str, provider: str, resampler: str | None, glue: bool = True) -> None:
        self.ulaw = wire == "ulaw" and provider == "pcm16"
        kind = RESAMPLERS[resampler] if resampler else None
        self.up = kind(8000, 24000) if kind else None
        self.down = kind(24000, 8000) if kind else None
        self.frame_bytes = WIRE_FRAME[wire]
        self.silence = silence(wire)
        self.buf = bytearray()
        self.glue = glue

    def convert_in(self, frame: bytes) -> bytes:
        pcm = audioop.ulaw2lin(frame, 2) if self.ulaw else frame
        return self.up(pcm) if self.up else pcm

    def convert_out(self, pcm: bytes) -> bytes:
        pcm = self.down(pcm) if self.down else pcm
        return audioop.lin2ulaw(pcm, 2) if self.ulaw else pcm

    def inbound(self, frame: bytes) -> str | bytes | None:
        pcm = self.convert_in(frame)
        if not self.glue:
            return pcm
        if not pcm:
            return None
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")})

    def outbound(self, text: str) -> None:
        event = json.loads(text)
        if event.get("type") == "response.output_audio.delta":
            self.buf += self.convert_out(base64.b64decode(event["delta"]))

    def outbound_raw(self, pcm: bytes) -> None:
        self.buf += self.convert_out(pcm)

    def tick(self) -> bytes:
        n = self.frame_bytes
        if len(self.buf) < n:
            return self.silence
        frame = bytes(self.buf[:n])
        del self.buf[:n]
        return frame


class OurRaw(OurPath):
    """Our conversions alone (no base64/JSON): `Converter` plus the playout queue."""

    def __init__(self, wire: str, provider: str) -> None:
        super().__init__(wire, provider, glue=False)

    def outbound_raw(self, pcm: bytes) -> None:
        self.queue.push("item", self.conv.to_wire(pcm))


# -- timing ---------------------------------------------------------------------------------------------------


def timed_round(
    make: Callable[[], object], frames: list[bytes], outs: list, seconds: int, raw: bool
) -> tuple[float, float, float]:
    """µs of CPU per call-second for in, out and tick, over `seconds` call-seconds on a fresh call."""
    path = make()
    inbound = path.inbound
    outbound = path.outbound_raw if raw else path.outbound
    tick = path.tick
    clock = time.process_time
    t0 = clock()
    for frame in frames:
        inbound(frame)
    t1 = clock()
    for delta in outs:
        outbound(delta)
    t2 = clock()
    for _ in range(FRAMES_PER_S * seconds):
        tick()
    t3 = clock()
    return ((t1 - t0) * 1e6 / seconds, (t2 - t1) * 1e6 / seconds, (t3 - t2) * 1e6 / seconds)


class Variant:
    def __init__(
        self, profile: str, impl: str, make: Callable[[], object], frames: list[bytes], outs: list, raw: bool = False
    ) -> None:
        self.profile, self.impl, self.make, self.frames, self.outs, self.raw = profile, impl, make, frames, outs, raw
        self.samples: list[tuple[float, float, float]] = []

    def run(self, seconds: int) -> tuple[float, float, float]:
        return timed_round(self.make, self.frames, self.outs, seconds, self.raw)

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for i, part in enumerate((*PARTS, "total")):
            values = [sum(s) for s in self.samples] if part == "total" else [s[i] for s in self.samples]
            out[part] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        return out


def build_variants(seconds: int) -> list[Variant]:
    variants: list[Variant] = []
    for profile, (wire, provider, resampled) in PROFILES.items():
        frames, texts = wire_frames(wire, seconds), delta_texts(provider, seconds)
        raws = [base64.b64decode(json.loads(t)["delta"]) for t in texts]
        variants.append(Variant(profile, "ours", lambda w=wire, p=provider: OurPath(w, p), frames, texts))
        for name in RESAMPLERS if resampled else [None]:
            label = f"{name} + stdlib json/base64" if name else "stdlib json/base64"
            variants.append(
                Variant(profile, label, lambda w=wire, p=provider, n=name: StdlibPath(w, p, n), frames, texts)
            )
        if resampled:  # the conversions alone, without base64/JSON, to separate resampling from glue
            variants.append(
                Variant(
                    profile, "ours, conversion only", lambda w=wire, p=provider: OurRaw(w, p), frames, raws, raw=True
                )
            )
            for name in RESAMPLERS:
                variants.append(
                    Variant(
                        profile,
                        f"{name}, conversion only",
                        lambda w=wire, p=provider, n=name: StdlibPath(w, p, n, glue=False),
                        frames,
                        raws,
                        raw=True,
                    )
                )
    return variants


def run_interleaved(variants: list[Variant], seconds: int, rounds: int) -> None:
    for v in variants:  # warm-up round
        v.run(seconds)
    for _ in range(rounds):
        for v in variants:
            v.samples.append(v.run(seconds))


def null_loop(seconds: int, rounds: int) -> float:
    """The harness loop with a no-op path: what every figure includes beyond the work itself."""

    class Null:
        def inbound(self, frame: bytes) -> None:
            return None

        def outbound(self, text: str) -> None:
            return None

        def tick(self) -> bytes:
            return b""

    frames, outs = [b""] * (FRAMES_PER_S * seconds), [""] * (DELTAS_PER_S * seconds)
    return statistics.median(sum(timed_round(Null, frames, outs, seconds, False)) for _ in range(rounds))


# -- delay ------------------------------------------------------------------------------------------------------


def _float_in(cls: type) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    def make() -> Callable[[np.ndarray], np.ndarray]:
        r = cls()
        return lambda x: r.process_array(x.astype(np.float32))

    return make


def delay_resamplers(src: int, dst: int) -> dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]]:
    """Fresh streaming resamplers (int16 array in, array out) for one direction."""

    def soxr_make(q: str) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
        return lambda: soxr.ResampleStream(src, dst, 1, dtype="int16", quality=q).resample_chunk

    def interp() -> Callable[[np.ndarray], np.ndarray]:
        return InterpResampler(src, dst).process

    def ratecv() -> Callable[[np.ndarray], np.ndarray]:
        r = _Ratecv(src, dst)
        return lambda x: np.frombuffer(r(x.tobytes()), "<i2")

    ours = Upsampler3 if dst > src else Downsampler3
    return {
        "ours (FIR)": _float_in(ours),
        "soxr QQ": soxr_make("QQ"),
        "soxr LQ": soxr_make("LQ"),
        "soxr VHQ": soxr_make("VHQ"),
        "np.interp": interp,
        "audioop.ratecv": ratecv,
    }


def stream(process: Callable[[np.ndarray], np.ndarray], x: np.ndarray, chunk: int) -> tuple[np.ndarray, list[int]]:
    outs, sizes = [], []
    for i in range(0, len(x), chunk):
        y = np.asarray(process(x[i : i + chunk]))
        outs.append(y.astype(np.float64))
        sizes.append(len(y))
    return np.concatenate(outs), sizes


def group_delay_ms(make: Callable, src: int, dst: int, chunk: int) -> float:
    """Where an impulse comes out in the concatenated output, against where it went in (sub-sample peak). The
    impulse is a 2 ms Hann pulse, so that a decimator which keeps every third sample cannot step over it."""
    x = np.zeros(src, dtype=np.int16)
    width = src // 500 | 1
    at = src // 2
    x[at - width // 2 : at + width // 2 + 1] = np.rint(16000 * np.hanning(width + 2)[1:-1]).astype(np.int16)
    y, _ = stream(make(), x, chunk)
    k = int(np.argmax(np.abs(y)))
    if 0 < k < len(y) - 1:
        a, b, c = abs(y[k - 1]), abs(y[k]), abs(y[k + 1])
        denom = a - 2 * b + c
        k = k + (0.5 * (a - c) / denom if denom else 0.0)
    return (k / dst - at / src) * 1000


def held_back(make: Callable, src: int, dst: int, chunk: int) -> dict[str, float]:
    """Input audio not yet returned as output after each call (expected minus emitted output), from the
    second quarter of a 2 s stream on; and the share of calls that returned nothing."""
    x = speechlike(src, 2.0, 5)
    _, sizes = stream(make(), x, chunk)
    emitted = np.cumsum(sizes)
    fed = np.minimum(np.arange(1, len(sizes) + 1) * chunk, len(x))
    held = (fed * dst / src - emitted) / dst * 1000
    tail = slice(len(sizes) // 4, None)
    return {
        "held_mean_ms": float(np.mean(held[tail])),
        "held_max_ms": float(np.max(held[tail])),
        "empty_calls_pct": 100.0 * float(np.mean(np.asarray(sizes)[tail] == 0)),
    }


def delay_table() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for src, dst, chunk_ms in ((8000, 24000, 20), (24000, 8000, 100), (24000, 8000, 20)):
        for name, make in delay_resamplers(src, dst).items():
            chunk = src * chunk_ms // 1000
            gd = group_delay_ms(make, src, dst, chunk)
            hb = held_back(make, src, dst, chunk)
            rows.append(
                {
                    "resampler": name,
                    "direction": f"{src // 1000}k->{dst // 1000}k ({chunk_ms} ms)",
                    "group_delay_ms": gd,
                    **hb,
                    "added_mean_ms": gd + hb["held_mean_ms"],
                    "added_max_ms": gd + hb["held_max_ms"],
                }
            )
    return rows


# -- 24k -> 8k quality ------------------------------------------------------------------------------------------


def _fit(y: np.ndarray, f: float) -> float:
    t = np.arange(len(y)) / 8000
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef))


def quality_24k_to_8k(make: Callable) -> dict[str, float]:
    """Rejection of −6 dBFS tones at 4.6/5/8 kHz (the larger of the alias component and the output's whole
    level, floored at 0.5 LSB) and pass-band gain 100 Hz–3.4 kHz, streaming 100 ms chunks."""
    amp = 0.5 * 32767
    t = np.arange(36000) / 24000

    def through(f: float) -> np.ndarray:
        x = np.rint(amp * np.sin(2 * np.pi * f * t)).astype(np.int16)
        y, _ = stream(make(), x, 2400)
        return y[800:]  # past the start-up transient (and any stream's first held-back block)

    out: dict[str, float] = {}
    for f in (4600, 5000, 8000):
        y = through(f)
        alias = abs((f + 4000) % 8000 - 4000)
        level = max(_fit(y, alias), float(np.sqrt(2 * np.mean(y**2))), 0.5)
        out[f"rejection_{f}_db"] = -20 * np.log10(level / amp)
    gains = [20 * np.log10(_fit(through(f), f) / amp) for f in (100, 300, 1000, 2000, 3000, 3400)]
    out["ripple_pp_db"] = max(gains) - min(gains)
    out["gain_3400_db"] = gains[-1]
    return out


def quality_table() -> dict[str, dict[str, float]]:
    return {name: quality_24k_to_8k(make) for name, make in delay_resamplers(24000, 8000).items()}


# -- floor: the numpy calls alone -------------------------------------------------------------------------------


def floor_us(wire: str, seconds: int, rounds: int) -> dict[str, float]:
    """The numpy calls our 8 kHz <-> 24 kHz conversion makes per call-second (media_worker/audio/fir.py and
    convert.py), on arrays of the same shapes, with no Python around them beyond this loop: the floor of the
    design, whatever the glue. in: 50 frames of 160 samples (decode into the buffer, row pairs, one product,
    history, round, saturate, int16, bytes); out: 10 deltas of 2400 samples (into the buffer, two block
    products and their sum, held samples, round, saturate, int16, μ-law or bytes)."""
    frame = wire_frames(wire, 1)[0]
    delta = np.frombuffer(speechlike(24000, 0.1, 3).tobytes(), np.int16).tobytes()
    u8, u16 = np.dtype(np.uint8), np.dtype(np.uint16)
    flat = np.zeros(192, np.float32)
    x_in, hist, last = flat[32:], flat[:32], flat[160:]
    pairs = np.zeros((5, 2, 32), np.float32)
    pair_src = np.lib.stride_tricks.as_strided(flat, (5, 2, 32), (128, 128, 4))
    rows, matrix, up_out = pairs.reshape(5, 64), np.ones((64, 96), np.float32), np.empty((5, 96), np.float32)
    y_up = up_out.reshape(-1)
    buf = np.zeros(2550, np.float32)
    grid, taps0, taps1 = buf.reshape(34, 75), np.ones((75, 25), np.float32), np.ones((75, 25), np.float32)
    y0, y1 = np.empty((32, 25), np.float32), np.empty((32, 25), np.float32)
    y_down = y0.reshape(-1)
    ulaw = wire == "ulaw"
    clock = time.process_time
    samples = []
    for _ in range(rounds + 1):
        t0 = clock()
        for _ in range(seconds):
            for _ in range(FRAMES_PER_S):
                if ulaw:
                    DECODE_TABLE_F32.take(np.frombuffer(frame, u8), out=x_in, mode="clip")
                else:
                    x_in[:] = np.frombuffer(frame, PCM16_LE)
                np.copyto(pairs, pair_src)
                np.dot(rows, matrix, out=up_out)
                np.copyto(hist, last)
                np.rint(y_up, out=y_up)
                _clip(y_up, _LO, _HI, out=y_up)
                y_up.astype(PCM16_LE).tobytes()
            for _ in range(DELTAS_PER_S):
                buf[72:2472] = np.frombuffer(delta, PCM16_LE)
                np.dot(grid[:32], taps0, out=y0)
                np.dot(grid[1:33], taps1, out=y1)
                np.add(y0, y1, out=y0)
                buf[:72] = buf[2400:2472]
                np.rint(y_down, out=y_down)
                _clip(y_down, _LO, _HI, out=y_down)
                pcm = y_down.astype(PCM16_LE)
                ENCODE_TABLE.take(pcm.view(u16)).tobytes() if ulaw else pcm.tobytes()
        samples.append((clock() - t0) * 1e6 / seconds)
    return {"median": statistics.median(samples[1:]), "min": min(samples[1:]), "max": max(samples[1:])}


# -- report -----------------------------------------------------------------------------------------------------


def measure(seconds: int, rounds: int) -> dict[str, object]:
    variants = build_variants(seconds)
    run_interleaved(variants, seconds, rounds)
    cpu = [{"profile": v.profile, "impl": v.impl, **v.summary()} for v in variants]
    return {
        "seconds": seconds,
        "rounds": rounds,
        "null_us": null_loop(seconds, rounds),
        "cpu": cpu,
        "delay": delay_table(),
        "quality": quality_table(),
        "floor": {wire: floor_us(wire, seconds, rounds) for wire in ("slin", "ulaw")},
    }


def print_report(r: dict[str, object]) -> None:
    print(
        f"µs CPU per call-second, median (min–max) of {r['rounds']} interleaved rounds of {r['seconds']} "
        f"call-seconds; x ours = the alternative's total / ours (harness loop alone: {r['null_us']:.1f} µs)"
    )
    ours: dict[tuple[str, bool], float] = {}
    for row in r["cpu"]:
        if row["impl"].startswith("ours"):
            ours[(row["profile"], "conversion only" in row["impl"])] = row["total"]["median"]
    current = None
    for row in r["cpu"]:
        if row["profile"] != current:
            current = row["profile"]
            print(f"\n{current}")
            print(f"  {'variant':40} {'in':>7} {'out':>7} {'tick':>6} {'total (min–max)':>22} {'x ours':>7}")
        base = ours[(row["profile"], "conversion only" in row["impl"])]
        tot = row["total"]
        print(
            f"  {row['impl']:40} {row['in']['median']:7.0f} {row['out']['median']:7.0f} "
            f"{row['tick']['median']:6.0f} {tot['median']:8.0f} ({tot['min']:5.0f}–{tot['max']:5.0f})"
            f" {tot['median'] / base:7.2f}"
        )
    print("\nresampler delay: impulse group delay + audio held back after each call (from the 2nd quarter on)")
    print(
        f"  {'resampler':16} {'direction':18} {'group ms':>9} {'held mean/max ms':>17} {'added mean/max ms':>18} "
        f"{'empty calls':>11}"
    )
    for d in r["delay"]:
        print(
            f"  {d['resampler']:16} {d['direction']:18} {d['group_delay_ms']:9.3f} "
            f"{d['held_mean_ms']:8.2f}/{d['held_max_ms']:<8.2f} {d['added_mean_ms']:9.2f}/{d['added_max_ms']:<8.2f}"
            f" {d['empty_calls_pct']:10.0f}%"
        )
    print("\nfloor of our 8k <-> 24k conversion: its numpy calls alone, µs per call-second, median (min–max)")
    for wire, f in r["floor"].items():
        print(f"  {wire} 8k <-> pcm16 24k  {f['median']:5.0f} ({f['min']:.0f}–{f['max']:.0f})")
    print("\n24k -> 8k quality (100 ms chunks): rejection dB at 4.6 / 5 / 8 kHz, pass band 100 Hz–3.4 kHz")
    for name, q in r["quality"].items():
        print(
            f"  {name:16} {q['rejection_4600_db']:6.1f} {q['rejection_5000_db']:6.1f} {q['rejection_8000_db']:6.1f}"
            f"   ripple {q['ripple_pp_db']:.2f} dB p-p, {q['gain_3400_db']:+.2f} dB at 3.4 kHz"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20, help="call-seconds per round and variant")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.seconds, args.rounds)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
