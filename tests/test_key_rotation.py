"""A wrong OpenAI key caught at once, and the key rotated with SIGHUP without dropping a call: a controller and a
media worker as processes on the real Redis, the Asterisk simulator and the Realtime emulator in this process.
The worker reads its key from OPENAI_API_KEY_FILE, which the test rewrites."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from sim.asterisk.audio import CallerAudio
from sim.cluster import LocalCluster
from sim.realtime import Emulator, Reply, Script
from tests.ari_harness import write_config
from tests.media_harness import aredis, call_of, caller_speech, keys, log_entries, sim, until  # noqa: F401

KEY_A = "sk-test-rotation-key-aaaa"
KEY_B = "sk-test-rotation-key-bbbb"
WRONG = "sk-test-wrong-key-0000"


def key_failing(worker) -> str:
    return worker.readiness().get("failing", {}).get("openai_key", "")


@pytest.mark.slow  # measured 18 s
async def test_a_wrong_key_is_caught_at_once_and_sighup_rotations_keep_the_call(
    sim, tmp_path, cluster_env, aredis, keys
):
    emu = Emulator(
        script=Script(
            greeting=Reply(text="Hello, how can I help?", audio_ms=800),
            turns={1: Reply(text="We are open nine to five.", audio_ms=800)},
            transcripts={1: "When are you open?"},
        ),
        api_keys={KEY_A},
        speed=4.0,
    )
    await emu.start("127.0.0.1", 0)
    key_file = tmp_path / "openai.key"
    key_file.write_text(WRONG + "\n")
    env = {
        **cluster_env,
        "OPENAI_REALTIME_URL": emu.url,
        "REALTIME_PREWARM": "2",
        "OPENAI_API_KEY_FILE": str(key_file),  # wins over OPENAI_API_KEY (set by cluster_env)
    }
    cluster = LocalCluster(write_config(tmp_path / "config.yaml", sim.url), tmp_path, env)
    try:
        controller = cluster.start("controller", instance_id="controller-keys")
        worker = cluster.start("media-worker", "--audiosocket-port", "0", "--rtp-ports", "17200-17299")
        assert await asyncio.to_thread(cluster.wait_ready, [controller], 30), controller.log_text()[-3000:]

        # 1. Not ready, with the reason, soon after its first open.
        def first_open() -> bool:
            return bool(emu.sessions)

        await until(first_open, timeout=30)
        opened_at = time.monotonic()
        reason = await until(lambda: asyncio.to_thread(key_failing, worker), timeout=10)
        caught_s = time.monotonic() - opened_at
        assert "the OpenAI key is rejected (invalid_api_key)" in reason and "OPENAI_API_KEY" in reason, reason

        # 2. The opens are few: backoff from 1 s, not ~1000 a second.
        before = len(emu.sessions)
        await asyncio.sleep(3.0)
        attempts = len(emu.sessions) - before
        assert attempts <= 5, attempts
        assert not worker.ready()
        print(f"not ready {caught_s:.2f} s after the first open; {attempts} opens in the next 3 s")
        assert worker.log_text().count("the OpenAI key is rejected (invalid_api_key)") == 1  # one line per streak
        assert WRONG not in worker.log_text()

        # A call meanwhile is not left in silence: its caller is in the dialplan fallback within seconds.
        placed = time.monotonic()
        refused = await sim.place_call(audio=CallerAudio.silence(8000))
        await until(lambda: any("ss-noservice" in step for step in refused.trail), timeout=10)
        to_fallback = time.monotonic() - placed
        print(f"a call while the key is refused: in the fallback {to_fallback:.2f} s after it was placed")
        # Hung up on purpose once the call is up, not left to look like a lost worker (moved, then the fallback
        # 2 s later on one worker, more with several).
        assert "ended its media leg on purpose: fallback" in controller.log_text()
        assert "Realtime session failed: " in worker.log_text() and "invalid_api_key" in worker.log_text()
        await until(lambda: not sim.channels and not sim.bridges)

        # 3. The right key written, SIGHUP: ready again at the next open.
        key_file.write_text(KEY_A)
        worker.popen.send_signal(signal.SIGHUP)
        await until(lambda: asyncio.to_thread(worker.ready), timeout=10)
        # A SIGHUP whose config no longer loads (an empty key file) changes nothing, and says why.
        key_file.write_text("")
        worker.popen.send_signal(signal.SIGHUP)
        await until(lambda: "SIGHUP: the config does not load, the key is unchanged" in worker.log_text(), timeout=10)
        assert "OPENAI_API_KEY_FILE: " in worker.log_text() and await asyncio.to_thread(worker.ready)
        key_file.write_text(KEY_A)

        # 4. A call on the key A session; then key A is revoked and B written, SIGHUP.
        audio = CallerAudio.silence(5000).then(caller_speech("When are you open?", 900)).then(CallerAudio.silence(5000))
        call = await sim.place_call(audio=audio)
        call_id = await call_of(aredis, keys, call.channel_id)

        async def greeted():
            return [e["role"] for e in await log_entries(aredis, keys, call_id)] == ["assistant"]

        await until(greeted, timeout=10)
        on_call = [s for s in emu.sessions if any(e["type"] == "session.update" for e in s.received)]
        assert len(on_call) == 1 and not on_call[0].closed
        idle_a = [s for s in emu.sessions if not s.closed and s is not on_call[0]]
        emu.api_keys = {KEY_B}
        key_file.write_text(KEY_B)
        worker.popen.send_signal(signal.SIGHUP)

        def rotated() -> bool:
            fresh = [s for s in emu.sessions if not s.closed and s.headers["authorization"] == f"Bearer {KEY_B}"]
            return len(fresh) == 2 and all(s.closed for s in idle_a)

        await until(rotated, timeout=10)
        # 5. The call goes on, on its key A session: the caller's question is answered after the rotation.
        assert not on_call[0].closed

        async def answered():
            roles = [e["role"] for e in await log_entries(aredis, keys, call_id)]
            return roles[:3] == ["assistant", "user", "assistant"]

        await until(answered, timeout=20)
        assert not on_call[0].closed and await asyncio.to_thread(worker.ready)
        assert "new OpenAI key in use for new sessions; 1 calls keep their sessions" in worker.log_text()
        await call.hangup()
        await until(lambda: not sim.channels and not sim.bridges)
    finally:
        codes = cluster.stop_all()
        await emu.stop()
    assert set(codes.values()) == {0}, codes
