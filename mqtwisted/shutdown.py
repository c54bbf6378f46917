"""The MTA's graceful stop, one stage after another (see :meth:`mqtwisted.service.MTAService.stopService`).

Twisted's ``MultiService`` stops every child at once; the MTA must stop listening first, let
sessions finish their transaction, let deliveries finish or give their messages back, and only
then stop the plugins and close the queue.  These are the waiting helpers each stage uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mqtwisted.connection import Reply

log = Logger()

#: how often a draining stop looks at the sessions that are still open
POLL_INTERVAL = 0.05
#: how long the 421s get to reach the clients before the connections are cut
GOODBYE_GRACE = 2.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(_reactor(), seconds, lambda: None)


async def each(calls: Iterable[Callable[[], Any]]) -> None:
    """Call every stop function at once and wait for all; a failure is logged, not raised."""
    results = await defer.DeferredList([defer.maybeDeferred(c) for c in calls], consumeErrors=True)
    for ok, failure in results:
        if not ok:
            log.failure("stopping a service failed", failure)


async def bounded(call: Callable[[], Any], seconds: float, what: str) -> None:
    """Call ``call`` and wait for it at most ``seconds`` (then cancel the wait and say so)."""
    d = defer.maybeDeferred(call)
    d.addErrback(lambda f: log.failure("stopping {what} failed", f, what=what))
    d.addTimeout(seconds, _reactor(), onTimeoutCancel=lambda r, t: log.warn(
        "{what} did not finish within {t:.0f}s; its messages are due again at next start", what=what, t=t))
    await d


async def drain_sessions(sessions: set[Any], deadline: float, reply: Reply) -> None:
    """Close idle sessions at once, others when their transaction is over, all by ``deadline``.

    ``sessions`` is the live set the factory keeps (sessions leave it as they close); each is
    closed with ``reply``, and whoever is still connected :data:`GOODBYE_GRACE` later is cut.
    """
    reactor = _reactor()
    while sessions:
        over = reactor.seconds() >= deadline
        for session in list(sessions):
            if over or not session.in_transaction:
                session.shutdown(reply)
        if over:
            break
        await sleep(POLL_INTERVAL)
    # Let the 421s reach the clients; whoever is still there after that is cut.
    give_up = reactor.seconds() + GOODBYE_GRACE
    while sessions and reactor.seconds() < give_up:
        await sleep(POLL_INTERVAL)
    for session in list(sessions):
        session.transport.abortConnection()
