"""Bare twisted.mail ESMTP peer: accepts everything, keeps nothing, counts messages.

Usage: ``python bench/peer_twisted.py PORT COUNTFILE``. This is the floor mqmta's
own protocol code stands on: Twisted's ESMTP calls Python once per DATA line.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor, task
from twisted.mail import smtp
from zope.interface import implementer


class Counter:
    value = 0


@implementer(smtp.IMessage)
class NullMessage:
    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's interface
        pass

    def eomReceived(self) -> defer.Deferred:  # noqa: N802
        Counter.value += 1
        return defer.succeed(None)

    def connectionLost(self) -> None:  # noqa: N802
        pass


@implementer(smtp.IMessageDelivery)
class NullDelivery:
    def receivedHeader(self, helo, origin, recipients):  # noqa: N802, ANN001, ANN201
        return None

    def validateFrom(self, helo, origin):  # noqa: N802, ANN001, ANN201
        return origin

    def validateTo(self, user):  # noqa: N802, ANN001, ANN201
        return NullMessage


class Factory(smtp.SMTPFactory):
    protocol = smtp.ESMTP
    domain = b"twisted.bench"  # avoid getfqdn()

    def buildProtocol(self, addr):  # noqa: N802, ANN001, ANN201
        p = super().buildProtocol(addr)
        p.delivery = NullDelivery()
        p.host = self.domain
        return p


def write_count(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(Counter.value))
    os.replace(path + ".tmp", path)


def main() -> None:
    port, countfile = int(sys.argv[1]), sys.argv[2]
    reactor.listenTCP(port, Factory(), interface="127.0.0.1", backlog=1024)
    last = [-1]

    def flush() -> None:
        if Counter.value != last[0]:
            last[0] = Counter.value
            write_count(countfile)

    task.LoopingCall(flush).start(0.1)
    reactor.addSystemEventTrigger("before", "shutdown", write_count, countfile)
    reactor.run()


if __name__ == "__main__":
    main()
