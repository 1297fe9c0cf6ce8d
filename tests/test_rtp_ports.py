"""A worker's RTP range against the kernel's ephemeral ports (issue 19): the harness's range 42800-43199 lay inside
Linux's 32768-60999, a test caller's UDP socket took 42839 from it, and the worker could not bind it. The range is
read from a file standing in for /proc/sys/net/ipv4/ip_local_port_range; `voice-agent doctor` warns."""

from __future__ import annotations

import asyncio
import sys

import pytest
import yaml

from shared import rtp_ports
from shared.config import load_config
from tests.conftest import CONFIG
from voice_agent.doctor import media_checks
from voice_agent.doctor.result import Status
from voice_agent.doctor.runner import Probe

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ephemeral range is read on Linux")


@pytest.fixture
def kernel_range(tmp_path, monkeypatch):
    path = tmp_path / "ip_local_port_range"
    path.write_text("32768\t60999\n")  # Linux's default, tab-separated as the kernel writes it
    monkeypatch.setattr(rtp_ports, "EPHEMERAL_RANGE_FILE", path)
    return path


@linux_only
def test_the_range_is_read_and_a_file_that_cannot_be_is_none(kernel_range, tmp_path):
    assert rtp_ports.ephemeral_range() == (32768, 60999)
    kernel_range.write_text("not numbers\n")
    assert rtp_ports.ephemeral_range() is None
    assert rtp_ports.ephemeral_range(tmp_path / "missing") is None


def test_overlap_and_the_warning():
    linux = (32768, 60999)
    assert rtp_ports.ephemeral_overlap(18080, 18199, linux) is None  # the shipped default
    assert rtp_ports.ephemeral_overlap(32000, 32768, linux) == (32768, 32768)
    assert rtp_ports.ephemeral_overlap(42800, 43199, linux) == (42800, 43199)
    assert rtp_ports.ephemeral_overlap(42800, 43199, None) is None
    assert rtp_ports.ephemeral_warning(18080, 18199, linux) is None
    text = rtp_ports.ephemeral_warning(60000, 61999, linux)
    assert text is not None and "60000-61999 overlaps the kernel's ephemeral ports 32768-60999 (at 60000-60999)" in text


def doctor_rtp(tmp_path, low: int, high: int):
    data = yaml.safe_load(CONFIG.read_text())
    data["default_profile"] = "telephony_ulaw_8k"  # an RTP profile in use: the check runs
    data["media_worker"].update(rtp_port_min=low, rtp_port_max=high, capacity=high - low + 1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_config(path, env={"OPENAI_API_KEY": "sk-test-0123456789"}, require_api_key=False)
    return asyncio.run(media_checks.check_rtp(Probe(loaded, 1.0)))


@linux_only
def test_doctor_warns_when_the_rtp_range_is_in_the_ephemeral_range(kernel_range, tmp_path):
    inside = doctor_rtp(tmp_path, 45000, 45009)
    assert inside.status is Status.WARN
    assert "45000-45009 overlaps the kernel's ephemeral ports 32768-60999" in inside.detail
    outside = doctor_rtp(tmp_path, 26000, 26009)
    assert outside.status is Status.OK, outside.detail
