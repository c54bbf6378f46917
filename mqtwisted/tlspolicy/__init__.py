"""Outbound TLS policies: which one applies to an MX host (``--tls-ca``, MTA-STS, DANE, the
message's ``security``) and what it asks of the receiver's certificate.  Delivery asks
:class:`TLSPolicies` before it connects; the outbound client runs the answer's check on the chain
of the TLS handshake.  See :mod:`.policy` for the order, README "TLS policies" for operating.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mqtwisted.tlspolicy.certs import Trust, TrustError, load_bundle
from mqtwisted.tlspolicy.dnsquery import SecureLookup
from mqtwisted.tlspolicy.policy import HostRefused, HostTLS, TLSPolicies, resolver_servers
from mqtwisted.tlspolicy.stsfetch import PolicyCache, PolicyFetcher, STSPolicies

__all__ = ["HostRefused", "HostTLS", "TLSPolicies", "Trust", "TrustError", "load_bundle", "make_policies"]


def make_policies(
    resolver: Any, *, reactor: Any, clock: Callable[[], float], tls_ca: str | None, data_dir: str | None,
    mta_sts: bool = True, dane: bool = True, mta_sts_port: int = 443, connect_timeout: float = 30,
) -> TLSPolicies:
    """The policies of delivery through ``resolver`` (an :class:`mqtwisted.dns.MXResolver`: its
    DNS servers answer the TXT and TLSA lookups too).  MTA-STS policies are cached in
    ``data_dir/mta-sts``."""
    trust = Trust(tls_ca)
    servers = resolver_servers(resolver)
    lookup = SecureLookup(servers, reactor=reactor) if servers is not None else None
    sts = None
    if mta_sts and lookup is not None:
        fetcher = PolicyFetcher(reactor, resolver.resolve_host, trust, port=mta_sts_port,
                                connect_timeout=connect_timeout)
        cache = PolicyCache(os.path.join(data_dir, "mta-sts") if data_dir else None)
        sts = STSPolicies(lookup, fetcher, cache, clock)
    return TLSPolicies(lookup, trust, sts, clock, dane=dane)
