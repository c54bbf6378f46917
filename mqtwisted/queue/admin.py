"""What an operator does to queued documents (the console and ``/v1/queues``): browse a queue
a page at a time with a search, and retry, delete, move or replace one document.

Two backends keep this protocol: :mod:`mqtwisted.queue.spool_admin` (SQL on the spool) and
:mod:`mqtwisted.queue.amqp_admin` (basic_get scans on RabbitMQ, which sees only the documents
that are ready: not those leased to a consumer, nor those waiting in a delay bucket).

A document being delivered right now may still be delivered once after it was deleted or
moved: the delivery holds its copy, as the queue's contract lets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from mqtwisted.queue import Document, Publication

#: the most documents an AMQP scan looks at (a browse page or a search for one id)
SCAN_LIMIT = 10000


@attrs.frozen
class Page:
    """One page of a queue: ``total`` documents match; ``documents`` are (id, JSON without mime)."""

    total: int
    documents: list[tuple[str, Document]]
    #: True when only part of the queue could be searched (AMQP scans at most SCAN_LIMIT)
    partial: bool = False


class QueueAdmin(Protocol):
    def browse(self, queue: str, offset: int, limit: int, search: str = "") -> Deferred[Page]:
        """Documents of ``queue`` in order, ``search`` matching recipient, sender or id."""

    def show(self, queue: str, id: str) -> Deferred[Document | None]: ...

    def replace(self, queue: str, id: str, publications: Sequence[Publication]) -> Deferred[list[str] | None]:
        """Make ``publications`` durable, then remove document ``id`` (none: delete it): the
        publications' ids, or None when ``id`` is not in ``queue``."""

    def retry(self, queue: str, id: str) -> Deferred[bool]:
        """Make document ``id`` due now; False when it is not there."""


def matches(id: str, document: Document, search: str) -> bool:
    """Whether ``search`` finds the document: its id, or a part of its recipient or sender."""
    if not search:
        return True
    needle = search.lower()
    return id == search or any(
        isinstance(v, str) and needle in v.lower() for v in (document.get("recipient"), document.get("envelope"))
    )


def summary(document: Any) -> Document:
    """A document without its mime (listings), with the mime's size instead."""
    out = {k: v for k, v in document.items() if k != "mime"}
    mime = document.get("mime")
    if isinstance(mime, str):
        out["mime-size"] = len(mime)
    return out
