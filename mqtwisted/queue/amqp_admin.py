"""The queue admin (:mod:`mqtwisted.queue.admin`) on RabbitMQ.

A queue on the broker is a FIFO, not a table: browsing takes messages with ``basic_get`` and gives
them all back with one ``basic_nack`` (their order stays; their redelivered flag is set), and a
document is removed by acking its message after the replacement was confirmed.  Only ready
messages are seen, the first :data:`~mqtwisted.queue.admin.SCAN_LIMIT` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from mqtwisted.queue import Document, Publication, amqp_inspect
from mqtwisted.queue.admin import SCAN_LIMIT, Page, matches, summary
from mqtwisted.queue.amqp import AmqpQueue


class AmqpAdmin:
    def __init__(self, queue: AmqpQueue) -> None:
        self.queue = queue

    def _work(self, work: Callable[[Any], Any]) -> Deferred:
        return amqp_inspect.on_channel(self.queue, work)

    def browse(self, queue: str, offset: int, limit: int, search: str = "") -> Deferred[Page]:
        async def work(channel: Any) -> Page:
            hits: list[tuple[str, Document]] = []
            seen = [0]

            def visit(id: str, document: Document, tag: int) -> bool:
                seen[0] += 1
                if matches(id, document, search):
                    hits.append((id, summary(document)))
                return False

            await amqp_inspect.scan(self.queue, channel, queue, SCAN_LIMIT, visit)
            return Page(len(hits), hits[offset:offset + limit], partial=seen[0] >= SCAN_LIMIT)

        return self._work(work)

    def show(self, queue: str, id: str) -> Deferred[Document | None]:
        return self.queue.show(queue, id, scan=SCAN_LIMIT)

    def replace(self, queue: str, id: str, publications: Sequence[Publication]) -> Deferred[list[str] | None]:
        async def work(channel: Any) -> list[str] | None:
            hit = await amqp_inspect.seek(self.queue, channel, queue, id, SCAN_LIMIT, keep=True)
            if hit is None:
                return None
            tag = hit[0]
            try:
                ids = await self.queue.publish(publications) if publications else []
            except BaseException:
                channel.basic_nack(tag, requeue=True)
                raise
            channel.basic_ack(tag)
            return ids

        return self._work(work)

    def retry(self, queue: str, id: str) -> Deferred[bool]:
        # A ready document is due already, unless an outside client gave it a nextattempt ahead:
        # it is published again without one.
        async def work(channel: Any) -> bool:
            hit = await amqp_inspect.seek(self.queue, channel, queue, id, SCAN_LIMIT, keep=True)
            if hit is None:
                return False
            tag, document = hit[0], dict(hit[1])
            if document.pop("nextattempt", None) is None:
                channel.basic_nack(tag, requeue=True)
                return True
            try:
                await self.queue.publish([Publication(queue, document)])
            except BaseException:
                channel.basic_nack(tag, requeue=True)
                raise
            channel.basic_ack(tag)
            return True

        return self._work(work)

    def consumers(self, queue: str) -> Deferred[int]:
        """Consumers of ``queue`` on the broker: the nodes delivering from it."""
        async def work(channel: Any) -> int:
            frame = await channel.queue_declare(self.queue.name(queue), passive=True)
            return int(frame.method.consumer_count)

        return self._work(work)
