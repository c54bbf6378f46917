"""Looking into the RabbitMQ backend's queues without consuming: counts (passive declares) and
the first ready documents (``basic_get``, then all given back with one multiple nack)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pika import exceptions as pika_exceptions
from pika.adapters.twisted_connection import TwistedChannel
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mqtwisted.queue import QUEUE_NAMES, Document
from mqtwisted.queue.amqp_link import unavailable
from mqtwisted.queue.amqp_wire import DELAY_BUCKETS, decode_document, message_id

if TYPE_CHECKING:
    from mqtwisted.queue.amqp import AmqpQueue


def stats(queue: AmqpQueue) -> Deferred[dict[str, int]]:
    """Ready messages per named queue, plus ``mq-delay`` (all delay buckets together)."""

    async def count(channel: TwistedChannel) -> dict[str, int]:
        counts = {}
        for name in QUEUE_NAMES:
            frame = await channel.queue_declare(queue.name(name), passive=True)
            counts[name] = frame.method.message_count
        delayed = 0
        for seconds in DELAY_BUCKETS:
            frame = await channel.queue_declare(queue.bucket_name(seconds), passive=True)
            delayed += frame.method.message_count
        counts["mq-delay"] = delayed
        return counts

    return on_channel(queue, count)


def peek(queue: AmqpQueue, name: str, limit: int) -> Deferred[list[tuple[str, Document]]]:
    """The first ``limit`` ready documents of ``name``, left in place."""

    async def collect(channel: TwistedChannel) -> list[tuple[str, Document]]:
        found: list[tuple[str, Document]] = []
        await scan(queue, channel, name, limit, lambda i, doc, _tag: found.append((i, doc)))
        return found

    return on_channel(queue, collect)


def find(queue: AmqpQueue, name: str, id: str, scan_limit: int) -> Deferred[Document | None]:
    """The document ``id`` if it is among the first ``scan_limit`` ready ones of ``name``."""

    async def search(channel: TwistedChannel) -> Document | None:
        hit = await seek(queue, channel, name, id, scan_limit)
        return None if hit is None else hit[1]

    return on_channel(queue, search)


async def seek(queue: AmqpQueue, channel: TwistedChannel, name: str, id: str, limit: int,
               keep: bool = False) -> tuple[int, Document] | None:
    """The delivery tag and document of message ``id`` if it is among the first ``limit`` ready
    ones of ``name``; with ``keep`` it stays unsettled on ``channel`` (see :func:`scan`)."""
    found: list[Document] = []

    def visit(message_id: str, document: Document, _tag: int) -> bool:
        if message_id == id:
            found.append(document)
        return bool(found)

    tag = await scan(queue, channel, name, limit, visit, keep=keep)
    return None if tag is None else (tag, found[0])


async def scan(queue: AmqpQueue, channel: TwistedChannel, name: str, limit: int,
               visit: Callable[[str, Document, int], bool], keep: bool = False) -> int | None:
    """basic_get up to ``limit`` messages of ``name``, hand each to ``visit`` (id, document,
    delivery tag; true to stop), then give them back with one multiple nack.  Returns the tag
    ``visit`` stopped at; with ``keep`` that one stays unsettled on ``channel``."""
    last = found = None
    try:
        for _ in range(limit):
            try:
                message = await channel.basic_get(queue.name(name))
            except pika_exceptions.ChannelClosedByBroker as e:
                if e.reply_code == 404:  # no such queue: nothing in it
                    break
                raise
            if message is None:
                break
            tag = message.method.delivery_tag
            try:
                document = decode_document(message.body)
            except ValueError:
                document = {"invalid": message.body.decode("utf-8", "replace")}
            if visit(message_id(message.properties, message.body), document, tag):
                found = tag
                break
            last = tag
    finally:
        if found is not None and not keep:
            last = found
        if last is not None and channel.is_open:
            channel.basic_nack(last, multiple=True, requeue=True)
    return found


def on_channel(queue: AmqpQueue, work: Callable[[TwistedChannel], Any]) -> Deferred:
    """``work`` on a channel of its own; failures as :class:`QueueUnavailable`."""
    d = defer.ensureDeferred(queue.link.with_channel(work))
    return d.addErrback(lambda f: Failure(unavailable(f)))
