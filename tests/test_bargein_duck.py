"""Barge-in that sounds right (media_worker/audio/duck.py), sans-I/O on plain frames: the caller's first
sign ducks the next frame, a confirmed barge-in fades out over `fade_ms` with no step, an onset nothing
confirms ramps back up; the playout keeps the fade frame when it flushes; the gate says which frame is
the first sign."""

from __future__ import annotations

import numpy as np
import pytest

from media_worker.audio.duck import Ducker, DuckSettings, Playback
from media_worker.audio.g711 import ulaw_decode, ulaw_encode
from media_worker.audio.gate import SpeechGate
from media_worker.audio.playout import PlayoutQueue

RATE = 8000
N = RATE // 50  # samples per 20 ms frame
LOUD = 20000  # a constant full-level "agent" frame makes every gain visible sample by sample


def frame(value: int = LOUD, dtype: str = "<i2") -> bytes:
    return np.full(N, value, dtype=dtype).tobytes()


def samples(out: bytes | bytearray, dtype: str = "<i2") -> np.ndarray:
    return np.frombuffer(bytes(out), dtype=dtype).astype(np.float64)


def ducker(**kw) -> Ducker:
    return Ducker("slin", RATE, DuckSettings(**kw))


def test_full_level_frames_pass_untouched_without_work():
    d = ducker()
    f = frame()
    assert d.apply(f, True) is f  # the steady state: the very same object
    assert d.state is Playback.PLAYING


def test_a_frame_after_the_onset_is_ducked_within_the_fade():
    d = ducker(duck_db=-24.0, fade_ms=8)
    d.apply(frame(), True)
    d.onset()
    out = samples(d.apply(frame(), True))
    fade = RATE * 8 // 1000
    duck = LOUD * 10 ** (-24 / 20)
    assert d.state is Playback.DUCKED
    assert np.all(np.abs(out[fade:] - duck) <= 1)  # at the duck level from the fade's end on
    assert np.all(np.diff(out[: fade + 1]) <= 0)  # a ramp down, no overshoot
    assert np.abs(samples(d.apply(frame(), True)) - duck).max() <= 1  # and the frames after it stay there


