"""A consumer of the RabbitMQ backend and the leases it hands out: which deliveries are still
valid (their channel is the consumer's current, open one) and how settled ones are acked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection

from mqtwisted.queue import Lease
from mqtwisted.queue.amqp_wire import UnackedTags


@attrs.define(eq=False)
class Consumer:
    queue: str
    handler: Callable[[Lease], None]
    prefetch: int
    #: the connection this consumer was started on: at most one start per connection
    conn: TwistedProtocolConnection | None = None
    channel: TwistedChannel | None = None
    cancelled: bool = False
    retry: Any = None
    #: the current channel's deliveries not yet acked or rejected
    unacked: UnackedTags = attrs.Factory(UnackedTags)

    def cancel(self) -> None:
        self.cancelled = True
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        if self.channel is not None and self.channel.is_open:
            self.channel.close()


@attrs.define(eq=False)
class Delivery:
    """A lease's token: valid only while its channel is the consumer's current, open channel."""

    consumer: Consumer
    channel: TwistedChannel
    tag: int

    def valid(self) -> bool:
        consumer = self.consumer
        return not consumer.cancelled and consumer.channel is self.channel and self.channel.is_open


def ack_deliveries(deliveries: Sequence[Delivery]) -> None:
    """Ack valid ``deliveries``: one multiple ack per channel for those below every tag still
    unsettled on it, one each for the rest."""
    by_channel: dict[TwistedChannel, tuple[Consumer, list[int]]] = {}
    for delivery in deliveries:
        if delivery.valid():
            by_channel.setdefault(delivery.channel, (delivery.consumer, []))[1].append(delivery.tag)
    for channel, (consumer, tags) in by_channel.items():
        upto, singles = consumer.unacked.settle(tags)
        if upto:
            channel.basic_ack(upto, multiple=True)
        for tag in singles:
            channel.basic_ack(tag)
