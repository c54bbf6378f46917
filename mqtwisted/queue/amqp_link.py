"""One connection to a RabbitMQ broker or cluster, kept up: connecting with a timeout, reconnecting
with exponential backoff (to the next host of the URL's list each time), the topology declared on
every new connection, one confirm-mode channel that publishes, and the broker's alarms.  :mod:`mqtwisted.queue.amqp` builds the queue semantics
(named queues, delay buckets, leases) on it.

Publishing (:meth:`AmqpLink.send`) fires only when the broker confirmed every message, and
errbacks with :class:`QueueUnavailable` when the broker is down, blocks publishers, refuses a
message (``basic.nack``: a full queue with ``x-overflow: reject-publish``), returns it as
unroutable, or does not answer within ``timeout``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import pika
from pika import exceptions as pika_exceptions
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwisted.queue import QueueUnavailable
from mqtwisted.reactors import LazyReactor

log = Logger()

#: bytes read from the broker's socket per reactor turn (Twisted's default is 64 kB).  A consumer
#: gets the documents of one read in one turn, and a destination's parked connection takes what
#: has arrived by the end of that turn: with 5 kB documents, 64 kB made transactions of about 12
#: recipients where 50 were allowed (a drain's 20,000 recipients in 1,600 transactions, not 450).
READ_SIZE = 1 << 20
FRAME_FEED = 1 << 16


def on_broker_alarm(conn: TwistedProtocolConnection, blocked: Callable[[], None],
                    unblocked: Callable[[], None]) -> None:
    """Call ``blocked()`` when the broker blocks publishers (memory or disk alarm) and
    ``unblocked()`` when it lets them go on.

    pika's Twisted adapter has no public API for RabbitMQ's ``Connection.Blocked``: the public
    ``add_on_connection_(un)blocked_callback`` methods exist only on the pika ``Connection`` it
    wraps, which it keeps in ``_impl``.  This function is the one place that reaches for it;
    tests/test_amqp.py (``test_broker_alarm_reaches_the_queue``) feeds the frames to a
    connection and fails if pika moves it."""
    connection = conn._impl
    connection.add_on_connection_blocked_callback(lambda *_: blocked())
    connection.add_on_connection_unblocked_callback(lambda *_: unblocked())


class BrokerRefused(QueueUnavailable):
    """The broker answered a publish with ``basic.nack``: that message is not stored (a full
    queue, or a quorum queue without a leader for the moment); the connection is fine."""


def broker_urls(url: str) -> list[str]:
    """One URL per broker of ``amqp://user:pass@h1:5672,h2:5673/vhost`` (the nodes of a
    cluster), each with the same credentials, vhost and options; a single host gives itself."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    urls = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise ValueError(f"empty host in the AMQP URL's host list {hosts!r}")
        urls.append(urlunsplit((parts.scheme, f"{userinfo}{at}{host}", parts.path, parts.query,
                                parts.fragment)))
    return urls


@attrs.frozen
class Outgoing:
    """One message ready for ``basic_publish``."""

    exchange: str
    routing_key: str
    payload: bytes
    properties: pika.BasicProperties
    id: str


