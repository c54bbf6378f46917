"""An in-memory Queue (the Protocol of mqtwisted.queue) for delivery tests, on an injectable
clock so ``nextattempt`` is honoured under ``task.Clock``."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed

from mqtwisted.document import due_time
from mqtwisted.jsonvalues import mime_text
from mqtwisted.queue import Document, Lease, Publication


class MemoryQueue:
    def __init__(self, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.queues: dict[str, dict[str, Document]] = {}
        self._ids = itertools.count(1)
        self._consumers: dict[str, tuple[Callable[[Lease], None], int]] = {}
        self._leased: dict[str, set[str]] = {}
        self._timer: Any = None
        self.settled: list[tuple[Lease, list[Publication]]] = []

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._consumers.clear()
        return succeed(None)

    def _store(self, pubs: Sequence[Publication]) -> list[str]:
        ids = []
        for pub in pubs:
            doc = copy.deepcopy(pub.document)
            if pub.body is not None:
                doc["mime"] = mime_text(pub.body.read())
            i = str(next(self._ids))
            self.queues.setdefault(pub.queue, {})[i] = doc
            ids.append(i)
        return ids

    def publish(self, publications: Sequence[Publication]) -> Deferred[list[str]]:
        ids = self._store(publications)
        self._wake_all()
        return succeed(ids)

    def consume(self, queue: str, handler: Callable[[Lease], None], prefetch: int = 100) -> None:
        self._consumers[queue] = (handler, prefetch)
        self._leased.setdefault(queue, set())
        self._wake(queue)

    def _wake_all(self) -> None:
        for q in list(self._consumers):
            self._wake(q)

    def _wake(self, queue: str) -> None:
        if queue not in self._consumers:
            return
        handler, prefetch = self._consumers[queue]
        leased = self._leased[queue]
        now = self.clock.seconds()
        docs = self.queues.get(queue, {})
        for i, doc in list(docs.items()):
            if len(leased) >= prefetch:
                break
            if i in leased or i not in docs or due_time(doc) > now:
                continue
            leased.add(i)
            handler(Lease(queue, i, copy.deepcopy(doc), token=i))
        future = [due_time(d) for i, d in docs.items() if i not in leased and due_time(d) > now]
        if future:
            when = min(future)
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = self.clock.callLater(when - now, self._wake_all)

    def settle(self, lease: Lease, publications: Sequence[Publication]) -> Deferred[list[str]]:
        self.settled.append((lease, list(publications)))
        ids = self._store(publications)
        self.queues.get(lease.queue, {}).pop(lease.id, None)
        self._leased.get(lease.queue, set()).discard(lease.id)
        self._wake_all()
        return succeed(ids)

    def settle_many(self, settlements: Sequence[tuple[Lease, Sequence[Publication]]]) -> Deferred[list[Exception | None]]:
        for lease, publications in settlements:
            self.settle(lease, publications)
        return succeed([None] * len(settlements))

    def release(self, lease: Lease) -> None:
        self._leased.get(lease.queue, set()).discard(lease.id)

    def stats(self) -> Deferred[dict[str, int]]:
        return succeed({q: len(d) for q, d in self.queues.items() if d})

    def list(self, queue: str, limit: int = 20) -> Deferred[list[tuple[str, Document]]]:
        return succeed(list(self.queues.get(queue, {}).items())[:limit])

    def show(self, queue: str, id: str) -> Deferred[Document | None]:
        return succeed(self.queues.get(queue, {}).get(id))

    def docs(self, queue: str) -> list[Document]:
        return list(self.queues.get(queue, {}).values())
