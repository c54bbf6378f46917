"""What an AMQP message of the RabbitMQ backend looks like: MailerQ JSON as UTF-8, its id, and the
delay buckets it may wait in.  Pure functions, no I/O (:mod:`mqtwisted.queue.amqp` uses them).
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import heapq
import json
import math
import re
from collections.abc import Sequence

import pika

from mqtwisted.queue import Document

#: Delay buckets in seconds.  Dense at the low end (tests, short retries), MailerQ's retry
#: schedule (600, 1800, 3600, 7200) exactly, and coarse above; a delay is served greedily by the
#: largest bucket not longer than what remains, so a week costs a handful of hops at most.
DELAY_BUCKETS: tuple[int, ...] = (
    1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400,
)

_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_document(document: Document) -> bytes:
    """MailerQ JSON as UTF-8.  ``mime`` may hold surrogate-escaped 8-bit octets (see
    :func:`mime_text`); those, and only those, are written as ``\\udcXX`` escapes so the payload
    stays valid UTF-8 for every consumer and Python's json reads the octets back unchanged."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text).encode("utf-8")


def decode_document(payload: bytes) -> Document:
    """The inverse of :func:`encode_document`, lenient about raw 8-bit octets from other clients."""
    document = json.loads(payload.decode("utf-8", "surrogateescape"))
    if not isinstance(document, dict):
        raise ValueError("document is not a JSON object")
    return document


def delay_bucket(remaining: float) -> int:
    """The bucket to wait in for a document due in ``remaining`` seconds (rounded down, at
    least the smallest bucket)."""
    return DELAY_BUCKETS[max(0, bisect.bisect_right(DELAY_BUCKETS, remaining) - 1)]


def message_id(properties: pika.BasicProperties, body: bytes) -> str:
    # Documents from other clients may carry no message id: a digest of the bytes is stable
    # across redeliveries and listings, which is what ``show`` needs.
    return properties.message_id or "sha1-" + hashlib.sha1(body).hexdigest()[:20]


class RecentIds:
    """The last ``size`` message ids added, oldest forgotten first.  Digest ids (no message
    id) are never kept: equal bytes from an outside client are not the same document."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, id: str) -> None:
        if id.startswith("sha1-"):
            return
        self._ids[id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __contains__(self, id: object) -> bool:
        return id in self._ids


class UnackedTags:
    """The delivery tags of one channel not yet acked or rejected, so that the leases settled
    together go out as one ``multiple`` ack wherever no unsettled tag lies below them (a
    broker acks every outstanding tag up to the one named)."""

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._done: set[int] = set()

    def add(self, tag: int) -> None:
        heapq.heappush(self._heap, tag)

    def forget(self, tag: int) -> None:
        """``tag`` was settled some other way (a nack)."""
        self._done.add(tag)
        self._trim()

    def settle(self, tags: Sequence[int]) -> tuple[int, list[int]]:
        """Count ``tags`` settled.  Returns the highest tag a multiple ack may name (0: none)
        and the tags that need an ack each, because an unsettled one lies below them."""
        self._done.update(tags)
        self._trim()
        lowest = self._heap[0] if self._heap else math.inf
        upto = max((tag for tag in tags if tag < lowest), default=0)
        return upto, [tag for tag in tags if tag > lowest]

    def _trim(self) -> None:
        heap, done = self._heap, self._done
        while heap and heap[0] in done:
            done.discard(heapq.heappop(heap))
