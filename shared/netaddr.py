"""`advertise_host: auto`: the address of this host's interface that routes towards a given peer.

A scaled media worker (a compose replica, a pod) cannot be told its own address in a shared config file; the
interface it reaches Redis through is the one the rest of the cluster (and Asterisk, on the same network)
reaches it on. A connected UDP socket asks the kernel's routing table; no packet is sent.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

AUTO = "auto"


async def local_address_towards(host: str, port: int = 9) -> str:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        return sock.getsockname()[0]


async def resolve_advertise_host(configured: str, redis_url: str) -> str:
    """The configured host, or with `auto` the local address that routes towards Redis."""
    if configured != AUTO:
        return configured
    parts = urlsplit(redis_url)
    return await local_address_towards(parts.hostname or "127.0.0.1", parts.port or 6379)
