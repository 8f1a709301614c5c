"""Every address a name stands for, so a call can reach each replica behind it.

A Kubernetes headless Service's name resolves to one address per ready pod; a caller that
must reach all of them (a node registering with every proxy replica) resolves the name
again for each round and fans out. Rules:

- a literal IP is its own single address (no lookup);
- addresses are deduplicated (getaddrinfo repeats one per socket type) and sorted, so the
  order is stable across lookups whatever order DNS answered in;
- a name with IPv4 addresses uses those only: in a dual-stack cluster each pod has one of
  each family, and a proxy bound to ``0.0.0.0`` would refuse the IPv6 one;
- a name that resolves to loopback addresses only (``localhost``) is one machine: it is
  returned as is, so connecting tries its addresses in turn as a plain connect would;
- a failed lookup raises :class:`~inferno.core.errors.UpstreamConnectError`, as a refused
  connection does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from ..core.errors import UpstreamConnectError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


async def resolve_all(host: str, port: int, *, within: float | None = None
                      ) -> list[tuple[str, int]]:
    """``(address, port)`` for every replica ``host`` names (see the module's rules)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(host, port)]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError as exc:
        raise UpstreamConnectError(f"Resolving {host} timed out.") from exc
    except OSError as exc:
        raise UpstreamConnectError(f"Cannot resolve {host}: {exc}.") from exc
    found: dict[str, IPAddress] = {}
    for family, *_, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            text = str(sockaddr[0])  # an IPv6 one may carry a scope ("fe80::1%eth0")
            found[text] = ipaddress.ip_address(text.partition("%")[0])
    if not found:
        raise UpstreamConnectError(f"Cannot resolve {host}: no IP address.")
    if all(a.is_loopback for a in found.values()):
        return [(host, port)]
    v4 = [t for t, a in found.items() if a.version == 4]
    chosen = v4 or list(found)
    return [(t, port) for t in sorted(chosen, key=lambda t: found[t])]
