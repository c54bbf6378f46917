"""DNS answers for the verification libraries, which run in a worker thread and ask synchronously
(pyspf, dkimpy), from the twisted.names resolver that ``--dns-server`` names, on the reactor
thread.

Each call hands the query to the reactor (``blockingCallFromThread``) and waits for its answer:
the resolver, its retries and timeouts stay twisted.names', exactly those of MX lookups
(``mqtwisted.dns``).  Never call this on the reactor thread; it would wait for itself.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread
from twisted.names import dns, error

#: The record types the checks ask for, by the names pyspf uses.
TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT, "CNAME": dns.CNAME}

# Every twisted.names error subclasses DomainError; only these two mean "no such name".
_NXDOMAIN = (error.DNSNameError, error.AuthoritativeDomainError)


class TemporaryDNSError(Exception):
    """The lookup failed in a way that may pass (SERVFAIL, timeout, refused): a ``temperror``."""


class Lookups:
    """Synchronous lookups through ``resolver()`` (called on the reactor thread, where it may be
    created) for one message's checks; ``queries`` counts them and ``temporary_failures`` says
    which failed for now."""

    def __init__(self, resolver: Callable[[], Any], reactor: Any) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.queries = 0
        self.temporary_failures: list[str] = []

    def records(self, name: str, rtype: str) -> list[tuple[str, str, Any]]:
        """The answer section for ``name`` and ``rtype``: (owner name, type name, value) with the
        value as text (TXT: a tuple of the strings, as bytes), CNAMEs on the way included.  An
        empty list for a name or type that does not exist; TemporaryDNSError otherwise."""
        qtype = TYPES[rtype]
        name = name.rstrip(".")
        self.queries += 1
        try:
            answers = blockingCallFromThread(self.reactor, self._query, name, qtype)
        except _NXDOMAIN:
            return []
        except Exception as e:
            reason = f"{rtype} {name}: {describe(e)}"
            self.temporary_failures.append(reason)
            raise TemporaryDNSError(reason) from None
        out = []
        for rr in answers:
            if rr.type == qtype or rr.type == dns.CNAME:
                out.append((rr.name.name.decode("ascii", "replace").rstrip("."), dns.QUERY_TYPES.get(rr.type, "?"),
                            _value(rr.type, rr.payload)))
        return out

    def txt(self, name: str) -> list[bytes]:
        """The TXT records of ``name``, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(value) for _, kind, value in self.records(name, "TXT") if kind == "TXT"]

    def _query(self, name: str, qtype: int) -> Any:
        d = self.resolver().query(dns.Query(name, qtype, dns.IN))
        d.addCallback(lambda result: result[0])
        return d


def _value(rtype: int, payload: Any) -> Any:
    if rtype == dns.TXT:
        return tuple(payload.data)
    if rtype == dns.A:
        return payload.dottedQuad()
    if rtype == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    if rtype == dns.MX:
        return payload.preference, payload.name.name.decode("ascii", "replace").rstrip(".")
    return payload.name.name.decode("ascii", "replace").rstrip(".")  # PTR, CNAME


def describe(e: BaseException) -> str:
    if isinstance(e, error.DNSServerError):
        return "SERVFAIL"
    if isinstance(e, error.DNSQueryRefusedError):
        return "REFUSED"
    if isinstance(e, (error.DNSQueryTimeoutError, defer.TimeoutError)):
        return "timeout"
    return type(e).__name__
