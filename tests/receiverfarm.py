"""A farm of small SMTP receivers on loopback addresses (127.0.1.x, one port for all), each with
a limit of its own that it enforces and records, as the big mailbox providers do: concurrent
connections, messages per connection, messages per second.  Every message is recorded with the
address it came from and the EHLO name it was sent with."""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.protocols.basic import LineReceiver


class Receiver(protocol.ServerFactory):
    """``max_connections``: a connection beyond it is refused with a 421 greeting (a violation);
    ``messages_per_connection``: MAIL after that many messages on a connection gets
    ``421 4.7.0 rate limited`` and the connection closes; ``per_second``: more MAIL commands than
    that within one second is a violation."""

    def __init__(self, name: str, *, max_connections: int | None = None,
                 messages_per_connection: int | None = None, per_second: int | None = None) -> None:
        self.name = name
        self.max_connections = max_connections
        self.messages_per_connection = messages_per_connection
        self.per_second = per_second
        self.open = 0
        self.max_open = 0
        self.connections: list[float] = []
        self.refused = 0
        self.rate_limited: list[float] = []
        self.mail_times: list[float] = []
        self.recent: deque[float] = deque()
        self.too_fast = 0
        #: (peer address, EHLO name, recipient) of each accepted message
        self.messages: list[tuple[str, str, str]] = []

    def buildProtocol(self, addr: Any) -> FarmSMTP:
        p = FarmSMTP()
        p.factory = self
        return p

    def violations(self) -> dict[str, int]:
        return {"refused": self.refused, "rate limited": len(self.rate_limited), "too fast": self.too_fast}


class FarmSMTP(LineReceiver):
    factory: Receiver
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        f = self.factory
        f.open += 1
        f.max_open = max(f.max_open, f.open)
        f.connections.append(reactor.seconds())
        self.ehlo = ""
        self.sent = 0
        self.rcpt = ""
        self.in_data = False
        if f.max_connections is not None and f.open > f.max_connections:
            f.refused += 1
            self.sendLine(b"421 4.7.0 too many connections from you")
            self.transport.loseConnection()
            return
        self.sendLine(f"220 {f.name} ESMTP farm".encode())

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1

    def lineReceived(self, line: bytes) -> None:
        f = self.factory
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.sent += 1
                f.messages.append((self.transport.getPeer().host, self.ehlo, self.rcpt))
                self.sendLine(b"250 2.0.0 queued")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.ehlo = line[5:].decode()
            self.sendLine(f"250-{f.name}".encode())
            self.sendLine(b"250-PIPELINING")
            self.sendLine(b"250 8BITMIME")
        elif verb == b"MAIL":
            now = reactor.seconds()
            if f.messages_per_connection is not None and self.sent >= f.messages_per_connection:
                f.rate_limited.append(now)
                self.sendLine(b"421 4.7.0 rate limited, try again later")
                self.transport.loseConnection()
                return
            f.mail_times.append(now)
            if f.per_second is not None:
                f.recent.append(now)
                while f.recent and f.recent[0] <= now - 1.0:
                    f.recent.popleft()
                if len(f.recent) > f.per_second:
                    f.too_fast += 1
            self.sendLine(b"250 2.1.0 ok")
        elif verb == b"RCPT":
            self.rcpt = line[8:].strip(b"<>").decode()
            self.sendLine(b"250 2.1.5 ok")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go ahead")
        elif verb == b"RSET":
            self.sendLine(b"250 2.0.0 ok")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 unknown")


def listen_farm(receivers: dict[str, Receiver]) -> tuple[int, list[Any]]:
    """Listen with each receiver on its address (``receivers``: address -> receiver), all on one
    port; (the port, the listening ports)."""
    for _ in range(20):
        ports: list[Any] = []
        try:
            for address, receiver in receivers.items():
                ports.append(reactor.listenTCP(ports[0].getHost().port if ports else 0, receiver, interface=address))
        except CannotListenError:
            for p in ports:
                p.stopListening()
            continue
        return ports[0].getHost().port, ports
    raise RuntimeError("no port free on every farm address")
