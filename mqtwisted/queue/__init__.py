"""The queue interface shared by every backend (spool, amqp) and every user (smtp, delivery, cli).

Rules every backend keeps:

* ``publish`` fires only once every publication is durable (fsync'd or confirmed by the broker);
  a 250 after DATA is sent on that callback and on nothing earlier.
* A leased document leaves its queue only through ``settle``, which makes the outcome
  publications durable *first* and removes the lease second, so a crash between the two repeats
  a delivery but never loses one.
* Documents are MailerQ JSON (one per recipient).  A publication may carry its MIME as a shared
  :class:`Body` instead of a ``mime`` key so a message for a hundred recipients is stored once;
  every consumer still receives the complete JSON with ``mime`` filled in.
* The queue knows nothing of SMTP; it moves documents between named queues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from mqtwisted.envelope import Body

# Re-exported: the queue's users convert ``mime`` with them.
from mqtwisted.jsonvalues import mime_bytes as mime_bytes
from mqtwisted.jsonvalues import mime_text as mime_text

#: MailerQ's named queues (their default names).
QUEUE_NAMES: tuple[str, ...] = (
    "outbox", "inbox", "local", "refused", "dsn", "results", "success", "failure", "retry",
)

#: the queue types the RabbitMQ backend declares its queues with (``--amqp-queue-type``)
AMQP_QUEUE_TYPES: tuple[str, ...] = ("classic", "quorum")

Document = dict[str, Any]


@attrs.frozen
class Publication:
    """One document to be made durable on one named queue."""

    queue: str
    document: Document
    body: Body | None = None


@attrs.define(eq=False)
class Lease:
    """A document handed to a consumer; it stays in its queue until settled."""

    queue: str
    id: str
    document: Document
    token: Any = None


#: one lease and the publications that settle it
Settlement = tuple[Lease, Sequence[Publication]]


class QueueUnavailable(Exception):
    """The backend cannot store right now (broker down, disk full); callers answer 4xx."""


class Queue(Protocol):
    def start(self) -> Deferred[None]: ...

    def stop(self) -> Deferred[None]: ...

    def publish(self, publications: Sequence[Publication]) -> Deferred[list[str]]:
        """Make every publication durable; fires with one id per publication, in order."""

    def consume(self, queue: str, handler: Callable[[Lease], None], prefetch: int = 100) -> None:
        """Call ``handler`` for each document of ``queue`` that is due (``nextattempt`` <= now),
        with at most ``prefetch`` leases unsettled at once."""

    def settle(self, lease: Lease, publications: Sequence[Publication]) -> Deferred[list[str]]:
        """Make ``publications`` durable, then remove the leased document."""

    def settle_many(self, settlements: Sequence[Settlement]) -> Deferred[list[Exception | None]]:
        """:meth:`settle` for several leases at once (the recipients of one transaction, the
        outcomes of one reactor turn); fires with each one's error, or None where it settled."""

    def release(self, lease: Lease) -> None:
        """Give a lease back unsettled (shutdown): it is delivered again later."""

    def watch(self, queue: str, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever this process made documents of ``queue`` durable, so
        that a consumer in another process can be told (:meth:`poke`).  Backends whose
        consumers hear of new documents by themselves (amqp) never call it."""

    def poke(self, queue: str) -> None:
        """Another process published to ``queue``: look for due documents now, not at the next
        poll.  A no-op where the backend tells consumers by itself."""

    def stats(self) -> Deferred[dict[str, int]]: ...

    def list(self, queue: str, limit: int = 20) -> Deferred[list[tuple[str, Document]]]: ...

    def show(self, queue: str, id: str) -> Deferred[Document | None]: ...
