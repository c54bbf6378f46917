"""A real twisted.names authoritative server on loopback (UDP and TCP on one port), serving a
zone given as a dict.  Reusable fixture: ``zone = DNSZone(records); port = zone.start(); ...;
await zone.stop()``.

Records: ``{"example.com": [("MX", 10, "mx1.example.com"), ("A", "127.0.0.1"), ("AAAA", "::1")]}``;
``("TXT", "v=DKIM1; ...")`` is served as strings of at most 255 bytes, as a long key needs.
``("TLSA", usage, selector, matching_type, "hex data")`` is a TLSA record (RFC 6698).
Names in ``servfail`` answer SERVFAIL; names in ``silent`` never answer (client timeouts); any
other unknown name is NXDOMAIN.  Answers for names in ``authentic`` carry the AD bit, as a
validating resolver's would (``DNSZone.ad_asked`` records whether each query asked for it).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.names import dns, error, server
from twisted.names.common import ResolverBase

_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "CNAME": dns.CNAME, "TXT": dns.TXT, "TLSA": 52}


def _payload(kind: str, args: tuple) -> Any:
    if kind == "A":
        return dns.Record_A(args[0], ttl=60)
    if kind == "AAAA":
        return dns.Record_AAAA(args[0], ttl=60)
    if kind == "MX":
        return dns.Record_MX(args[0], args[1], ttl=60)
    if kind == "CNAME":
        return dns.Record_CNAME(args[0], ttl=60)
    if kind == "TXT":
        data = args[0].encode()
        return dns.Record_TXT(*[data[i : i + 255] for i in range(0, len(data), 255)], ttl=60)
    if kind == "TLSA":
        usage, selector, mtype, data = args
        return dns.UnknownRecord(bytes([usage, selector, mtype]) + bytes.fromhex(data), ttl=60)
    raise ValueError(kind)


class ZoneResolver(ResolverBase):
    def __init__(self, records: dict[str, list[tuple]], servfail: set[str], silent: set[str]) -> None:
        super().__init__()
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.servfail = servfail
        self.silent = silent
        self.queries: list[tuple[str, int]] = []
        self._hung: list[defer.Deferred] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred:
        key = name.decode().lower().rstrip(".")
        self.queries.append((key, type))
        if key in self.silent:
            d: defer.Deferred = defer.Deferred()
            self._hung.append(d)
            return d
        if key in self.servfail:
            return defer.fail(RuntimeError("scripted SERVFAIL"))
        if key not in self.records:
            return defer.fail(error.AuthoritativeDomainError(name))
        answers = [
            dns.RRHeader(name, _TYPES[kind], dns.IN, 60, _payload(kind, tuple(args)), auth=True)
            for kind, *args in self.records[key]
            if _TYPES[kind] == type or type == dns.ALL_RECORDS
        ]
        return defer.succeed((answers, [], []))


class _Validating(server.DNSServerFactory):
    """Sets the AD bit on answers for the zone's ``authentic`` names, through the public
    ``handleQuery``/``sendReply`` of twisted.names' server."""

    def __init__(self, zone: DNSZone) -> None:
        super().__init__(authorities=[zone.resolver])
        self.zone = zone

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        self.zone.ad_asked.append(bool(message.authenticData))
        if not isinstance(protocol, dns.DNSDatagramProtocol):
            self.zone.tcp_queries += 1
        super().handleQuery(message, protocol, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        names = {q.name.name.decode().lower().rstrip(".") for q in message.queries}
        message.authenticData = bool(names & self.zone.authentic)
        if isinstance(protocol, dns.DNSDatagramProtocol) and len(message.toStr()) > 512:
            # As BIND and unbound do (twisted.names' server would send it whole): an answer that
            # does not fit in a plain DNS datagram goes without its records and with TC set.
            message.answers, message.authority, message.additional, message.trunc = [], [], [], 1
        super().sendReply(protocol, message, address)


class DNSZone:
    def __init__(self, records: dict[str, list[tuple]], servfail: set[str] = frozenset(), silent: set[str] = frozenset(),
                 authentic: set[str] = frozenset()) -> None:
        self.resolver = ZoneResolver(records, set(servfail), set(silent))
        self.authentic = {n.lower().rstrip(".") for n in authentic}
        self.ad_asked: list[bool] = []
        self.tcp_queries = 0
        self.port = 0
        self._listeners: list[Any] = []

    def start(self, port: int = 0) -> int:
        """Listen on loopback: ``port``, or a free one (0); returns the port."""
        factory = _Validating(self)
        factory.noisy = False
        for _ in range(20):
            # A fresh protocol per try: a UDP port stops listening asynchronously, so the last
            # try's protocol may still have its transport.
            udp_proto = dns.DNSDatagramProtocol(factory)
            udp_proto.noisy = False
            udp = reactor.listenUDP(port, udp_proto, interface="127.0.0.1")
            bound = udp.getHost().port
            try:
                tcp = reactor.listenTCP(bound, factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()
                continue
            self._listeners = [udp, tcp]
            self.port = bound
            return bound
        raise RuntimeError("no free port for the DNS zone")

    def stop(self) -> defer.Deferred:
        for d in self.resolver._hung:
            if not d.called:
                d.errback(RuntimeError("zone stopped"))
        self.resolver._hung.clear()
        listeners, self._listeners = self._listeners, []
        return defer.DeferredList([defer.maybeDeferred(x.stopListening) for x in listeners])
