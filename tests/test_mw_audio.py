"""The media worker's audio: μ-law, the 8k<->24k FIR, per-call converters, the playout queue and clock,
and the echo-aware speech gate. Quality properties (rejection, flatness, delay) are measured here."""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings

import numpy as np
import pytest

from media_worker.audio.convert import PROVIDER_FORMATS, WIRE_FORMATS, Converter, silence
from media_worker.audio.fir import Downsampler, Downsampler3, Upsampler, Upsampler3, delay_samples, lowpass
from media_worker.audio.g711 import ulaw_decode, ulaw_encode
from media_worker.audio.gate import SpeechGate
from media_worker.audio.playout import PlayoutClock, PlayoutQueue

# -- signals ----------------------------------------------------------------------------------------------


def tone(freq: float, rate: int, seconds: float, dbfs: float = -6.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 10 ** (dbfs / 20) * 32767 * np.sin(2 * np.pi * freq * t)


def pcm(x: np.ndarray, dtype: str = "<i2") -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype(dtype).tobytes()


def samples(data: bytes, dtype: str = "<i2") -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).astype(np.float64)


def voice(rate: int, seconds: float, f0: float, seed: int, dbfs: float = -18.0, onset: bool = True) -> np.ndarray:
    """Speech-like: a harmonic source with a wandering pitch, three formant-like peaks, ~4 Hz syllables.
    With `onset`, the first syllable starts rising at t=0 (a talker starting to speak)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    formants = (500 + 200 * rng.random(), 1500 + 300 * rng.random(), 2500 + 300 * rng.random())
    x = np.zeros(len(t))
    for k in range(1, int(3800 / (f0 * 1.15))):
        amp = sum(np.exp(-(((k * pitch - f) / 150.0) ** 2)) for f in formants) + 0.05
        x += amp * np.sin(k * phase) / k**0.5
    start = np.pi / 2 if onset else rng.uniform(0, 6)  # env = 0.5 at t=0, rising
    x *= 0.2 + 0.8 * 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t + start))
    return x * 10 ** (dbfs / 20) * 32768 / np.sqrt(np.mean(x**2))


def fit_amplitude(y: np.ndarray, freq: float, rate: int) -> float:
    """Least-squares amplitude of a sinusoid at `freq` in y."""
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef))


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- μ-law ------------------------------------------------------------------------------------------------


def reference_ulaw_encode(sample: int) -> int:
    """The G.711 reference (Sun g711.c linear2ulaw, as audioop runs it on sample >> 2), one sample at a time."""
    pcm_val = sample >> 2
    if pcm_val < 0:
        pcm_val, mask = -pcm_val, 0x7F
    else:
        mask = 0xFF
    pcm_val = min(pcm_val, 8159) + (0x84 >> 2)
    seg_end = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
    seg = next((i for i, end in enumerate(seg_end) if pcm_val <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm_val >> (seg + 1)) & 0xF)) ^ mask


def reference_ulaw_decode(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def test_ulaw_bit_exact_all_codes_and_samples():
    codes = bytes(range(256))
    decoded = np.frombuffer(ulaw_decode(codes), dtype="<i2")
    assert decoded.tolist() == [reference_ulaw_decode(c) for c in range(256)]
    every = np.arange(-32768, 32768, dtype=np.int16)
    encoded = ulaw_encode(every.astype("<i2").tobytes())
    assert list(encoded) == [reference_ulaw_encode(int(s)) for s in every]
    assert ulaw_encode(b"\x00\x00") == b"\xff" and ulaw_decode(b"\xff") == b"\x00\x00"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # Python 3.13+: the scalar reference above stands alone
            return
    assert ulaw_decode(codes) == audioop.ulaw2lin(codes, 2)
    assert encoded == audioop.lin2ulaw(every.tobytes(), 2)


# -- FIR ----------------------------------------------------------------------------------------------------


def downsample_stream(x24: np.ndarray, chunk: int = 480) -> np.ndarray:
    down = Downsampler3()
    return np.concatenate([samples(down.process(c)) for c in chunked(pcm(x24), 2 * chunk)])


@pytest.mark.parametrize("freq", [4600, 5000, 6000, 8000, 10000, 11900])
def test_downsampler_rejects_alias_bands(freq):
    y = downsample_stream(tone(freq, 24000, 0.5))[400:]  # settled
    alias = abs((freq + 4000) % 8000 - 4000)  # where the tone folds in the 8 kHz band
    level = 20 * np.log10(max(np.sqrt(2 * np.mean(y**2)), fit_amplitude(y, alias, 8000), 1e-3) / (0.5 * 32767))
    assert level <= -50.0, f"{freq} Hz folds at {level:.1f} dB"


def test_downsampler_passband_flat_to_3400():
    gains = []
    for freq in (100, 300, 1000, 2000, 3000, 3200, 3400):
        y = downsample_stream(tone(freq, 24000, 0.3))[300:]
        gains.append(20 * np.log10(fit_amplitude(y, freq, 8000) / (0.5 * 32767)))
    assert max(gains) - min(gains) <= 1.0 and all(abs(g) <= 0.5 for g in gains), gains


def test_upsampler_suppresses_images_and_is_flat():
    for freq in (300, 1000, 3000, 3400):
        up = Upsampler3()
        y = np.concatenate([samples(up.process(c)) for c in chunked(pcm(tone(freq, 8000, 0.3)), 320)])[600:]
        gain = 20 * np.log10(fit_amplitude(y, freq, 24000) / (0.5 * 32767))
        assert abs(gain) <= 0.5, (freq, gain)
        for image in (8000 - freq, 8000 + freq, 16000 - freq):
            assert 20 * np.log10(fit_amplitude(y, image, 24000) / (0.5 * 32767) + 1e-9) <= -50.0, (freq, image)


def test_fir_delay_by_impulse_is_linear_phase_and_within_3ms():
    impulse = np.zeros(2400)
    impulse[300] = 30000.0  # on the 8 kHz grid (300 = 3·100)
    y = samples(Downsampler3().process(pcm(impulse)))
    peak = int(np.argmax(np.abs(y)))
    assert peak - 100 == delay_samples(3) // 3 == 12  # 12 samples at 8 kHz = 1.5 ms
    around = y[peak - 12 : peak + 13]
    assert np.allclose(around, around[::-1], atol=1.0)  # symmetric: linear phase
    x8 = np.zeros(800)
    x8[100] = 30000.0
    z = samples(Upsampler3().process(pcm(x8)))
    zpeak = int(np.argmax(np.abs(z)))
    assert zpeak - 300 == delay_samples(3) == 36  # 36 samples at 24 kHz = 1.5 ms
    around = z[zpeak - 36 : zpeak + 37]
    assert np.allclose(around, around[::-1], atol=1.0)


@pytest.mark.parametrize("factor", [2, 3])
def test_fir_state_continuity_any_split(factor):
    rng = np.random.default_rng(factor)
    x8 = tone(440, 8000, 0.5) + tone(2900, 8000, 0.5, -20)
    whole = samples(Upsampler(factor).process(pcm(x8)))
    up, parts, i = Upsampler(factor), [], 0
    while i < len(x8):
        n = int(rng.integers(1, 400))
        parts.append(up.process(pcm(x8[i : i + n])))
        i += n
    assert np.max(np.abs(samples(b"".join(parts)) - whole)) <= 1.0
    assert len(whole) == factor * len(x8)  # no hold-back: factor samples out for each one in
    xh = whole
    whole_down = samples(Downsampler(factor).process(pcm(xh)))
    down, parts, i = Downsampler(factor), [], 0
    while i < len(xh):
        n = int(rng.integers(1, 3000))
        parts.append(down.process(pcm(xh[i : i + n])))
        i += n
    got = samples(b"".join(parts))
    assert len(got) == len(whole_down) == -(-len(xh) // factor)
    assert np.max(np.abs(got - whole_down)) <= 1.0


def test_fir_steady_stream_allocates_no_new_buffers():
    # Per-frame path: after the first chunk, equal chunks reuse the filters' buffers (no allocation per call).
    up, down = Upsampler3(), Downsampler3()
    up.process(bytes(320))
    down.process(bytes(4800))
    up_buf, down_buf = up._flat, down._buf
    for _ in range(5):
        up.process(bytes(320))
        down.process(bytes(4800))
    assert up._flat is up_buf and down._buf is down_buf


def test_fir_20ms_in_gives_20ms_out():
    up, down = Upsampler3(), Downsampler3()
    for _ in range(5):
        assert len(up.process(bytes(320))) == 960
        assert len(down.process(bytes(960))) == 320


def full_scale_test_signal(rate: int, seconds: float, seed: int) -> np.ndarray:
    """A full-scale square wave (its ringing overshoots int16, so saturation is exercised), then noise."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    square = np.where(np.arange(n // 2) // (rate // 400) % 2 == 0, 32767, -32768)
    return np.concatenate((square, rng.normal(0, 8000, n - n // 2))).clip(-32768, 32767)


@pytest.mark.parametrize("factor", [2, 3])
def test_fir_matches_direct_convolution_in_frames_of_any_size(factor):
    # The block-matrix products against the textbook definition (np.convolve with the prototype), rounded
    # and saturated, over frames of random sizes: rows, partial rows and buffer growth all take their turn.
    h = lowpass(factor)
    rng = np.random.default_rng(10 + factor)
    x8 = full_scale_test_signal(8000, 0.5, factor)
    stuffed = np.zeros(factor * len(x8))
    stuffed[::factor] = x8
    want_up = np.clip(np.rint(np.convolve(stuffed, h * factor)[: len(stuffed)]), -32768, 32767)
    assert want_up.max() == 32767 and want_up.min() == -32768  # the ringing did overshoot
    xh = full_scale_test_signal(8000 * factor, 0.5, factor + 1)
    want_down = np.clip(np.rint(np.convolve(xh, h)[: len(xh) : factor]), -32768, 32767)
    for resampler, x, want, most in ((Upsampler(factor), x8, want_up, 400), (Downsampler(factor), xh, want_down, 3000)):
        parts, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, most))
            parts.append(resampler.process(pcm(x[i : i + n])))
            i += n
        got = samples(b"".join(parts))
        assert len(got) == len(want)
        assert np.max(np.abs(got - want)) <= 1.0  # float32 products against float64: at most 1 LSB apart


def test_ulaw_plans_equal_the_linear_path_with_the_codec_apart():
    # μ-law is decoded straight into the upsampler's buffer and encoded inline from the downsampler: the
    # same bytes as decoding first / encoding after the linear (slin) path, in chunks of any size.
    rng = np.random.default_rng(7)
    codes = ulaw_encode(pcm(full_scale_test_signal(8000, 0.5, 7)))
    model = pcm(full_scale_test_signal(24000, 0.5, 8))
    direct, via_linear = Converter("ulaw", "pcm16"), Converter("slin", "pcm16")
    i = 0
    while i < len(codes):
        n = int(rng.integers(1, 400))
        chunk = codes[i : i + n]
        assert direct.to_provider(chunk) == via_linear.to_provider(ulaw_decode(chunk))
        i += n
    i = 0
    while i < len(model):
        n = 2 * int(rng.integers(1, 3000))
        chunk = model[i : i + n]
        assert direct.to_wire(chunk) == ulaw_encode(via_linear.to_wire(chunk))
        i += n


# -- Converter ----------------------------------------------------------------------------------------------


def wire_bytes(wire: str, x8k_or_rate: np.ndarray) -> bytes:
    if wire == "ulaw":
        return ulaw_encode(pcm(x8k_or_rate))
    return pcm(x8k_or_rate, ">i2" if wire == "slin_be" else "<i2")


def wire_samples(wire: str, data: bytes) -> np.ndarray:
    if wire == "ulaw":
        return samples(ulaw_decode(data))
    return samples(data, ">i2" if wire == "slin_be" else "<i2")


def best_alignment_ser(ref: np.ndarray, got: np.ndarray, max_lag: int) -> tuple[float, int]:
    best = (-np.inf, 0)
    n = len(ref) - 2 * max_lag
    for lag in range(0, max_lag):
        seg_ref, seg_got = ref[max_lag : max_lag + n], got[max_lag + lag : max_lag + lag + n]
        if len(seg_got) < n:
            break
        err = np.mean((seg_ref - seg_got) ** 2)
        ser = 10 * np.log10(np.mean(seg_ref**2) / max(err, 1e-9))
        best = max(best, (ser, lag))
    return best


@pytest.mark.parametrize("provider", PROVIDER_FORMATS)
@pytest.mark.parametrize("wire", WIRE_FORMATS)
def test_converter_round_trip(wire, provider):
    conv = Converter(wire, provider)
    rate = conv.wire_rate
    x = voice(rate, 1.0, f0=130, seed=4, dbfs=-16)  # not periodic: one best alignment
    frames = chunked(wire_bytes(wire, x), conv.wire_frame_bytes)
    up = [conv.to_provider(f) for f in frames]
    if conv.passthrough:
        assert all(a is b for a, b in zip(up, frames, strict=True))  # no work at all
        assert conv.to_wire(b"abc") == b"abc"
        return
    # Every 20 ms wire frame becomes about 20 ms of provider audio at once (no batching, no hold-back).
    sizes = [len(u) for u in up[5:]]
    assert max(sizes) - min(sizes) <= 4 and abs(np.mean(sizes) - conv.provider_frame_bytes) <= 2
    model = b"".join(up)
    back = b"".join(conv.to_wire(c) for c in chunked(model, 4801)) + conv.drain_wire()  # odd sizes too
    got = wire_samples(wire, back)
    ref = wire_samples(wire, b"".join(frames))
    assert abs(len(got) - len(ref)) <= rate // 100
    ser, lag = best_alignment_ser(ref, got, rate // 20)
    ulaw_legs = (wire == "ulaw") + (provider == "g711_ulaw")
    assert ser >= (30.0 if ulaw_legs else 40.0), (ser, lag)
    assert lag <= rate * 3 // 1000 * 2 + rate // 500  # FIR: 1.5 ms per direction; soxr: ~0


def test_converter_byte_orders_and_frames():
    x = tone(1000, 8000, 0.1)
    le, be = pcm(x), pcm(x, ">i2")
    assert Converter("slin_be", "pcm16").to_provider(be) == Converter("slin", "pcm16").to_provider(le)
    assert Converter("slin_be", "g711_ulaw").to_provider(be) == ulaw_encode(le)
    codes = ulaw_encode(le)
    assert (
        Converter("slin_be", "g711_ulaw").to_wire(codes)
        == np.frombuffer(ulaw_decode(codes), "<i2").astype(">i2").tobytes()
    )
    assert {w: Converter(w, "pcm16").wire_frame_bytes for w in WIRE_FORMATS} == {
        "slin": 320,
        "slin16": 640,
        "slin24": 960,
        "ulaw": 160,
        "slin_be": 320,
    }
    assert Converter("ulaw", "g711_ulaw").passthrough and Converter("slin24", "pcm16").passthrough
    assert not Converter("slin", "g711_ulaw").passthrough
    with pytest.raises(ValueError):
        Converter("slin48", "pcm16")
    assert silence("ulaw") == b"\xff" * 160 and silence("slin24", 10) == bytes(480)
    assert silence("slin16") == bytes(640) and silence("slin_be", 20) == bytes(320)


def test_converter_model_direction_is_anti_aliased():
    # The model's sibilants (5–11 kHz) must not fold into the phone band (the anchor's issue #553).
    for wire in ("ulaw", "slin", "slin16"):
        conv = Converter(wire, "pcm16")
        # Above the wire's Nyquist + 0.5 kHz: 5 and 9.5 kHz for 8 kHz wires, 9.5 and 11 kHz for slin16.
        hiss = tone(9500, 24000, 0.5, -6) + tone(11000 if wire == "slin16" else 5000, 24000, 0.5, -6)
        out = wire_samples(wire, b"".join(conv.to_wire(c) for c in chunked(pcm(hiss), 4800)))
        settled = out[len(out) // 4 :]
        # ulaw leaves its idle-code noise; the linear ones must be near silent.
        limit = -45.0 if wire == "ulaw" else -50.0
        assert 20 * np.log10(np.sqrt(np.mean(settled**2)) / 32767 + 1e-9) <= limit, wire


def test_converter_reset_forgets_held_model_audio():
    conv = Converter("slin16", "pcm16")
    conv.to_wire(pcm(tone(1000, 24000, 0.1)))
    conv.reset_wire()
    assert not np.any(np.abs(samples(conv.to_wire(bytes(4800)))) > 2)


# -- PlayoutQueue -----------------------------------------------------------------------------------------------


def make_queue() -> PlayoutQueue:
    return PlayoutQueue(160, b"\xff" * 160)


def test_playout_frames_partial_tail_and_end_padding():
    q = make_queue()
    q.push("a", b"\x01" * 250)  # 1 frame + 90-byte tail
    assert q.queued_ms == 31 and not q.idle
    frame, real = q.tick()
    assert real and frame == b"\x01" * 160 and q.playing_item == "a"
    frame, real = q.tick()  # the tail waits: an underrun mid-stream
    assert not real and frame == b"\xff" * 160 and q.underruns == 1
    q.push("a", b"\x02" * 100)  # tail 90 + 100 = 1 frame + 30
    assert q.tick() == (b"\x01" * 90 + b"\x02" * 70, True)
    q.end_item("a")
    assert q.tick() == (b"\x02" * 30 + b"\xff" * 130, True)
    assert q.played_ms("a") == q.received_ms("a") == 350 * 20 // 160
    assert q.tick() == (b"\xff" * 160, False)
    assert q.underruns == 1 and q.playing_item is None and q.idle  # silence after an item's end is no underrun


def test_playout_next_item_pads_previous_tail_and_keeps_order():
    q = make_queue()
    q.push("a", b"\x01" * 100)
    q.push("b", b"\x02" * 160)
    assert q.tick() == (b"\x01" * 100 + b"\xff" * 60, True)
    assert q.tick() == (b"\x02" * 160, True) and q.playing_item == "b"
    assert q.played_ms("a") == 12 and q.played_ms("b") == 20


def test_playout_flush_drops_now_and_ignores_late_audio():
    q = make_queue()
    q.push("a", b"\x01" * 1600)  # 200 ms
    for _ in range(3):
        q.tick()
    assert q.flush() == "a"
    assert q.idle and q.queued_ms == 0
    assert q.tick() == (b"\xff" * 160, False)  # within one frame: silence
    q.push("a", b"\x01" * 800)  # a late delta of the interrupted item
    assert q.idle and q.played_ms("a") == 60 and q.received_ms("a") == 200
    q.push("b", b"\x03" * 160)  # the next response plays normally
    assert q.tick() == (b"\x03" * 160, True)
    assert q.underruns == 0


def test_playout_flush_before_playing_names_the_queued_item():
    q = make_queue()
    assert q.flush() is None
    q.push("x", b"\x01" * 320)
    assert q.flush() == "x" and q.played_ms("x") == 0


def test_playout_no_underrun_before_first_audio_and_bounded_memory():
    q = make_queue()
    for _ in range(5):
        assert q.tick() == (b"\xff" * 160, False)
    assert q.underruns == 0
    for i in range(500):
        q.push(f"item{i}", b"\x01" * 160)
        q.end_item(f"item{i}")
        q.tick()
    assert len(q._items) <= 32 and q.played_ms("item499") == 20 and q.played_ms("item0") == 0


# -- PlayoutClock -------------------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.stalls: dict[int, float] = {}  # wakeup number -> extra lateness (s)
        self.wakeups = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.wakeups += 1
        self.now += delay + 0.0003 + self.stalls.get(self.wakeups, 0.0)  # a little late, always


async def test_clock_absolute_deadlines_no_drift_and_late_skip():
    fake = FakeTime()
    fake.stalls[10] = 0.050  # one wakeup 50 ms late: slots 10 and 11 have passed by then
    clock = PlayoutClock(20, clock=fake.clock, sleep=fake.sleep)
    stopping = asyncio.Event()
    sent: list[float] = []
    other: list[float] = []

    def tick() -> None:
        sent.append(fake.now)
        if len(sent) >= 100:
            stopping.set()

    clock.add("a", tick)
    clock.add("b", lambda: other.append(fake.now))
    await asyncio.wait_for(clock.run(stopping), 5)
    start = 1000.0
    slots = [round((t - start) / 0.020, 3) for t in sent]
    # Each send is within 1 ms of its slot (no accumulated drift) but the stalled one, which went out at
    # once for slot 10 (50 ms late); slots 11 and 12 were skipped, not sent in a burst.
    assert slots[10] == 12.515 and all(abs(s - round(s)) * 20 <= 1.0 for s in slots[:10] + slots[11:])
    assert round(slots[11]) == 13
    assert all(b > a for a, b in itertools.pairwise(slots))
    assert clock.late_ticks == 2 and round(slots[-1]) == 101  # 100 sends over 102 slots, 2 skipped
    assert len(other) == len(sent)  # one wakeup ticks every call
    assert clock.lag_ms.count == 100 and clock.lag_ms.max >= 50.0 and clock.lag_ms.quantile(0.5) <= 0.5


async def test_clock_removes_a_failing_call_and_keeps_ticking_others():
    fake = FakeTime()
    clock = PlayoutClock(20, clock=fake.clock, sleep=fake.sleep)
    stopping = asyncio.Event()
    good: list[int] = []

    def bad() -> None:
        raise RuntimeError("boom")

    def tick() -> None:
        good.append(1)
        if len(good) == 5:
            stopping.set()

    clock.add("bad", bad)
    clock.add("good", tick)
    await asyncio.wait_for(clock.run(stopping), 5)
    assert clock.errors == 1 and len(clock) == 1 and len(good) == 5
    clock.remove("good")
    clock.remove("missing")
    assert len(clock) == 0


async def test_clock_short_real_run():
    clock = PlayoutClock(10)
    stopping = asyncio.Event()
    times: list[float] = []

    def tick() -> None:
        times.append(time.monotonic())
        if len(times) == 10:
            stopping.set()

    clock.add(1, tick)
    await asyncio.wait_for(clock.run(stopping), 2)
    assert len(times) == 10
    span = times[-1] - times[0]
    assert 0.080 <= span <= 0.2  # 9 periods of 10 ms, on a noisy machine


# -- SpeechGate ---------------------------------------------------------------------------------------------------


def run_gate(gate: SpeechGate, out: np.ndarray, inc: np.ndarray, rate: int) -> list[bool]:
    n = rate // 50
    result = []
    for i in range(0, min(len(out), len(inc)) - n + 1, n):
        gate.outgoing(pcm(out[i : i + n]))
        result.append(gate.incoming(pcm(inc[i : i + n])))
    return result


def delayed(x: np.ndarray, ms: int, rate: int) -> np.ndarray:
    d = ms * rate // 1000
    return np.concatenate([np.zeros(d), x])[: len(x)]


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
@pytest.mark.parametrize("delay_ms", [0, 20, 45, 80, 120])
def test_gate_never_opens_on_our_own_echo(rate, delay_ms):
    agent = voice(rate, 3.0, f0=190, seed=1, dbfs=-14)
    gate = SpeechGate(rate)
    opened = run_gate(gate, agent, 0.1 * delayed(agent, delay_ms, rate), rate)  # echo at −20 dB
    assert not any(opened)
    assert gate.speech_starts == 0 and 1 <= gate.closures <= 2  # the VAD heard it; the echo test held it


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_gate_opens_on_real_speech_within_4_frames(rate):
    caller = voice(rate, 1.0, f0=105, seed=2)
    gate = SpeechGate(rate)
    opened = run_gate(gate, np.zeros(len(caller)), caller, rate)  # we are silent
    assert opened.index(True) <= 3 and gate.speech_starts == 1 and gate.closures == 0


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_gate_opens_on_real_speech_while_we_play(rate):
    agent = voice(rate, 3.0, f0=190, seed=1, dbfs=-18)
    caller = voice(rate, 1.5, f0=105, seed=2, dbfs=-18)
    line = 0.1 * delayed(agent, 60, rate)
    line[rate : rate + len(caller)] += caller[: len(line) - rate]  # the caller starts at t = 1 s
    gate = SpeechGate(rate)
    opened = run_gate(gate, agent, line, rate)
    assert not any(opened[:50])
    assert opened.index(True) - 50 <= 3 and gate.speech_starts == 1


def test_gate_hangs_then_closes_and_ignores_quiet_noise():
    rate = 8000
    caller = np.concatenate([voice(rate, 0.6, f0=105, seed=3), np.zeros(rate)])
    gate = SpeechGate(rate, hang_frames=10)
    opened = run_gate(gate, np.zeros(len(caller)), caller, rate)
    first = opened.index(True)
    last = len(opened) - 1 - opened[::-1].index(True)
    # The voice ends with frame 29; the 10th unvoiced frame after it (frame 39) closes the gate.
    assert first <= 3 and last == 38
    noise = np.random.default_rng(0).normal(0, 3, rate * 2)  # ~ −80 dBFS line noise
    quiet = SpeechGate(rate)
    assert not any(run_gate(quiet, np.zeros(len(noise)), noise, rate))


def test_frames_that_never_came_close_the_gate_so_the_next_words_start_again():
    """A caller whose phone (or a Local channel) sends nothing while silent: the session feeds the gate an
    absent frame per missed slot; without them the gate would stay open and the next words be no new start."""
    rate = 8000
    words = voice(rate, 0.6, f0=105, seed=3)
    gate = SpeechGate(rate, hang_frames=10)
    assert any(run_gate(gate, np.zeros(len(words)), words, rate))
    assert gate.speaking
    closed_after = next(i for i in range(1, 20) if not gate.absent())
    assert closed_after == 10 and not gate.speaking
    assert any(run_gate(gate, np.zeros(len(words)), words, rate)) and gate.speech_starts == 2


def test_gate_rejects_bad_settings():
    with pytest.raises(ValueError):
        SpeechGate(44100)
    with pytest.raises(ValueError):
        SpeechGate(8000, aggressiveness=4)
