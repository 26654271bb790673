"""Which client a request comes from, for the per-client limits.

The client is the TCP peer, unless that peer is a trusted reverse proxy (`server.trusted_proxies`):
then it is the nearest address in `X-Forwarded-For` that is not itself a trusted proxy. Only
trusted proxies are believed, so a caller cannot pick its own address by sending the header.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from agent_runtime.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddresses:
    """Resolves a request's client address given the trusted proxies (addresses or CIDR networks)."""

    def __init__(self, trusted_proxies: list[str]) -> None:
        nets: list[Network] = []
        for entry in trusted_proxies:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"server.trusted_proxies: {entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8)"
                ) from None
        self.networks = nets

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def of(self, request: web.Request) -> str:
        """The client address of `request`."""
        peer = request.remote or "unknown"
        if not self.networks or not self.trusted(peer):
            return peer
        hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",") if h.strip()]
        for hop in reversed(hops):  # each proxy appends the address it saw: trust from the right
            if not self.trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # the proxy forwarded something that is not an address: count the proxy
        return hops[0] if hops else peer
