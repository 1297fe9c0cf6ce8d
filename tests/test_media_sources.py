"""Where a media worker listens and whom it takes media from, by default (issue 16).

Before: AudioSocket and RTP listened on 0.0.0.0 and `allowed_media_hosts` was empty (any host). Now they
listen on the advertised address unless told otherwise, and take media from Asterisk only: the configured
list, or the host of `asterisk.ari_url`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from media_worker.service import MediaWorker
from shared.config.load import ConfigError, load_config

pytestmark = pytest.mark.timeout(20)
CONFIG = Path(__file__).resolve().parent.parent / "config" / "ai-agent.yaml"
ENV = {
    "OPENAI_API_KEY": "sk-test",
    "ASTERISK_ARI_URL": "http://127.0.0.1:8088",
    "MEDIA_ADVERTISE_HOST": "127.0.0.1",
    "REALTIME_PREWARM": "0",
}


def worker(env: dict[str, str], path: Path = CONFIG) -> MediaWorker:
    loaded = load_config(path, env=env)
    return MediaWorker(loaded, instance_id="mw-test", health_host="127.0.0.1", health_port=0, audiosocket_port=0)


async def test_by_default_media_is_heard_on_the_advertised_address_from_the_ari_host_only():
    w = worker(ENV)
    assert w.config.media_worker.listen_host == ""
    try:
        await w.before_register()
        assert w.server is not None and w.server.host == "127.0.0.1" and w.listen_host == "127.0.0.1"
        assert w.allowed_hosts == ["127.0.0.1"]
        allow = w.server.allow_list
        assert allow.allows("127.0.0.1") and not allow.allows("192.0.2.7") and not allow.allows("10.0.0.1")
    finally:
        await w.cleanup()


async def test_a_configured_interface_and_allow_list_are_kept(tmp_path):
    text = CONFIG.read_text().replace(
        "  listen_host: ${MEDIA_LISTEN_HOST:-}\n",
        "  listen_host: ${MEDIA_LISTEN_HOST:-}\n  allowed_media_hosts: [192.0.2.0/24, 127.0.0.1]\n",
    )
    path = tmp_path / "ai-agent.yaml"
    path.write_text(text)
    w = worker({**ENV, "MEDIA_LISTEN_HOST": "0.0.0.0"}, path)
    try:
        await w.before_register()
        assert w.server is not None and w.server.host == "0.0.0.0"
        assert w.allowed_hosts == ["192.0.2.0/24", "127.0.0.1"] and w.server.allow_list.allows("192.0.2.7")
    finally:
        await w.cleanup()


async def test_an_ari_host_that_does_not_resolve_stops_the_start_with_its_name():
    w = worker({**ENV, "ASTERISK_ARI_URL": "http://no-such-asterisk.invalid:8088"})
    with pytest.raises(OSError, match="no-such-asterisk.invalid"):
        await w.before_register()
    assert w.server is None


def test_an_rtp_profile_must_name_an_rtp_format(tmp_path):
    text = CONFIG.read_text() + "\nprofiles:\n  rtp_wide:\n    transport: rtp\n    format: slin16\n"
    path = tmp_path / "ai-agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="slin16.*rtp"):
        load_config(path, env=ENV)
