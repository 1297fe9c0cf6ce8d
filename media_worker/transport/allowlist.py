"""Which source hosts may reach a media socket: IP addresses, CIDR networks, or host names resolved once."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostAllowList:
    """Empty = any host. Checked once per connection (AudioSocket) or per new RTP source, not per frame."""

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
