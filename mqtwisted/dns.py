"""Where mail for a domain goes: MX resolution on twisted.names (RFC 5321 §5.1, RFC 7505).

``MXResolver.resolve(domain)`` fires with the hosts to try, best first, each with its addresses;
or fails with :class:`DNSFailure`, which says whether the failure is permanent (bounce now) or
temporary (retry later).  Nothing here knows SMTP beyond the port number.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.names import dns, error
from twisted.names.client import Resolver, createResolver


@attrs.frozen
class Target:
    """One host to try: its name (for TLS verification and results) and its addresses."""

    host: str
    addresses: tuple[str, ...]
    port: int = 25
    preference: int = 0


class DNSFailure(Exception):
    """Resolution failed; ``permanent`` decides between a bounce and a retry."""

    def __init__(self, description: str, permanent: bool, status: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.permanent = permanent
        self.status = status or ("5.1.2" if permanent else "4.4.3")

    @property
    def code(self) -> int:
        return 550 if self.permanent else 451


def _ip_literal(name: str) -> str | None:
    name = name.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        if name.lower().startswith("ipv6:"):
            name = name[5:]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


# Every twisted.names error subclasses DomainError; only these two mean "no such name".
_NXDOMAIN = (error.DNSNameError, error.AuthoritativeDomainError)


class MXResolver:
    """MX, then A/AAAA, lookups through one twisted.names resolver.

    ``servers`` is a list of (host, port) for the ``dns-server`` option; without it the system
    resolver configuration (/etc/resolv.conf, /etc/hosts) is used.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]] | None = None,
        *,
        timeout: Sequence[float] = (1, 3, 5),
        reactor: Any = None,
        ipv6: bool = True,
        rng: random.Random | None = None,
        resolver: Any = None,
    ) -> None:
        self.servers = list(servers) if servers else None
        self.timeout = tuple(timeout)
        self.ipv6 = ipv6
        self._reactor = reactor
        self._rng = rng or random.Random()
        self._resolver = resolver

    @property
    def resolver(self) -> Any:
        # Created lazily: building it may read /etc/resolv.conf and needs the running reactor.
        if self._resolver is None:
            if self.servers:
                self._resolver = Resolver(servers=self.servers, timeout=self.timeout, reactor=self._reactor)
            else:
                # The system's resolv.conf and hosts file, on the global reactor (createResolver
                # takes no reactor argument).
                self._resolver = createResolver()
        return self._resolver

    def close(self) -> None:
        """Drop the resolver's TCP connections (UDP ports close after each query)."""
        resolver, self._resolver = self._resolver, None
        for r in getattr(resolver, "resolvers", [resolver]):
            for conn in list(getattr(r, "connections", [])):
                if conn.transport is not None:
                    conn.transport.loseConnection()

    def resolve(self, domain: str, port: int = 25) -> Deferred[list[Target]]:
        """The MX targets for ``domain`` in order of preference (equal ones shuffled)."""
        return defer.ensureDeferred(self._resolve(domain.rstrip(".").lower(), port))

    def resolve_host(self, host: str, port: int = 25) -> Deferred[list[Target]]:
        """One host (a smarthost): its addresses, no MX lookup."""
        return defer.ensureDeferred(self._resolve_host(host, port))

    async def _resolve_host(self, host: str, port: int) -> list[Target]:
        literal = _ip_literal(host)
        if literal is not None:
            return [Target(host, (literal,), port)]
        addresses, failure = await self._addresses(host, {})
        if not addresses:
            raise failure or DNSFailure(f"{host}: no address records", permanent=True)
        return [Target(host, tuple(addresses), port)]

    async def _resolve(self, domain: str, port: int) -> list[Target]:
        literal = _ip_literal(domain)
        if literal is not None:
            return [Target(domain, (literal,), port)]
        try:
            answers, _authority, additional = await self.resolver.lookupMailExchange(domain)
        except _NXDOMAIN:
            raise DNSFailure(f"{domain}: domain does not exist (NXDOMAIN)", permanent=True) from None
        except Exception as e:
            raise DNSFailure(f"{domain}: MX lookup failed: {_describe(e)}", permanent=False) from None
        mxs = [rr.payload for rr in answers if rr.type == dns.MX]
        if not mxs:
            # RFC 5321 §5.1: no MX means the domain itself is the implicit MX (preference 0).
            addresses, failure = await self._addresses(domain, {})
            if not addresses:
                raise failure or DNSFailure(f"{domain}: no MX and no address records", permanent=True)
            return [Target(domain, tuple(addresses), port)]
        real = [mx for mx in mxs if mx.name.name not in (b"", b".")]
        if not real:
            raise DNSFailure(f"{domain}: null MX, accepts no mail (RFC 7505)", permanent=True, status="5.1.10")
        glue: dict[str, list[str]] = {}
        for rr in additional:
            if rr.type in (dns.A, dns.AAAA):
                glue.setdefault(rr.name.name.decode().lower(), []).append(rr.payload.dottedQuad() if rr.type == dns.A else _ipv6(rr.payload))
        ordered = self._order(real)
        lookups = [self._addresses(mx.name.name.decode().rstrip(".").lower(), glue) for mx in ordered]
        found = await defer.gatherResults([defer.ensureDeferred(x) for x in lookups])
        targets = []
        failures = []
        for mx, (addresses, failure) in zip(ordered, found, strict=True):
            if addresses:
                targets.append(Target(mx.name.name.decode().rstrip(".").lower(), tuple(addresses), port, mx.preference))
            elif failure is not None:
                failures.append(failure)
        if not targets:
            # MX hosts that do not resolve: temporary unless every one of them surely does not exist.
            permanent = bool(failures) and all(f.permanent for f in failures) and len(failures) == len(ordered)
            raise DNSFailure(f"{domain}: no MX host has an address", permanent=permanent, status="5.4.4" if permanent else "4.4.4")
        return targets

    def _order(self, mxs: list[Any]) -> list[Any]:
        # Shuffle first, then a stable sort by preference: equal preferences end up shuffled.
        mxs = list(mxs)
        self._rng.shuffle(mxs)
        mxs.sort(key=lambda mx: mx.preference)
        return mxs

    async def _addresses(self, host: str, glue: dict[str, list[str]]) -> tuple[list[str], DNSFailure | None]:
        literal = _ip_literal(host)
        if literal is not None:
            return [literal], None
        if host in glue:
            return glue[host], None
        queries = [self.resolver.lookupAddress(host)]
        if self.ipv6:
            queries.append(self.resolver.lookupIPV6Address(host))
        results = await defer.DeferredList(queries, consumeErrors=True)
        addresses: list[str] = []
        failure: DNSFailure | None = None
        for ok, value in results:
            if ok:
                for rr in value[0]:
                    if rr.type == dns.A:
                        addresses.append(rr.payload.dottedQuad())
                    elif rr.type == dns.AAAA:
                        addresses.append(_ipv6(rr.payload))
            elif value.check(*_NXDOMAIN):
                failure = failure or DNSFailure(f"{host}: host does not exist", permanent=True)
            else:
                failure = DNSFailure(f"{host}: address lookup failed: {_describe(value.value)}", permanent=False)
        # IPv4 first: loopback and containers rarely route IPv6 for mail.
        addresses.sort(key=lambda a: ":" in a)
        if not addresses and failure is None:
            failure = DNSFailure(f"{host}: no address records", permanent=True)
        return addresses, failure if not addresses else None


def _ipv6(payload: Any) -> str:
    import socket

    return socket.inet_ntop(socket.AF_INET6, payload.address)


def _describe(e: BaseException) -> str:
    if isinstance(e, error.DNSServerError):
        return "SERVFAIL"
    if isinstance(e, error.DNSQueryRefusedError):
        return "REFUSED"
    if isinstance(e, (error.DNSQueryTimeoutError, defer.TimeoutError)):
        return "timeout"
    return e.__class__.__name__