class AmqpLink:
    """The broker connection of one queue.

    :param topology: declares what must exist on a new connection (called on each).
    :param on_ready: called with each new connection once it can publish.
    :param on_lost: called when the current connection is gone (the link reconnects by itself).
    :param arguments: the ``x-`` arguments of a queue it declares (``x-queue-type`` …).

    ``url`` may name several brokers (:func:`broker_urls`): the link connects to the first that
    answers, in the order given, and after a failure or a loss tries the next one.
    """

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        *,
        timeout: float,
        max_backoff: float,
        topology: Callable[[TwistedProtocolConnection], Awaitable[None]],
        on_ready: Callable[[TwistedProtocolConnection], None],
        on_lost: Callable[[], None],
        arguments: Callable[[str], dict[str, Any]] = lambda name: {},
    ) -> None:
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._reactor = reactor
        self._topology = topology
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._arguments = arguments
        self.brokers = [pika.URLParameters(u) for u in broker_urls(url)]
        if "heartbeat" not in url:
            # pika would accept the broker's 60 s; a dead peer without a FIN should be noticed
            # sooner than that, since SMTP sessions wait on our confirms meanwhile.
            for params in self.brokers:
                params.heartbeat = 15
        #: index in ``brokers`` of the one connected to (or tried next)
        self.current = 0
        self.running = False
        #: the open connection, None while (re)connecting
        self.connection: TwistedProtocolConnection | None = None
        #: the confirm-mode channel that publishes, None while (re)connecting
        self.publisher: TwistedChannel | None = None
        self.blocked = False
        self._returned: set[str] = set()
        self._declared: set[str] = set()
        self._mismatched: set[str] = set()
        self._renewing = False
        self._attempts = 0
        self._retry_call: Any = None
        self._connecting: Deferred | None = None
        self._waiters: list[Deferred] = []

    reactor = LazyReactor()

    @property
    def params(self) -> pika.URLParameters:
        return self.brokers[self.current]

    def _next_broker(self) -> None:
        self.current = (self.current + 1) % len(self.brokers)

    @property
    def connected(self) -> bool:
        return self.publisher is not None and self.publisher.is_open

    def safe_url(self) -> str:
        vhost = quote(self.params.virtual_host, safe="")
        return f"{self.params.host}:{self.params.port}/{vhost}"  # no credentials in logs

    def unavailable(self, what: str = "not connected") -> QueueUnavailable:
        return QueueUnavailable(f"AMQP broker {self.safe_url()} {what}")

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._connect()

    def wait_connected(self, timeout: float | None = None) -> Deferred[None]:
        """Fires when connected (at once if it is); errbacks with :class:`QueueUnavailable`
        after ``timeout`` seconds."""
        if self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if timeout is not None:
            call = self.reactor.callLater(timeout, self._waiter_timeout, d)
            d.addBoth(cancel_call, call)
        return d

    def _waiter_timeout(self, d: Deferred) -> None:
        if d in self._waiters:
            self._waiters.remove(d)
            d.errback(self.unavailable())

    def stop(self) -> Deferred[None]:
        """Close the connection (waiting at most ``timeout`` for the broker to agree)."""
        self.running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(QueueUnavailable("queue stopped"))
        conn, self.connection = self.connection, None
        self.publisher = None
        if conn is None:
            # Still at the TCP connect (or between attempts): endpoints cancel cleanly.
            if self._connecting is not None and not self._connecting.called:
                self._connecting.cancel()
            return succeed(None)
        if conn.closed is None:  # not open yet: abort the handshake
            abort_transport(conn)
            return succeed(None)
        closed = conn.closed
        conn.close()
        d: Deferred[None] = Deferred()
        closed.addBoth(lambda _: d.callback(None) if not d.called else None)
        # A broker that no longer answers must not hang shutdown.
        timer = self.reactor.callLater(self.timeout, _abort, conn, d)
        d.addBoth(cancel_call, timer)
        return d

    # -- connecting ----------------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry_call = None
        if not self.running:
            return
        self._attempts += 1
        self._connecting = defer.ensureDeferred(self._open())
        self._connecting.addErrback(self._connect_failed)

    async def _open(self) -> None:
        params = self.params
        if params.ssl_options is not None:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint: Any = SSL4ClientEndpoint(
                self.reactor, params.host, params.port,
                optionsForClientTLS(params.ssl_options.server_hostname or params.host),
                timeout=self.timeout,
            )
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, params.host, params.port,
                                          timeout=self.timeout)
        conn = await connectProtocol(endpoint, _Connection(params, self.reactor))
        if isinstance(conn.transport, FileDescriptor):  # plain TCP (TLS keeps its own reads)
            conn.transport.bufferSize = READ_SIZE
        if not self.running:
            abort_transport(conn)
            return
        self.connection = conn
        if conn.ready is None:
            raise QueueUnavailable("connection lost during the AMQP handshake")
        # The AMQP handshake has no timeout of its own in pika's Twisted adapter.
        abort = self.reactor.callLater(self.timeout, abort_transport, conn)
        try:
            await conn.ready
        finally:
            if abort.active():
                abort.cancel()
        if not self.running or self.connection is not conn:
            conn.close()
            return
        on_broker_alarm(conn, lambda: self._set_blocked(True), lambda: self._set_blocked(False))
        self.blocked = False
        conn.closed.addBoth(self._lost, conn)

        self._declared = set()
        await self._topology(conn)

        publisher = await self._open_publisher(conn)
        if not self.running or self.connection is not conn:
            return
        self.publisher = publisher
        self._attempts = 0
        log.info("AMQP connected to {url}", url=self.safe_url())
        self._on_ready(conn)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    async def ensure_declared(self, conn: TwistedProtocolConnection | None, names: Iterable[str]) -> None:
        """Declare (durable, with ``arguments(name)``) the queues among ``names`` not declared on
        this connection yet.

        Delivery may name queues of its own (its queue options, a message's ``queues``);
        publishing to a queue that does not exist would be returned, and dead-lettering into one
        would silently drop the document.  A queue the operator created with other arguments
        (another queue type, a length limit) is refused with 406, which closes the channel: a
        new channel then checks it exists (passive) and it is used as it is, said once in the
        log with the broker's own words on what differs."""
        missing = [n for n in names if n not in self._declared]
        if not missing:
            return
        if conn is None:
            raise self.unavailable()
        # A channel of its own: a 406 closes the channel it happens on.
        channel = await conn.channel()
        try:
            for name in missing:
                arguments = self._arguments(name)
                try:
                    await channel.queue_declare(name, durable=True, arguments=arguments or None)
                except pika_exceptions.ChannelClosedByBroker as e:
                    if e.reply_code != 406:
                        raise
                    channel = await conn.channel()
                    await channel.queue_declare(name, passive=True)
                    if name not in self._mismatched:
                        self._mismatched.add(name)
                        log.warn("AMQP queue {queue} exists with other arguments than "
                                 "{arguments}; using it as it is ({found})", queue=name,
                                 arguments=arguments or "the defaults", found=e.reply_text)
                self._declared.add(name)
        finally:
            if channel.is_open:
                channel.close()

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError) or not self.running:
            return
        log.warn("AMQP connection to {url} failed: {why}", url=self.safe_url(),
                 why=failure.getErrorMessage() or failure.type.__name__)
        self._next_broker()
        conn, self.connection = self.connection, None
        self.publisher = None
        if conn is not None:
            abort_transport(conn)
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if not self.running or self._retry_call is not None:
            return
        delay = min(self.max_backoff, 0.25 * 2 ** min(self._attempts, 10))
        delay *= random.uniform(0.75, 1.25)  # nodes cut off together must not return together
        self._retry_call = self.reactor.callLater(delay, self._connect)

    def _lost(self, reason: Any, conn: TwistedProtocolConnection) -> None:
        if self.connection is not conn:
            return
        self.connection = None
        self.publisher = None
        self._on_lost()
        if self.running:
            lost = self.safe_url()
            self._next_broker()
            log.warn("AMQP connection to {url} lost ({why}); reconnecting to {next}",
                     url=lost, why=reason, next=self.safe_url())
            self._schedule_reconnect()

    async def _open_publisher(self, conn: TwistedProtocolConnection) -> TwistedChannel:
        publisher = await conn.channel()
        await publisher.confirm_delivery()
        publisher.add_on_return_callback(self._on_return)
        publisher.on_closed.addBoth(self._channel_closed, conn, publisher)
        return publisher

    def _renew_publisher(self) -> None:
        """A new publishing channel in place of the current one, after a ``basic.nack``.

        RabbitMQ 3.10 (fixed in 3.11 and 3.12: rabbitmq-server#9241) starts a channel's
        quorum-queue client with the leader its queue record names: a channel that first
        publishes to a quorum queue while that leader is dead and no new one is elected yet
        keeps sending to the dead one, and every publish to that queue is nacked for as long as
        the channel lives (seen with 3.10.8, a node killed under load: minutes of 451).
        Its pending confirms fail (451, or a retry), which a nack storm costs anyway."""
        conn, old = self.connection, self.publisher
        if self._renewing or conn is None or old is None:
            return
        self._renewing = True

        def renewed(publisher: TwistedChannel) -> None:
            if self.connection is conn and self.publisher is old and self.running:
                self.publisher = publisher
                log.info("AMQP broker nacked a publish; publishing on a new channel")
            elif publisher.is_open:
                publisher.close()
            if old.is_open:
                old.close()

        def done(_: Any) -> None:
            self._renewing = False

        d = defer.ensureDeferred(self._open_publisher(conn))
        d.addCallbacks(renewed, lambda f: None)  # a connection going: it reconnects anyway
        d.addBoth(done)

    def _channel_closed(self, reason: Any, conn: TwistedProtocolConnection,
                        channel: TwistedChannel) -> None:
        # The publishing channel closed under a live connection: a channel error we did not
        # expect (its pending confirms have failed already).  Reconnecting is the one recovery
        # path that is well trodden, so take it.  (A channel replaced by _renew_publisher is
        # no longer the publisher when it closes.)
        if self.connection is conn and self.publisher is channel and self.running and conn.is_open:
            log.error("AMQP publishing channel closed ({why}); reconnecting", why=reason)
            conn.close()

    def _set_blocked(self, blocked: bool) -> None:
        # Memory or disk alarm on the broker: publishes would wait for the full timeout.
        self.blocked = blocked
        log.warn("AMQP broker {state} publishers", state="blocks" if blocked else "unblocks")

    def _on_return(self, message: Any) -> None:
        message_id = message.properties.message_id
        if message_id:
            self._returned.add(message_id)

    # -- publishing ----------------------------------------------------------------------------

    def send(self, outgoing: Sequence[Outgoing]) -> Deferred[list[str]]:
        """Publish and wait for every confirm; never fires with success for anything the broker
        did not confirm, and never waits longer than ``timeout``."""
        if not self.running or not self.connected:
            return fail(self.unavailable())
        if self.blocked:
            return fail(self.unavailable("blocks publishers"))
        if not outgoing:
            return succeed([])
        result: Deferred[list[str]] = Deferred()
        timer = self.reactor.callLater(self.timeout, self._confirm_timeout, result)
        result.addBoth(cancel_call, timer)
        targets = {msg.routing_key for msg in outgoing}
        if targets <= self._declared:
            self._publish_all(outgoing, result)
        else:
            declared = defer.ensureDeferred(self.ensure_declared(self.connection, targets))
            declared.addCallbacks(
                lambda _: self._publish_all(outgoing, result),
                lambda f: None if result.called else result.errback(unavailable(f)),
            )
        return result

    def _publish_all(self, outgoing: Sequence[Outgoing], result: Deferred) -> None:
        channel = self.publisher
        if result.called:  # timed out while declaring
            return
        if channel is None or not channel.is_open:
            result.errback(self.unavailable())
            return
        confirms = []
        for msg in outgoing:
            # mandatory: a queue someone deleted must fail the publish, not swallow it.
            try:
                confirm = channel.basic_publish(
                    msg.exchange, msg.routing_key, msg.payload, msg.properties, mandatory=True,
                )
            except Exception as e:  # channel closing under us
                confirm = fail(e)
            confirms.append(confirm)
        gathered = defer.DeferredList(confirms, consumeErrors=True)
        gathered.addCallback(self._confirmed, outgoing, result)

    def _confirmed(self, results: list[tuple[bool, Any]], outgoing: Sequence[Outgoing],
                   result: Deferred) -> None:
        returned = [msg.id for msg in outgoing if msg.id in self._returned]
        self._returned.difference_update(returned)
        if result.called:  # timed out already
            return
        for ok, value in results:
            if not ok:
                if isinstance(getattr(value, "value", None), pika_exceptions.NackError):
                    self._renew_publisher()
                result.errback(unavailable(value))
                return
        if returned:
            result.errback(QueueUnavailable(f"AMQP broker returned {len(returned)} message(s) "
                                            "as unroutable (queue deleted?)"))
            return
        result.callback([msg.id for msg in outgoing])

    def _confirm_timeout(self, result: Deferred) -> None:
        if not result.called:
            result.errback(self.unavailable(f"did not confirm within {self.timeout:g} s"))

    # -- other channels ------------------------------------------------------------------------

    async def with_channel(self, work: Callable[[TwistedChannel], Awaitable[Any]]) -> Any:
        """``work`` on a channel of its own, closed afterwards (which also requeues whatever a
        ``basic_get`` left unacked)."""
        conn = self.connection
        if conn is None or not self.connected:
            raise self.unavailable()
        channel = await conn.channel()
        try:
            return await work(channel)
        finally:
            if channel.is_open:
                channel.close()


class _Connection(TwistedProtocolConnection):
    """pika's connection fed at most :data:`FRAME_FEED` bytes at a time: pika trims its frame
    buffer by copying the rest after every frame, so a large read would cost its square."""

    def dataReceived(self, data: bytes) -> None:
        for start in range(0, len(data), FRAME_FEED):
            super().dataReceived(data[start:start + FRAME_FEED])


def unavailable(failure: Any) -> Exception:
    value = failure.value if isinstance(failure, Failure) else failure
    if isinstance(value, QueueUnavailable):
        return value
    if isinstance(value, pika_exceptions.NackError):
        return BrokerRefused("AMQP broker refused the message (basic.nack: a full queue "
                             "with x-overflow reject-publish, or a broker error)")
    return QueueUnavailable(f"AMQP: {type(value).__name__}: {value}")


def cancel_call(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def abort_transport(conn: TwistedProtocolConnection) -> None:
    if conn.transport is not None:
        conn.transport.abortConnection()


def _abort(conn: TwistedProtocolConnection, d: Deferred) -> None:
    abort_transport(conn)
    if not d.called:
        d.callback(None)
