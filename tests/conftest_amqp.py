"""Shared by the AMQP tests and the queue contract test: the broker check, per-test isolation,
a TCP relay to cut the broker off, and small waiting helpers.

Not a conftest.py on purpose: the tests that need it import it (``from tests.conftest_amqp import
...``), so the rest of the suite pays nothing for it.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.protocols import portforward

from mqtwisted.queue import QUEUE_NAMES, Lease
from mqtwisted.queue.amqp import AmqpQueue
from mqtwisted.queue.amqp_wire import DELAY_BUCKETS

AMQP_URL = os.environ.get("MQMTA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
_parts = urlsplit(AMQP_URL)
BROKER_HOST = _parts.hostname or "127.0.0.1"
BROKER_PORT = _parts.port or 5672


def broker_answers() -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def require_broker() -> None:
    """Skip (or fail, under ``MQMTA_REQUIRE_AMQP=1``) when no broker answers."""
    if broker_answers():
        return
    why = f"no RabbitMQ broker answers on {BROKER_HOST}:{BROKER_PORT}"
    if os.environ.get("MQMTA_REQUIRE_AMQP") == "1":
        pytest.fail(f"{why} and MQMTA_REQUIRE_AMQP=1")
    pytest.skip(f"{why} (set MQMTA_REQUIRE_AMQP=1 to make this a failure)")


def unique_prefix() -> str:
    """Queue-name prefix of one test: tests never see each other's (or a previous run's) mail."""
    return f"mqtest-{uuid.uuid4().hex[:10]}-"


def url_via(port: int) -> str:
    """AMQP_URL pointed at another port on the broker's host (the relay)."""
    netloc = _parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return _parts._replace(netloc=netloc).geturl()


def blocking_channel() -> tuple[pika.BlockingConnection, Any]:
    """A plain pika client: "any AMQP client" for the tests' own publishing and checking."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    return conn, conn.channel()


def delete_topology(prefix: str) -> None:
    conn, ch = blocking_channel()
    try:
        for name in [prefix + q for q in QUEUE_NAMES] + [
            f"{prefix}mq-delay-{s}" for s in DELAY_BUCKETS
        ]:
            ch.queue_delete(name)
        ch.exchange_delete(f"{prefix}mq-delay")
    finally:
        conn.close()


def leaked_calls() -> list[Any]:
    """Timers of pika or of the AMQP backend still pending (pytest-twisted does not check)."""
    return [
        call for call in reactor.getDelayedCalls()
        if "pika" in getattr(call.func, "__module__", "") or "amqp" in repr(call.func)
    ]


class Leases:
    """A consumer handler that queues leases for the test to take one at a time."""

    def __init__(self) -> None:
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self.seen: list[Lease] = []

    def __call__(self, lease: Lease) -> None:
        self.seen.append(lease)
        self.queue.put(lease)

    def next(self, timeout: float = 10.0) -> defer.Deferred:
        d = self.queue.get()
        d.addTimeout(timeout, reactor)
        return d


# Registered under their short names; test modules import the *_fixture objects, so the test
# arguments don't shadow an import.
@pytest.fixture(name="amqp_prefix")
def amqp_prefix_fixture() -> Any:
    require_broker()
    prefix = unique_prefix()
    yield prefix
    delete_topology(prefix)


@pytest.fixture(name="amqp_queue")
def amqp_queue_fixture(amqp_prefix: str) -> Any:
    q = AmqpQueue(AMQP_URL, prefetch=50, prefix=amqp_prefix, timeout=3.0, max_backoff=0.5)
    pytest_twisted.blockon(q.start())
    assert q.connected
    yield q
    pytest_twisted.blockon(q.stop())
    assert leaked_calls() == []  # stop() fires once every timer of the queue is gone


@pytest.fixture(name="own")
def own_fixture() -> Any:
    """``own(queue_or_relay)``: stopped after the test even when it fails.  A queue left running
    keeps reconnecting, and would fail test_reactor_is_clean_after_the_module as well."""
    things: list = []

    def take(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield take
    for thing in reversed(things):
        pytest_twisted.blockon(defer.maybeDeferred(thing.stop))


# -- a TCP relay of the tests' own, between the client and the broker ---------------------------


class _RelayServer(portforward.ProxyServer):
    noisy = False

    def connectionMade(self) -> None:
        self.factory.relay.servers.add(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self.factory.relay.blackhole:
            super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self.factory.relay.servers.discard(self)
        super().connectionLost(reason)


class _RelayClient(portforward.ProxyClient):
    noisy = False

    def dataReceived(self, data: bytes) -> None:
        if not self.peer.factory.relay.blackhole:
            super().dataReceived(data)


class _RelayClientFactory(portforward.ProxyClientFactory):
    protocol = _RelayClient


class _RelayServer2(_RelayServer):
    clientProtocolFactory = _RelayClientFactory


class Relay:
    """Forwards 127.0.0.1:<port> to the broker.  ``stop`` cuts every relayed connection and
    refuses new ones (a broker gone); ``blackhole`` keeps the connections but drops every byte
    (a broker hung or a network partition without a FIN)."""

    def __init__(self) -> None:
        self.port = 0
        self.servers: set[_RelayServer] = set()
        self.blackhole = False
        self._listening: Any = None

    def start(self) -> None:
        factory = portforward.ProxyFactory(BROKER_HOST, BROKER_PORT)
        factory.protocol = _RelayServer2
        factory.relay = self
        self.blackhole = False
        # Same port again after a stop: clients reconnect to the address they know.
        self._listening = reactor.listenTCP(self.port, factory, interface="127.0.0.1")
        self.port = self._listening.getHost().port

    def stop(self) -> defer.Deferred:
        d = defer.maybeDeferred(self._listening.stopListening)
        for server in list(self.servers):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()
        return d

    @property
    def url(self) -> str:
        return url_via(self.port)


def closed_port() -> int:
    """A port nothing listens on: a broker unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
