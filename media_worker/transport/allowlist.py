"""Which source hosts may reach a media socket: IP addresses, CIDR networks, or host names resolved once.

By default only Asterisk: `media_worker.allowed_media_hosts`, or when that is empty the host of
`asterisk.ari_url` (`media_sources`). "Any host" must be said explicitly (0.0.0.0/0 and ::/0)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def media_sources(configured: Sequence[str], ari_url: str) -> list[str]:
    """The hosts media is accepted from: the configured list, or else the host in Asterisk's ARI URL (the
    media of a call comes from the Asterisk the controller talks to)."""
    if configured:
        return list(configured)
    host = urlsplit(ari_url).hostname
    if not host:
        raise ValueError(
            f"asterisk.ari_url {ari_url!r} names no host to take media from: set media_worker.allowed_media_hosts"
        )
    return [host]


class HostAllowList:
    """Empty = any host (only when built without entries; the worker always passes `media_sources`).
    Checked once per connection (AudioSocket) or per packet not from the latched RTP source, not per frame."""

    def __init__(self, networks: Sequence[Network] = ()):
        self.networks = tuple(networks)

    def allows(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(address in network for network in self.networks)


async def resolve_allow_list(entries: Sequence[str]) -> HostAllowList:
    """Parse addresses and networks; resolve names (an unresolvable name is a configuration error)."""
    networks: list[Network] = []
    loop = asyncio.get_running_loop()
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = await loop.getaddrinfo(entry, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ValueError(f"allowed host {entry!r} does not resolve: {exc}") from exc
        for *_, sockaddr in infos:
            host = sockaddr[0]  # an IPv4 or IPv6 address (a scope id after %): SOCK_STREAM lookups give no other
            if isinstance(host, str):
                networks.append(ipaddress.ip_network(host.split("%", 1)[0]))
    return HostAllowList(networks)
