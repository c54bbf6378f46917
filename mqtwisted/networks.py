"""Is an address in a list of networks (CIDR)?  Asked per connection and per RCPT by the relay
policy, the PROXY-port check and the per-client limits, so both the parse of the list and the
answer per address are cached.
"""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=64)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


@functools.lru_cache(maxsize=4096)
def in_networks(cidrs: tuple[str, ...], ip: str) -> bool:
    """Is ``ip`` (an IPv4-mapped IPv6 address counts as its IPv4 one) in one of ``cidrs``?"""
    # Cached on the strings: parsing an address costs more than the rest of a RCPT command, and
    # a key of parsed networks cost a Python __hash__ and __eq__ per network at every look-up.
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in parse_networks(cidrs) if net.version == addr.version)