@pytest.mark.parametrize("ducked_first", [False, True])
def test_the_stop_fades_over_n_samples_with_no_step(ducked_first: bool):
    fade = RATE * 8 // 1000  # 64 samples
    d = ducker(duck_db=-24.0, fade_ms=8)
    d.apply(frame(), True)
    if ducked_first:
        d.onset()
        d.apply(frame(), True)
    start = LOUD * (10 ** (-24 / 20) if ducked_first else 1.0)
    d.stop()
    out = samples(d.apply(frame(), True))
    assert np.all(out[fade:] == 0)  # silent after fade_ms
    assert out[fade - 1] == 0 and out[fade // 2] > 0  # ...and not before: it fades, it does not cut
    # No step bigger than a raised-cosine ramp's steepest: start * pi / (2 * fade) (+ rounding).
    steps = np.abs(np.diff(np.concatenate(([start], out))))
    assert steps.max() <= start * np.pi / (2 * fade) + 1
    assert d.state is Playback.STOPPED
    assert d.apply(frame(0), False) == frame(0)  # the queue's silence afterwards stays silence
    f = frame()
    assert d.apply(f, True) is f and d.state is Playback.PLAYING  # the next reply plays at full level


def test_an_unconfirmed_onset_is_restored_by_a_ramp_up():
    d = ducker(duck_db=-24.0, confirm_ms=100)  # 5 frames
    d.apply(frame(), True)
    d.onset()
    ducked = [samples(d.apply(frame(), True)) for _ in range(4)]
    assert all(np.abs(f[RATE * 8 // 1000 :]).max() < LOUD / 10 for f in ducked)  # after the first ramp down
    d.onset()  # a second sign within the window does not extend it (the window runs from the first)
    up = samples(d.apply(frame(), True))  # the 5th frame: nothing confirmed, ramp back up over the frame
    assert d.state is Playback.PLAYING and d.restores == 1 and d.ducks == 1
    assert up[0] < LOUD / 10 and abs(up[-1] - LOUD) <= 1 and np.all(np.diff(up) >= 0)
    f = frame()
    assert d.apply(f, True) is f  # full level again


def test_ulaw_and_big_endian_frames_are_ducked_in_their_own_coding():
    for wire, make, read in (
        ("ulaw", lambda: ulaw_encode(frame()), lambda b: samples(ulaw_decode(bytes(b)))),
        ("slin_be", lambda: frame(dtype=">i2"), lambda b: samples(b, ">i2")),
    ):
        d = Ducker(wire, RATE, DuckSettings(duck_db=-20.0))
        d.onset()
        d.apply(make(), True)
        out = read(d.apply(make(), True))
        assert np.abs(out - LOUD / 10).max() < LOUD / 10 * 0.07, wire  # -20 dB (μ-law: within its step)


def test_bad_settings_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="bargein_fade_ms"):
        ducker(fade_ms=30)
    with pytest.raises(ValueError, match="bargein_duck_db"):
        ducker(duck_db=3.0)


def test_flush_keeps_the_fade_frame_and_counts_it_played():
    q = PlayoutQueue(2 * N, frame(0))
    q.push("a", frame() * 5)
    q.tick()
    assert q.flush(keep_frames=1) == "a"
    assert q.queued_ms == 20
    out, real = q.tick()
    assert real and out == frame()  # the frame the ducker fades
    assert q.played_ms("a") == 40
    q.push("a", frame())  # late audio of the cut item is still dropped
    assert q.tick() == (frame(0), False)
    assert q.playing_item is None and q.underruns == 0  # the cut item is over, not starved


def test_the_gate_names_the_first_voiced_frame_before_it_opens():
    gate = SpeechGate(RATE, echo_margin_db=10.0, start_frames=3)
    t = np.arange(N) / RATE
    voice = (8000 * np.sin(2 * np.pi * 200 * t) * (1 + 0.5 * np.sin(2 * np.pi * 7 * t))).astype("<i2").tobytes()
    silent = frame(0)
    gate.incoming(silent)
    assert not gate.heard_caller
    opened = [gate.incoming(voice) for _ in range(3)]
    assert gate.heard_caller
    assert opened == [False, False, True]  # the sign comes two frames before the gate opens


def _voice(amplitude: float) -> bytes:
    t = np.arange(N) / RATE
    return (amplitude * np.sin(2 * np.pi * 200 * t) * (1 + 0.5 * np.sin(2 * np.pi * 7 * t))).astype("<i2").tobytes()


@pytest.mark.parametrize(("echo_db", "signs"), [(None, True), (-15.0, False)])
def test_the_first_sign_learns_the_lines_echo_return(echo_db: float | None, signs: bool):
    """The agent talks (-12 dBFS) for 3 s; the line brings back nothing, or a -15 dB echo. Then a caller 25 dB
    below the agent: the gate's own test (10 dB margin) does not take it, the first sign does on the quiet
    line only (its measured return is far below), never on the echoing one."""
    gate = SpeechGate(RATE, echo_margin_db=10.0, start_frames=3)
    agent = _voice(8000)  # about -12 dBFS
    back = _voice(8000 * 10 ** (echo_db / 20)) if echo_db is not None else frame(0)
    for _ in range(150):
        gate.outgoing(agent)
        gate.incoming(back)
        assert not gate.heard_caller and not gate.speaking
    gate.outgoing(agent)
    soft = _voice(8000 * 10 ** (-25 / 20))
    assert gate.incoming(soft) is False  # the gate's test is unchanged: no barge-in on this frame
    assert gate.heard_caller is signs


def test_a_duck_does_not_teach_the_first_sign_a_quieter_line():
    """While the agent is ducked (30 dB down) the line still brings back the echo of what was said before the
    duck, then the echo of the ducked audio, under the floor. Neither says anything about the line's return:
    the measured return stays where the talk before the duck put it, so the echo of the agent restored to full
    level is not taken for the caller (a CI run ducked the agent again 60 ms after a restore this way)."""
    gate = SpeechGate(RATE, echo_margin_db=10.0, start_frames=3)
    loud, ducked = _voice(6000), _voice(6000 * 10 ** (-30 / 20))  # about -15 and -45 dBFS
    echo_of = {loud: _voice(6000 * 10 ** (-15 / 20)), ducked: _voice(6000 * 10 ** (-45 / 20))}
    played = [loud] * 100 + [ducked] * 20 + [loud] * 30
    last = frame(0)
    returns = []
    for out in played:
        gate.outgoing(out)
        gate.incoming(echo_of.get(last, frame(0)))  # the echo of the frame before: one frame of line delay
        returns.append(gate.echo_return_db)
        assert not gate.heard_caller and not gate.speaking
        last = out
    before_duck = returns[99]
    assert -16.0 < before_duck < -14.0  # the talk measured the line's -15 dB
    assert min(returns[100:]) >= before_duck - 0.5
