"""Media ports on this host: the worker's AudioSocket port and RTP range free to bind, and, when Asterisk runs
on this host, the AudioSocket port reachable at the address the worker advertises to Asterisk."""

from __future__ import annotations

import asyncio
import errno
import socket
from urllib.parse import urlsplit

from shared import rtp_ports
from voice_agent.doctor.ari_checks import transports_in_use
from voice_agent.doctor.result import Outcome, fail, ok, skipped, warn
from voice_agent.doctor.runner import Probe

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
IN_USE_FIX = "if no media worker runs on this host, find the owner (ss -ltnup) or change media_worker's ports"


def _bind_host(probe: Probe) -> str:
    return probe.loaded.config.media_worker.listen_host or "0.0.0.0"


def _audiosocket(probe: Probe) -> Outcome:
    settings = probe.loaded.config.media_worker
    port = settings.audiosocket_port
    if port == 0:
        return ok("media_worker.audiosocket_port is 0: each worker takes a free port")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((_bind_host(probe), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return warn(f"TCP {port} is in use on this host (a media worker running?)", IN_USE_FIX)
            return fail(f"cannot bind TCP {_bind_host(probe)}:{port}: {exc.strerror}", "check media_worker.listen_host")
        listener.listen(1)
        asterisk_host = urlsplit(probe.loaded.config.asterisk.ari_url).hostname or ""
        if asterisk_host not in LOCAL_HOSTS:
            return ok(f"TCP {port} free to bind; reachability from Asterisk's host {asterisk_host} not checked here")
        target = (settings.advertise_host, port)
        try:
            socket.create_connection(target, timeout=probe.timeout_s).close()
        except OSError as exc:
            return fail(
                f"TCP {port} free, but {settings.advertise_host}:{port} (what Asterisk is told) does not reach it: "
                f"{exc.strerror or exc}",
                "set media_worker.advertise_host to an address of this host that Asterisk can reach",
            )
        return ok(f"TCP {port} free; {settings.advertise_host}:{port} reaches it from this host (Asterisk's)")
    finally:
        listener.close()


def _rtp(probe: Probe) -> Outcome:
    settings = probe.loaded.config.media_worker
    low, high = settings.rtp_port_min, settings.rtp_port_max
    busy = []
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((_bind_host(probe), port))
            except OSError:
                busy.append(port)
    if busy:
        return warn(f"UDP {len(busy)} of {low}-{high} in use (first {busy[0]}; a media worker running?)", IN_USE_FIX)
    overlap = rtp_ports.ephemeral_warning(low, high, rtp_ports.ephemeral_range())
    if overlap is not None:
        return warn(overlap, "set media_worker.rtp_port_min/max outside the ephemeral range")
    return ok(f"UDP {low}-{high} free to bind (reachability from Asterisk is not checked: UDP has no handshake)")


async def check_audiosocket(probe: Probe) -> Outcome:
    if "audiosocket" not in transports_in_use(probe.loaded.config):
        return skipped("no profile in use carries AudioSocket")
    return await asyncio.to_thread(_audiosocket, probe)


async def check_rtp(probe: Probe) -> Outcome:
    if "rtp" not in transports_in_use(probe.loaded.config):
        return skipped("no profile in use carries RTP (ExternalMedia)")
    return await asyncio.to_thread(_rtp, probe)
