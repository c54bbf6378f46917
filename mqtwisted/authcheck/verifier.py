"""The inbound check of one message, as cleanup asks for it: :class:`InboundVerifier` runs
:func:`check_message` (SPF, DKIM, ARC, then DMARC over their results) in Twisted's thread pool,
its DNS questions answered on the reactor thread by the resolver ``--dns-server`` names.

No DNS failure refuses a message: it becomes a ``temperror`` result.  See docs/architecture.rst
for where this sits between the server and the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mqtwisted.authcheck.dkimcheck import ArcResult, DkimResult, check_arc, check_dkim
from mqtwisted.authcheck.dmarccheck import DmarcResult, check_dmarc
from mqtwisted.authcheck.lookups import Lookups
from mqtwisted.authcheck.results import AuthResults
from mqtwisted.authcheck.spfcheck import SpfResult, check_spf
from mqtwisted.connection import Connection
from mqtwisted.dns import MXResolver
from mqtwisted.envelope import Body, Envelope
from mqtwisted.reactors import LazyReactor

log = Logger()
T = TypeVar("T")


def check_message(message: bytes, lookups: Lookups, *, ip: str, helo: str | None, mail_from: str,
                  authserv_id: str) -> AuthResults:
    """Every check of one message (blocking: in a worker thread).  A check that breaks on a
    message no library expected is a ``temperror`` with the reason, never a lost message."""
    spf = _guarded(lambda: check_spf(lookups, ip, mail_from, helo, authserv_id),
                   lambda why: SpfResult("temperror", "mailfrom" if mail_from else "helo",
                                         mail_from or helo or "", "", ip, why))
    signatures = _guarded(lambda: check_dkim(message, lookups), lambda why: (DkimResult("temperror", reason=why),))
    arc = _guarded(lambda: check_arc(message, lookups), lambda why: ArcResult("fail", reason=why))
    dmarc = _guarded(lambda: check_dmarc(message, spf, signatures, lookups),
                     lambda why: DmarcResult("temperror", reason=why))
    return AuthResults(authserv_id, spf, signatures, dmarc, arc)


def _guarded(check: Callable[[], T], instead: Callable[[str], T]) -> T:
    try:
        return check()
    except Exception as e:
        log.failure("inbound verification failed unexpectedly")
        return instead(f"internal error: {type(e).__name__}: {e}")


class InboundVerifier:
    """What ``--verify-inbound on`` gives cleanup.  Pickles (TAP files): holds settings; the
    resolver is made on first use, on the reactor thread."""

    reactor = LazyReactor()

    def __init__(self, authserv_id: str, servers: Sequence[tuple[str, int]] | None = None, *,
                 reactor: Any = None, resolver: Any = None) -> None:
        self.authserv_id = authserv_id
        self.servers = list(servers) if servers else None
        self._reactor = reactor
        self._resolver = resolver

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reactor": None, "_resolver": None}

    def resolver(self) -> Any:
        """The twisted.names resolver (reactor thread only)."""
        if self._resolver is None:
            self._resolver = MXResolver(self.servers, reactor=self.reactor).resolver
        return self._resolver

    def verify(self, conn: Connection, envelope: Envelope, body: Body) -> Deferred[AuthResults]:
        """The results for a message accepted on ``conn``: fires on the reactor thread."""
        run: Callable[[], AuthResults] = lambda: check_message(  # noqa: E731 (the thread's whole job)
            body.read(), Lookups(self.resolver, self.reactor), ip=conn.remote_ip, helo=conn.helo,
            mail_from=envelope.sender, authserv_id=self.authserv_id)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), run)
