"""The queue admin (:mod:`mqtwisted.queue.admin`) of a running queue backend."""

from __future__ import annotations

from mqtwisted.queue import Queue
from mqtwisted.queue.admin import QueueAdmin


def admin_for(queue: Queue) -> QueueAdmin:
    """The admin of a running queue backend."""
    from mqtwisted.queue.spool import SpoolQueue

    if isinstance(queue, SpoolQueue):
        from mqtwisted.queue.spool_admin import SpoolAdmin

        return SpoolAdmin(queue)
    from mqtwisted.queue.amqp_admin import AmqpAdmin

    return AmqpAdmin(queue)
