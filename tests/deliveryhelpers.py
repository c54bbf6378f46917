"""A delivery service on a MemoryReactorClock whose outbound connections are joined in memory to
scripted servers (or refused), with a fixed resolver: deterministic, no sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.defer import fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from mqtwisted.connection import Connection, MessageHandle, Reply
from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.dns import DNSFailure, Target
from tests.memqueue import MemoryQueue


class StaticResolver:
    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table

    def _answer(self, name: str, port: int) -> Any:
        value = self.table.get(name)
        if isinstance(value, DNSFailure):
            return fail(value)
        if value is None:
            return fail(DNSFailure(f"{name}: domain does not exist (NXDOMAIN)", permanent=True))
        return succeed([Target(host, tuple(ips), port) for host, ips in value])

    def resolve(self, domain: str, port: int = 25) -> Any:
        return self._answer(domain, port)

    def resolve_host(self, host: str, port: int = 25) -> Any:
        return self._answer(host, port)


class Net:
    """Joins the service's connectTCP calls to servers by IP; unknown IPs refuse."""

    def __init__(self, reactor: MemoryReactorClock, servers: dict[str, Any]) -> None:
        self.reactor = reactor
        self.servers = servers
        self.seen = 0
        self.connected: list[tuple[str, int]] = []
        self.pumps: list[iosim.IOPump] = []

    def run(self) -> None:
        """Connect what the service dialled since the last call, and carry every byte each way
        until all connections are quiet (parked sessions stay open).  Calls due now run between
        pumps, as a reactor runs them between reads (the service settles outcomes that way)."""
        self._connect()
        while True:
            self.reactor.advance(0)
            self._connect()
            if not any([p.pump() for p in self.pumps]):
                break
        self.reactor.advance(0)
        self._connect()

    def _connect(self) -> None:
        while self.seen < len(self.reactor.tcpClients):
            host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.seen]
            connector = self.reactor.connectors[self.seen]
            self.seen += 1
            server = self.servers.get(host)
            if server is None:
                factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
                continue
            self.connected.append((host, port))
            client = factory.buildProtocol(None)
            srv = server.buildProtocol(None)
            peer = iosim.makeFakeClient(client)
            peer.peerAddress = _addr(host, port)
            pump = iosim.connect(srv, iosim.makeFakeServer(srv), client, peer)
            self.pumps.append(pump)
            pump.flush()


def _addr(host: str, port: int) -> Any:
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, port)


class RecordingHooks:
    """A HookRunner with programmable out hooks."""

    def __init__(self, out_data: Any = None, out_sent: Any = None) -> None:
        self.impl = {"mq_smtp_out_data": out_data, "mq_smtp_out_sent": out_sent}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def connection_closed(self, conn: Any) -> None:
        pass

    def defines(self, hook: str) -> bool:
        return self.impl.get(hook) is not None

    def run(self, hook: str, conn: Connection, *args: Any) -> Any:
        handle: MessageHandle = args[0]
        self.calls.append((hook, dict(handle.document)))
        reply: Reply | None = self.impl[hook](conn, handle)
        return succeed(reply)


def make(servers: dict[str, Any], table: dict[str, Any] | None = None, hooks: Any = None, **opts: Any):
    reactor = MemoryReactorClock()
    queue = MemoryQueue(reactor)
    table = table if table is not None else {"example.com": [("mx1.example.com", ["10.0.0.1"])]}
    opts.setdefault("helo", "mqmta.test")
    svc = DeliveryService(queue, hooks, DeliveryOptions(**opts), reactor=reactor, resolver=StaticResolver(table))
    net = Net(reactor, servers)
    return svc, queue, net, reactor


def doc(rcpt: str = "user@example.com", mime: str = "Subject: t\r\n\r\nhello\r\n", **kw: Any) -> dict[str, Any]:
    return {"envelope": "sender@example.org", "recipient": rcpt, "mime": mime, **kw}
