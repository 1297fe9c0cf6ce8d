"""The real-PBX harness itself: the session's Asterisk is 22.x with the modules and the shipped dialplan the
product needs, and a Local channel originated into a test's Stasis app arrives there and can be hung up."""

from __future__ import annotations

import re
import urllib.parse
import uuid

import pytest

from sim.real_asterisk import RealAsterisk, start
from tests.realpbx.ari_events import AriEvents

pytestmark = pytest.mark.realpbx

# What the controller, the media transports and the tools' dialplan use (ARI wants the name with ".so": 409 without).
PRODUCT_MODULES = [
    "res_ari",
    "res_ari_channels",
    "res_ari_bridges",
    "res_ari_events",
    "res_stasis",
    "app_stasis",
    "res_http_websocket",
    "chan_audiosocket",
    "res_audiosocket",
    "chan_rtp",
    "res_rtp_asterisk",
    "chan_websocket",
    "res_websocket_client",
    "bridge_simple",
    "bridge_softmix",
    "app_dial",
    "app_playback",
    "app_record",
    "app_mixmonitor",
    "app_voicemail",
    "res_musiconhold",
    "format_wav",
    "format_pcm",
    "codec_ulaw",
    "codec_alaw",
    "codec_resample",
]
# Every context of deploy/asterisk/extensions_custom.conf and extensions_plain_asterisk.conf.
SHIPPED_CONTEXTS = [
    "from-ai-agent-openai",
    "from-ai-agent-sales",
    "ai-agent-fallback",
    "from-internal",
    "ext-queues",
    "ext-group",
    "default",
]


def needs_cli(ast: RealAsterisk) -> None:
    if not ast.started_here:
        pytest.skip(f"needs the CLI of an Asterisk the harness started; {ast.ari_url} was given with --ari-url")


def test_ari_reports_asterisk_22(real_asterisk):
    status, info = real_asterisk.ari("GET", "/asterisk/info")
    assert status == 200
    assert info["system"]["version"].startswith("22."), info["system"]
    assert real_asterisk.version == info["system"]["version"]


def test_the_modules_the_product_needs_are_running(real_asterisk):
    problems = {}
    for name in PRODUCT_MODULES:
        status, module = real_asterisk.ari("GET", f"/asterisk/modules/{name}.so")
        if status != 200 or module.get("status") != "Running":
            problems[name] = module.get("status") if status == 200 else f"HTTP {status}"
    assert not problems, f"modules not running: {problems}"


def test_the_shipped_dialplan_is_loaded(real_asterisk):
    needs_cli(real_asterisk)
    for context in SHIPPED_CONTEXTS:
        shown = real_asterisk.cli(f"dialplan show {context}")
        assert f"Context '{context}' created" in shown, shown
    entry = real_asterisk.cli("dialplan show s@from-ai-agent-openai")
    assert f"Stasis({real_asterisk.app})" in entry and "AI_CONTEXT=demo_openai" in entry, entry


async def test_an_originated_local_channel_enters_the_test_app_and_hangs_up(real_asterisk):
    needs_cli(real_asterisk)  # va-harness-wait is the harness's own context
    app, channel = f"va-test-{uuid.uuid4().hex[:8]}", f"va-test-{uuid.uuid4().hex[:12]}"
    async with AriEvents(real_asterisk, app) as events:
        query = urllib.parse.urlencode(
            {"endpoint": "Local/s@va-harness-wait", "app": app, "channelId": channel, "callerId": "Harness <5550100>"}
        )
        status, created = real_asterisk.ari("POST", f"/channels?{query}")
        assert status == 200, created
        start_event = await events.wait("StasisStart", channel__id=channel)
        assert start_event["application"] == app
        assert start_event["channel"]["caller"] == {"name": "Harness", "number": "5550100"}
        assert real_asterisk.ari("DELETE", f"/channels/{channel}")[0] == 204
        await events.wait("StasisEnd", channel__id=channel)
        await events.wait("ChannelDestroyed", channel__id=channel)


async def test_a_sound_plays_on_a_channel_and_music_on_hold_has_files(real_asterisk):
    needs_cli(real_asterisk)
    status, sound = real_asterisk.ari("GET", "/sounds/hello-world")
    # The en voice is wav files; ARI names the format by its codec, slin.
    assert status == 200 and {"language": "en", "format": "slin"} in sound["formats"], sound
    moh = real_asterisk.cli("moh show files")
    assert "Class: default" in moh and "File: " in moh, moh
    app, channel = f"va-test-{uuid.uuid4().hex[:8]}", f"va-test-{uuid.uuid4().hex[:12]}"
    async with AriEvents(real_asterisk, app) as events:
        query = urllib.parse.urlencode({"endpoint": "Local/s@va-harness-wait", "app": app, "channelId": channel})
        assert real_asterisk.ari("POST", f"/channels?{query}")[0] == 200
        await events.wait("StasisStart", channel__id=channel)
        status, playback = real_asterisk.ari("POST", f"/channels/{channel}/play?media=sound:hello-world")
        assert status == 201, playback
        finished = await events.wait("PlaybackFinished", playback__id=playback["id"])
        assert finished["playback"]["state"] == "done", finished
        assert real_asterisk.ari("DELETE", f"/channels/{channel}")[0] == 204
        await events.wait("StasisEnd", channel__id=channel)


def test_a_second_instance_runs_beside_the_first(real_asterisk, tmp_path_factory):
    needs_cli(real_asterisk)
    with start(tmp_path_factory.mktemp("second") / "ast", log=lambda *_: None) as second:
        assert second.ari_url != real_asterisk.ari_url and second.run_dir != real_asterisk.run_dir
        assert second.password != real_asterisk.password
        assert second.ari("GET", "/asterisk/info")[0] == 200
        assert "Asterisk 22." in second.cli("core show version")
    assert not second.running()
    assert second.ari("GET", "/asterisk/info")[0] == 0
    assert real_asterisk.ari("GET", "/asterisk/info")[0] == 200


def test_an_instance_takes_a_wider_rtp_port_range(real_asterisk, tmp_path_factory):
    """bench/realpbx.py's larger RTP ramps need 4 ports per call (an RTP stream and its RTCP at each end): the
    default 200 hold 50 calls, and the 51st finds no port ("couldn't allocate a port for RTP instance")."""
    needs_cli(real_asterisk)
    with start(tmp_path_factory.mktemp("wide-rtp") / "ast", log=lambda *_: None, rtp_ports=440) as wide:
        settings = wide.cli("rtp show settings")
        first = re.search(r"Port start:\s+(\d+)", settings)
        last = re.search(r"Port end:\s+(\d+)", settings)
        assert first and last, settings
        assert int(last.group(1)) - int(first.group(1)) + 1 == 440
    with pytest.raises(ValueError, match="even number"):
        start(tmp_path_factory.mktemp("odd-rtp") / "ast", log=lambda *_: None, rtp_ports=441)
