"""DNS lookups that say whether their answer was authenticated (the AD bit), for MTA-STS's TXT
record and DANE's TLSA records, sent to the same servers as MX lookups (``--dns-server``, else
the system's).

twisted.names' ``Resolver.lookup*`` hands back only the records, and its queries do not ask for
authenticated data; a validating resolver that follows RFC 6840 §5.7 reports the AD bit only to a
client that sets it in its query.  So the query goes out here through twisted.names' own DNS
protocols, subclassed only at their public ``writeMessage`` to set the AD bit, and the answer is
the whole :class:`~twisted.names.dns.Message` (UDP first; TCP when the answer is truncated).
The AD bit is only as trustworthy as the path to the resolver: point ``--dns-server`` at a
validating resolver on the same host or network (RFC 7672 §1.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred
from twisted.names import dns

#: the TLSA record type (RFC 6698); twisted.names decodes it as an ``UnknownRecord``
TLSA = 52


class LookupFailed(Exception):
    """The lookup did not get an answer (SERVFAIL, REFUSED, timeout): nothing is known."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@attrs.frozen
class Answer:
    """The records of the asked type (none for NXDOMAIN or no data), whether the resolver
    vouched for them (``authentic``: the AD bit), and how long they may be kept (``ttl``)."""

    records: tuple[Any, ...]
    authentic: bool
    ttl: int = 0


class _Ignore:
    """The controller of a query protocol: late and unexpected messages are dropped."""

    def messageReceived(self, message: Any, protocol: Any, address: Any = None) -> None:
        pass

    def connectionMade(self, protocol: Any) -> None:
        pass

    def connectionLost(self, protocol: Any) -> None:
        pass


class _AuthenticatedUDP(dns.DNSDatagramProtocol):
    def writeMessage(self, message: dns.Message, address: Any) -> None:
        message.authenticData = 1  # RFC 6840 §5.7: ask for the AD bit
        super().writeMessage(message, address)


class _AuthenticatedTCP(dns.DNSProtocol):
    def writeMessage(self, message: dns.Message) -> None:
        message.authenticData = 1
        super().writeMessage(message)


_ERRORS = {dns.ESERVER: "SERVFAIL", dns.EREFUSED: "REFUSED", dns.EFORMAT: "FORMERR", dns.ENOTIMP: "NOTIMP"}


class SecureLookup:
    """Queries ``servers`` (a list of (host, port)) in order, each timeout in turn
    (twisted.names' schedule); ``servers`` may be a callable giving that list when first needed
    (the system resolver's, read from resolv.conf by twisted.names)."""

    def __init__(self, servers: Any, *, timeout: Sequence[float] = (1, 3, 5), reactor: Any = None) -> None:
        self._servers = servers
        self.timeout = tuple(timeout)
        self._reactor = reactor

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def servers(self) -> list[tuple[str, int]]:
        servers = self._servers() if callable(self._servers) else self._servers
        return list(servers or [("127.0.0.1", 53)])

    def lookup(self, name: str, rtype: int) -> Deferred[Answer]:
        """The ``rtype`` records of ``name``; fails with :class:`LookupFailed`."""
        return defer.ensureDeferred(self._lookup(name.rstrip("."), rtype))

    async def _lookup(self, name: str, rtype: int) -> Answer:
        query = dns.Query(name.encode("idna") if not name.isascii() else name.encode(), rtype, dns.IN)
        last = "no DNS server"
        for timeout in self.timeout:
            for server in self.servers():
                try:
                    message = await self._udp(server, query, timeout)
                    if message.trunc:
                        message = await self._tcp(server, query, timeout)
                except (dns.DNSQueryTimeoutError, defer.TimeoutError):
                    last = "timeout"
                    continue
                except OSError as e:
                    last = f"{e.__class__.__name__}: {e}"
                    continue
                return _answer(name, rtype, message)
        raise LookupFailed(name, last)

    async def _udp(self, server: tuple[str, int], query: dns.Query, timeout: float) -> dns.Message:
        protocol = _AuthenticatedUDP(_Ignore(), reactor=self.reactor)
        try:
            return await protocol.query(server, [query], timeout)
        finally:
            if protocol.transport is not None:
                protocol.transport.stopListening()

    async def _tcp(self, server: tuple[str, int], query: dns.Query, timeout: float) -> dns.Message:
        endpoint = endpoints.TCP4ClientEndpoint(self.reactor, server[0], server[1], timeout=max(1, int(timeout)))
        protocol = await endpoints.connectProtocol(endpoint, _AuthenticatedTCP(_Ignore(), reactor=self.reactor))
        try:
            return await protocol.query([query], timeout)
        finally:
            protocol.transport.loseConnection()


def _answer(name: str, rtype: int, message: dns.Message) -> Answer:
    authentic = bool(message.authenticData)
    if message.rCode == dns.ENAME:
        return Answer((), authentic, _negative_ttl(message))
    if message.rCode != dns.OK:
        raise LookupFailed(name, _ERRORS.get(message.rCode, f"rcode {message.rCode}"))
    found = [rr for rr in message.answers if rr.type == rtype]
    if not found:
        return Answer((), authentic, _negative_ttl(message))
    return Answer(tuple(rr.payload for rr in found), authentic, min(rr.ttl for rr in found))


def _negative_ttl(message: dns.Message) -> int:
    # RFC 2308 §5: a negative answer is kept for the SOA's minimum (bounded by its TTL).
    for rr in message.authority:
        if rr.type == dns.SOA:
            return min(rr.ttl, rr.payload.minimum)
    return 0


def txt_strings(answer: Answer) -> list[str]:
    """Each TXT record of ``answer`` as one string (its character-strings joined, RFC 7208 §3.3)."""
    return [b"".join(record.data).decode("utf-8", "replace") for record in answer.records]


def tlsa_fields(answer: Answer) -> list[tuple[int, int, int, bytes]]:
    """Each TLSA record of ``answer`` as (usage, selector, matching type, data); records too
    short to hold the three fields are left out (RFC 6698 §2.1)."""
    out = []
    for record in answer.records:
        data = bytes(getattr(record, "data", b""))
        if len(data) >= 3:
            out.append((data[0], data[1], data[2], data[3:]))
    return out
