"""The RabbitMQ backend: MailerQ's named queues on a broker shared by several mqmta nodes.

Topology (every name optionally prefixed, so test runs and tenants don't see each other):

* one durable queue per named queue (``outbox``, ``inbox`` …) fed through the default exchange,
  so any AMQP client can publish plain MailerQ JSON to ``outbox`` or read ``results``;
* a durable headers exchange ``mq-delay`` and durable queues ``mq-delay-<seconds>`` with that queue
  TTL and dead-lettering to the default exchange.  A document whose ``nextattempt`` lies in the
  future is published to the exchange with its *target queue as routing key* and a header choosing
  the bucket; when the TTL expires the broker dead-letters it with its original routing key, i.e.
  straight back into the target queue.  Nothing polls.  Buckets are rounded *down*, so a document
  never comes back late by more than the smallest bucket; one that comes back early (or that an
  outside client published with a future ``nextattempt``) is simply delayed again by the consumer.

Queue types (``queue_type``).  ``classic`` queues live on one broker node and dead-letter *at
most once*: a broker dying as a bucket's TTL expires may lose that document.  ``quorum`` queues
(RabbitMQ 3.8+, these buckets 3.10+) are replicated over a cluster's nodes and the buckets
dead-letter *at least once* (``x-dead-letter-strategy``, with the ``x-overflow: reject-publish``
it requires).  A refused publish (``basic.nack``) fails with :class:`QueueUnavailable`: 451, or
a retry; never silently.

Repeated deliveries.  A lease whose outcome was confirmed but whose ack the broker never
processed (the connection or the broker node went between the two) comes back ``redelivered``;
the queue remembers the last :data:`SETTLED_MEMORY` ids it settled and acks such a redelivery
without handing it out.  The memory is the node's own: a redelivery that goes to another node
is delivered again (at least once, never lost); README.rst, "Running on a RabbitMQ cluster".

Durability: messages are persistent and every publication (documents, outcomes, delays) waits
for its publisher confirm; ``publish`` fires only when the broker confirmed all of them, else
errbacks with :class:`QueueUnavailable`.  ``settle`` acks the lease only after its outcomes.

Connection: one TCP connection per node (to the next broker of the URL's list after a loss),
a confirm-mode publishing channel and one channel per consumer (``basic_qos`` each).  When the
connection is lost, pending publications fail, every unacked lease is void (the broker
redelivers it, perhaps to another node), and the queue reconnects with backoff and restarts its
consumers.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pika
from pika import exceptions as pika_exceptions
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwisted.document import Document as MailerQDocument
from mqtwisted.document import due_time
from mqtwisted.jsonvalues import mime_text
from mqtwisted.queue import (
    AMQP_QUEUE_TYPES,
    QUEUE_NAMES,
    Document,
    Lease,
    Publication,
    QueueUnavailable,
    Settlement,
    amqp_inspect,
)
from mqtwisted.queue.amqp_leases import Consumer, Delivery, ack_deliveries
from mqtwisted.queue.amqp_link import AmqpLink, BrokerRefused, Outgoing
from mqtwisted.queue.amqp_wire import (
    DELAY_BUCKETS,
    RecentIds,
    UnackedTags,
    decode_document,
    delay_bucket,
    encode_document,
    message_id,
)

log = Logger()

#: Queues whose documents are published into a delay bucket when ``nextattempt`` lies ahead
#: (besides any queue this process consumes): the ones an MTA processes.  Result queues
#: (``results``, ``retry`` …) are records for outside consumers; a ``retry`` copy carries the
#: message's future ``nextattempt`` and must still be visible at once.  A consumer of this class
#: hands out only due documents whatever the queue (the Queue contract).
DEFAULT_DELAYED: tuple[str, ...] = ("outbox", "inbox", "local", "dsn")

#: seconds between two publications of an outcome the broker refused (see ``settle``)
SETTLE_PAUSE = 0.5

#: ids of settled leases remembered to recognize their redelivery (a few MB at most)
SETTLED_MEMORY = 100_000

# Not "x-…": the headers exchange ignores x- headers when matching.
_DELAY_HEADER = "mq-delay"
_PERSISTENT = 2


class AmqpQueue:
    """The Queue interface on RabbitMQ (see :mod:`mqtwisted.queue` for the contract).

    :param url: ``amqp://user:pass@host:port/vhost`` (``amqps://`` for TLS; pika's URL query
        options such as ``heartbeat`` apply).
    :param prefetch: unsettled leases per consumer when ``consume`` is not given one.
    :param prefix: prepended to every queue and exchange name.
    :param timeout: seconds to wait for a connection or for publisher confirms before failing
        with :class:`QueueUnavailable`.
    :param max_backoff: longest pause between reconnection attempts.
    :param delayed: queues whose documents are published into a delay bucket when their
        ``nextattempt`` lies ahead (see :data:`DEFAULT_DELAYED`).
    :param queue_type: ``classic`` or ``quorum``: the type of every queue it declares.
    """

    def __init__(
        self,
        url: str,
        prefetch: int = 100,
        reactor: Any = None,
        *,
        prefix: str = "",
        timeout: float = 10.0,
        max_backoff: float = 30.0,
        delayed: Sequence[str] = DEFAULT_DELAYED,
        queue_type: str = "classic",
    ) -> None:
        if queue_type not in AMQP_QUEUE_TYPES:
            raise ValueError(f"AMQP queue type must be one of {', '.join(AMQP_QUEUE_TYPES)}, "
                             f"got {queue_type!r}")
        self.url = url
        self.queue_type = queue_type
        self.prefetch = max(1, prefetch)
        self.prefix = prefix
        self.delayed = frozenset(delayed)
        self._buckets = {self.bucket_name(s): s for s in DELAY_BUCKETS}
        self.link = AmqpLink(url, reactor, timeout=timeout, max_backoff=max_backoff,
                             topology=self._declare, on_ready=self._connected, on_lost=self._lost,
                             arguments=self._arguments)
        self._consumers: dict[str, Consumer] = {}
        #: message ids whose outcome was made durable
        self._settled = RecentIds(SETTLED_MEMORY)
        self._pausing: set[Deferred] = set()  # settles waiting to publish a refused outcome again
        #: redeliveries acked without a second delivery (their outcome was already durable)
        self.repeats_skipped = 0
        # Message ids: random per queue object, then counted (32 hex digits like a uuid4's):
        # unique as well, and without a getrandom call per published message.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count()

    # TAP files pickle the service tree: keep only configuration.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url, "prefetch": self.prefetch, "prefix": self.prefix,
            "timeout": self.timeout, "max_backoff": self.max_backoff,
            "delayed": sorted(self.delayed), "queue_type": self.queue_type,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"], state["prefetch"], prefix=state["prefix"], timeout=state["timeout"],
            max_backoff=state["max_backoff"], delayed=state["delayed"],
            queue_type=state.get("queue_type", "classic"),
        )

    @property
    def reactor(self) -> Any:
        return self.link.reactor

    @property
    def timeout(self) -> float:
        return self.link.timeout

    @property
    def max_backoff(self) -> float:
        return self.link.max_backoff

    @property
    def connected(self) -> bool:
        return self.link.connected

    def name(self, queue: str) -> str:
        """The broker's name for one of our queues."""
        return self.prefix + queue

    @property
    def _delay_exchange(self) -> str:
        return f"{self.prefix}mq-delay"

    def bucket_name(self, seconds: int) -> str:
        return f"{self._delay_exchange}-{seconds}"

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect.  Fires once connected, or after ``timeout`` seconds without a broker (logged;
        the queue keeps trying in the background and publishes fail until it succeeds): a node
        must come up, and answer 451, while the broker is down."""
        if self.link.running:
            return succeed(None)
        self.link.start()
        return self.wait_connected(self.timeout).addErrback(self._start_timed_out)

    def _start_timed_out(self, failure: Failure) -> None:
        failure.trap(QueueUnavailable)
        log.warn("AMQP broker {url} not reachable yet; retrying in the background",
                 url=self.link.safe_url())

    def wait_connected(self, timeout: float | None = None) -> Deferred[None]:
        """Fires when the queue is connected (at once if it is); errbacks with
        :class:`QueueUnavailable` after ``timeout`` seconds."""
        return self.link.wait_connected(timeout)

    def stop(self) -> Deferred[None]:
        """Disconnect.  Unsettled leases go back to the broker, which redelivers them."""
        if not self.link.running:
            return succeed(None)
        for consumer in self._consumers.values():
            consumer.cancel()
        self._consumers.clear()
        for pause in list(self._pausing):
            pause.cancel()
        return self.link.stop()

    def _arguments(self, name: str) -> dict[str, Any]:
        """The arguments every queue of ours is declared with (see the module's docstring)."""
        arguments: dict[str, Any] = {}
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        seconds = self._buckets.get(name)
        if seconds is not None:
            arguments["x-message-ttl"] = seconds * 1000
            # The default exchange, and no dead-letter routing key: back into its target queue.
            arguments["x-dead-letter-exchange"] = ""
            if self.queue_type == "quorum":
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        return arguments

    async def _declare(self, conn: TwistedProtocolConnection) -> None:
        """The topology, declared on every connection (idempotent; the broker may be new)."""
        await self.link.ensure_declared(conn, [self.name(q) for q in QUEUE_NAMES])
        await self.link.ensure_declared(conn, list(self._buckets))
        channel = await conn.channel()
        exchange = self._delay_exchange
        await channel.exchange_declare(exchange, exchange_type="headers", durable=True)
        for bucket, seconds in self._buckets.items():
            await channel.queue_bind(bucket, exchange, arguments={
                "x-match": "all", _DELAY_HEADER: seconds,
            })
        channel.close()

    def _connected(self, conn: TwistedProtocolConnection) -> None:
        for consumer in list(self._consumers.values()):
            self._start_consumer(consumer)

    def _lost(self) -> None:
        # Every lease of the lost connection is void; the consumers start again on the next.
        for consumer in self._consumers.values():
            consumer.channel = None
            consumer.conn = None

    # -- publishing ----------------------------------------------------------------------------

    def _prepare(self, publications: Sequence[Publication]) -> list[Outgoing]:
        """Encode on the caller's turn; a body shared by several documents is read and
        converted once but inlined into each (an AMQP consumer needs the whole JSON)."""
        mimes: dict[int, str] = {}
        # An outcome goes to several result queues as one document object: encoded once.
        encoded: dict[tuple[int, int], tuple[bytes, float]] = {}
        now = time.time()
        out = []
        for pub in publications:
            known = encoded.get((id(pub.document), id(pub.body)))
            if known is None:
                doc = pub.document
                if pub.body is not None:
                    mime = mimes.get(id(pub.body))
                    if mime is None:
                        mime = mimes[id(pub.body)] = mime_text(pub.body.read())
                    copy = MailerQDocument.of(doc).copy()
                    copy.mime = mime
                    doc = copy.json
                known = encoded[id(pub.document), id(pub.body)] = encode_document(doc), due_time(doc)
            payload, due = known
            out.append(self._outgoing(pub.queue, payload, due - now))
        return out

    def _outgoing(self, queue: str, payload: bytes, remaining: float,
                  headers: dict[str, Any] | None = None) -> Outgoing:
        message_id = f"{self._id_prefix}{next(self._ids):016x}"
        headers = dict(headers or {})
        exchange = ""
        # Publish-side delay is where it is cheap and expected; a document that arrives early
        # anyway (another node's queue names, an outside client) is delayed by the consumer.
        if remaining > 0 and (queue in self.delayed or queue in self._consumers):
            exchange = self._delay_exchange
            headers[_DELAY_HEADER] = delay_bucket(remaining)
        else:
            headers.pop(_DELAY_HEADER, None)
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=_PERSISTENT,
            message_id=message_id,
            headers=headers or None,
        )
        return Outgoing(exchange, self.name(queue), payload, properties, message_id)

    def publish(self, publications: Sequence[Publication]) -> Deferred[list[str]]:
        try:
            outgoing = self._prepare(publications)
        except Exception as e:
            return fail(e)
        return self.link.send(outgoing)

    # -- consuming -----------------------------------------------------------------------------

    def consume(self, queue: str, handler: Callable[[Lease], None],
                prefetch: int | None = None) -> None:
        """Lease documents of ``queue`` to ``handler`` (see the Queue protocol).  ``prefetch``
        defaults to the constructor's.  Runs across reconnections by itself."""
        old = self._consumers.pop(queue, None)
        if old is not None:
            old.cancel()
        consumer = Consumer(queue, handler, max(1, prefetch or self.prefetch))
        self._consumers[queue] = consumer
        if self.connected:
            self._start_consumer(consumer)

    def _start_consumer(self, consumer: Consumer) -> None:
        conn = self.link.connection
        if conn is None or consumer.conn is conn or consumer.cancelled:
            return
        consumer.conn = conn
        d = defer.ensureDeferred(self._run_consumer(consumer, conn))
        d.addErrback(self._consumer_failed, consumer, conn)

    async def _run_consumer(self, consumer: Consumer, conn: TwistedProtocolConnection) -> None:
        channel = await conn.channel()
        if consumer.cancelled or consumer.conn is not conn:
            channel.close()
            return
        consumer.channel = channel
        consumer.unacked = UnackedTags()
        channel.on_closed.addBoth(self._consumer_channel_closed, consumer, channel, conn)
        await self.link.ensure_declared(conn, [self.name(consumer.queue)])
        await channel.basic_qos(prefetch_count=consumer.prefetch)
        messages, _tag = await channel.basic_consume(self.name(consumer.queue))
        while True:
            message = await messages.get()
            if consumer.cancelled or consumer.channel is not channel:
                return  # the channel is closing; the broker requeues what it had sent
            self._deliver(consumer, channel, message)

    def _consumer_channel_closed(self, reason: Any, consumer: Consumer,
                                 channel: TwistedChannel, conn: TwistedProtocolConnection) -> None:
        # Closed by the broker under a live connection (e.g. a lease held past RabbitMQ's
        # consumer_timeout): that channel's leases are void, the other consumers' are not, so
        # only this consumer starts again.
        if consumer.channel is channel:
            consumer.channel = None
            if consumer.cancelled or self.link.connection is not conn or not conn.is_open:
                return
            log.warn("AMQP {queue} consumer channel closed ({why}); restarting",
                     queue=consumer.queue, why=reason)
            if consumer.retry is None or not consumer.retry.active():
                consumer.retry = self.reactor.callLater(1.0, self._restart_consumer, consumer)

    def _consumer_failed(self, failure: Failure, consumer: Consumer,
                         conn: TwistedProtocolConnection) -> None:
        if consumer.cancelled or not self.link.running:
            return
        if self.link.connection is not conn or not conn.is_open:
            return  # connection lost: the reconnection restarts every consumer
        if failure.check(pika_exceptions.ConsumerCancelled):
            # Cancelled by the broker (queue deleted, node failover): declare and try again.
            log.warn("AMQP consumer for {queue} cancelled by the broker; restarting",
                     queue=consumer.queue)
        elif failure.check(pika_exceptions.ChannelClosed):
            return  # restarted by _consumer_channel_closed
        else:
            log.failure("AMQP consumer for {queue} failed", failure, queue=consumer.queue)
        if consumer.retry is None or not consumer.retry.active():
            consumer.retry = self.reactor.callLater(1.0, self._restart_consumer, consumer)

    def _restart_consumer(self, consumer: Consumer) -> None:
        consumer.retry = None
        if self._consumers.get(consumer.queue) is consumer and self.connected:
            if consumer.channel is not None and consumer.channel.is_open:
                consumer.channel.close()
            consumer.channel = None
            consumer.conn = None
            self._start_consumer(consumer)

    def _deliver(self, consumer: Consumer, channel: TwistedChannel, message: Any) -> None:
        tag = message.method.delivery_tag
        try:
            document = decode_document(message.body)
        except ValueError as e:
            # Not MailerQ JSON: no handler can do anything with it, and requeueing would spin.
            # Rejected without requeue it is dropped, or dead-lettered where the operator set
            # a dead-letter exchange on the queue.
            log.error("AMQP {queue}: rejecting a message that is not a JSON object: {why}",
                      queue=consumer.queue, why=e)
            channel.basic_reject(tag, requeue=False)
            return
        properties = message.properties
        if message.method.redelivered and properties.message_id in self._settled:
            self.repeats_skipped += 1  # its outcome is stored already; only the ack was lost
            log.info("AMQP {queue}: {id} redelivered after its outcome was stored; acked "
                     "without delivering it again", queue=consumer.queue, id=properties.message_id)
            channel.basic_ack(tag)
            return
        consumer.unacked.add(tag)
        remaining = due_time(document) - time.time()
        if remaining > 0:
            self._redelay(consumer, channel, tag, message, remaining)
            return
        lease = Lease(consumer.queue, message_id(properties, message.body), document,
                      token=Delivery(consumer, channel, tag))
        try:
            consumer.handler(lease)
        except Exception:
            log.failure("queue consumer for {queue} raised", queue=consumer.queue)

    def _redelay(self, consumer: Consumer, channel: TwistedChannel, tag: int, message: Any,
                 remaining: float) -> None:
        # The same bytes and id go back into a delay bucket; the original is acked only once
        # the broker confirmed the copy.
        headers = dict(message.properties.headers or {})
        msg = self._outgoing(consumer.queue, message.body, remaining, headers)
        msg = attrs.evolve(msg, id=message_id(message.properties, message.body))
        msg.properties.message_id = msg.id
        delivery = Delivery(consumer, channel, tag)

        def confirmed(_: Any) -> None:
            ack_deliveries([delivery])

        def failed(failure: Failure) -> None:
            log.warn("AMQP {queue}: could not delay a document ({why}); retrying later",
                     queue=consumer.queue, why=failure.getErrorMessage())
            # Back to the queue after a pause, so an unreachable delay path does not spin.
            self.reactor.callLater(1.0, self._nack, delivery)

        self.link.send([msg]).addCallbacks(confirmed, failed)

    def _nack(self, delivery: Delivery) -> None:
        if delivery.valid():
            delivery.consumer.unacked.forget(delivery.tag)
            delivery.channel.basic_nack(delivery.tag, requeue=True)

    def settle(self, lease: Lease, publications: Sequence[Publication]) -> Deferred[list[str]]:
        """Publish ``publications`` with confirms, then ack the lease.  A lease whose channel was
        lost is void (the broker redelivers its document): that errbacks with
        :class:`QueueUnavailable` without publishing anything.

        Refused outcomes (``basic.nack``: a quorum queue between leaders, a full queue) are sent
        again every :data:`SETTLE_PAUSE` s, up to ``timeout``, while the lease holds."""
        try:
            delivery = self._holding(lease)
            outgoing = self._prepare(publications)
        except Exception as e:
            return fail(e)
        return self._settle_prepared(lease, delivery, outgoing)

    def _holding(self, lease: Lease) -> Delivery:
        delivery = lease.token
        if not isinstance(delivery, Delivery) or not delivery.valid():
            raise QueueUnavailable(
                f"lease {lease.id} on {lease.queue} is void (channel lost); it will be redelivered")
        return delivery

    def _stored(self, lease: Lease, delivery: Delivery) -> None:
        """The broker confirmed ``lease``'s outcomes: its ack may go (when it still can)."""
        self._settled.add(lease.id)
        if not delivery.valid():
            raise QueueUnavailable(
                f"lease {lease.id} on {lease.queue} lost before its ack; outcome stored, "
                "the document will be delivered again")

    def _settle_prepared(self, lease: Lease, delivery: Delivery,
                         outgoing: list[Outgoing]) -> Deferred[list[str]]:
        deadline = self.reactor.seconds() + self.timeout

        def acknowledge(ids: list[str]) -> list[str]:
            self._stored(lease, delivery)
            ack_deliveries([delivery])
            return ids

        def refused(failure: Failure) -> Any:
            failure.trap(BrokerRefused)
            if not delivery.valid() or self.reactor.seconds() + SETTLE_PAUSE > deadline:
                return failure
            again = deferLater(self.reactor, SETTLE_PAUSE, self.link.send, outgoing)
            self._pausing.add(again)  # cancelled by stop()
            again.addBoth(lambda result: self._pausing.discard(again) or result)
            return again.addErrback(refused)

        return self.link.send(outgoing).addErrback(refused).addCallback(acknowledge)

    def settle_many(self, settlements: Sequence[Settlement]) -> Deferred[list[Exception | None]]:
        """The outcomes of every valid lease go out together, with one wait for all their
        confirms, then each lease is acked: a lease's ack still follows its outcomes' confirms.
        A void lease fails alone.  Should anything of the batch fail (refused, returned as
        unroutable, timed out, connection lost), each lease then settles on its own as
        ``settle`` does, so that one bad outcome fails only its lease: outcomes the broker had
        confirmed are published again, repeated but never lost."""
        errors: list[Exception | None] = [None] * len(settlements)
        held: list[tuple[int, Lease, Delivery, list[Outgoing]]] = []
        outgoing: list[Outgoing] = []
        for i, (lease, publications) in enumerate(settlements):
            try:
                delivery = self._holding(lease)
                prepared = self._prepare(publications)
            except Exception as e:
                errors[i] = e
                continue
            held.append((i, lease, delivery, prepared))
            outgoing += prepared

        def acknowledge(_: list[str]) -> list[Exception | None]:
            for i, lease, delivery, _prepared in held:
                try:
                    self._stored(lease, delivery)
                except QueueUnavailable as e:
                    errors[i] = e
            ack_deliveries([delivery for _i, _lease, delivery, _prepared in held])
            return errors

        def one_at_a_time(_: Failure) -> Deferred[list[Exception | None]]:
            alone = [self._settle_prepared(lease, delivery, prepared)
                     for _i, lease, delivery, prepared in held]
            return DeferredList(alone, consumeErrors=True).addCallback(one_by_one)

        def one_by_one(results: list[tuple[bool, Any]]) -> list[Exception | None]:
            for (i, *_rest), (ok, value) in zip(held, results, strict=True):
                errors[i] = None if ok else value.value
            return errors

        if not held:
            return succeed(errors)
        return self.link.send(outgoing).addCallbacks(acknowledge, one_at_a_time)

    # The broker pushes new documents to every consumer, in whatever process it runs.
    def watch(self, queue: str, callback: Callable[[], None]) -> None:
        pass

    def poke(self, queue: str) -> None:
        pass

    def release(self, lease: Lease) -> None:
        delivery = lease.token
        if isinstance(delivery, Delivery):
            self._nack(delivery)

    # -- inspection (mqtwisted.queue.amqp_inspect) ----------------------------------------------

    def stats(self) -> Deferred[dict[str, int]]:
        """Ready messages per named queue, plus ``mq-delay``: documents waiting for their
        ``nextattempt``.  Leased (unacked) documents are not counted."""
        return amqp_inspect.stats(self)

    def list(self, queue: str, limit: int = 20) -> Deferred[list[tuple[str, Document]]]:
        """The first ``limit`` ready documents (leased or delayed ones are not seen)."""
        return amqp_inspect.peek(self, queue, limit)

    def show(self, queue: str, id: str, scan: int = 10000) -> Deferred[Document | None]:
        """The document ``id`` if it is among the first ``scan`` ready ones of ``queue``."""
        return amqp_inspect.find(self, queue, id, scan)
