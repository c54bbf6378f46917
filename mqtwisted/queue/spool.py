"""The embedded queue: every named queue in one SQLite database in WAL mode, on one machine.

Why SQLite: one file, crash-safe commits with ``synchronous=FULL``, and concurrent readers for the
CLI while the MTA writes.  All database work happens on one thread of the spool's own, which drains
every job waiting for it and commits them together (group commit): ten sessions ending DATA at the
same moment cost one fsync, not ten.  When the last batch carried more than one job, the thread
waits ``COMMIT_DELAY`` before taking the next, so that more jobs share it (PostgreSQL's
``commit_delay``/``commit_siblings``).  Under concurrent load that means fewer, larger transactions
and far fewer GIL hand-overs between this thread and the reactor's (each SQLite call releases the
GIL): in the inbound benchmark the spool thread's CPU halved, the reactor thread's fell by a
quarter, and so did the run's time.  A lone session never waits.  When a job raises, the batch
is rolled back and each job is run again alone, so one bad job fails alone.

Several processes may share the spool (the SMTP process and its delivery worker, ``mqmta inject``):
only writes take SQLite's write lock (a batch of reads runs in a plain snapshot), a busy lock is
waited for in 0.1–1 ms steps rather than SQLite's 1, 2, 5, 10 ms ones, and a worker may hold its
settles for a moment (``settle_delay``) so that one transaction carries many of them.

A message's body is stored once (table ``bodies``) and every recipient's document points at it;
readers get the complete MailerQ JSON with ``mime`` filled in.  A body delivered as a file (a large
message the server spilled to disk while streaming) is copied into the database through an
incremental blob, so it never has to fit in memory.

Leases live in memory only: after a crash every document is simply due again, which repeats
deliveries that were in flight and loses none.
"""

from __future__ import annotations

import json
import os
import queue as threadqueue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from mqtwisted.document import Document as MailerQDocument
from mqtwisted.document import due_time
from mqtwisted.jsonvalues import mime_text
from mqtwisted.queue import Document, Lease, Publication, QueueUnavailable, Settlement
from mqtwisted.queue.spool_tables import (
    SCHEMA,
    Row,
    collect_body,
    delete_row,
    insert_rows,
    load_body,
    read_document,
    read_documents,
    read_stats,
    settle_one,
    with_mime,
)
from mqtwisted.reactors import LazyReactor

log = Logger()


POLL_INTERVAL = 1.0
#: seconds a transaction waits for another process's (a delivery worker's, ``mqmta inject``)
BUSY_TIMEOUT = 5.0
#: seconds the spool thread lets jobs gather after a batch of several (see the module doc)
COMMIT_DELAY = 0.0005
#: bytes per database page of a new spool.  A body is written page by page, twice (into the WAL,
#: then by the checkpoint into the database), two write calls per page in the WAL: a 100 kB
#: message cost 100 write calls with 4 KiB pages.  With 16 KiB pages the spool thread's CPU per
#: 100 kB message fell by a third; for 2 kB messages no difference could be measured.
PAGE_SIZE = 16384
_STOP = object()



@attrs.define(eq=False)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    deferred: Deferred
    #: reads only: a batch of such jobs does not take the write lock another process may need
    reads: bool = False


@attrs.define(eq=False)
class _Consumer:
    queue: str
    handler: Callable[[Lease], None]
    prefetch: int
    leased: set[int] = attrs.field(factory=set)
    fetching: bool = False
    again: bool = False
    timer: Any = None


class SpoolQueue:
    """The Queue interface on SQLite (see :mod:`mqtwisted.queue` for the contract)."""

    def __init__(self, path: str, reactor: Any = None, settle_delay: float = 0.0) -> None:
        self.path = path
        #: seconds a settle waits to be committed with the settles that follow it.  Settles are
        #: not what a client waits for; a delivery worker that shares the spool with the SMTP
        #: process batches them so that its transactions rarely hold the write lock the SMTP
        #: process needs for the commit before each 250 (a crash in between repeats deliveries).
        self.settle_delay = settle_delay
        self._held: list[_Job] = []
        self._held_timer: Any = None
        self._reactor = reactor
        self._jobs: threadqueue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._consumers: dict[str, _Consumer] = {}
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._running = False

    # TAP files pickle the service tree: keep only configuration.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "settle_delay": self.settle_delay}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], settle_delay=state.get("settle_delay", 0.0))  # type: ignore[misc]

    reactor = LazyReactor()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        if self._running:
            return succeed(None)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._jobs = threadqueue.SimpleQueue()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="mqmta-spool", daemon=True)
        self._thread.start()
        return self._submit(lambda db: None)

    def stop(self) -> Deferred[None]:
        if not self._running:
            return succeed(None)
        self._running = False
        self._release_held()
        for consumer in self._consumers.values():
            if consumer.timer is not None and consumer.timer.active():
                consumer.timer.cancel()
        self._consumers.clear()
        done: Deferred[None] = Deferred()
        assert self._jobs is not None
        self._jobs.put(_Job(lambda db: _STOP, done))
        return done

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Only a new database takes it (WAL mode keeps an existing file's page size).
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: in WAL mode NORMAL does not fsync on commit, and a 250 promises durability.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=OFF")
        db.executescript(SCHEMA)
        # From here on a busy database is waited for by _begin, in steps of 0.1 ms: SQLite's own
        # handler sleeps 1, 2, 5, 10 ms..., and with a delivery worker writing the same spool
        # those sleeps landed on every message waiting for its commit (1.7 s of waiting in a
        # 5000-message run).
        db.execute("PRAGMA busy_timeout=0")
        return db

    def _run(self) -> None:
        assert self._jobs is not None
        try:
            db = self._open()
        except Exception as e:
            failure = QueueUnavailable(f"cannot open spool {self.path!r}: {e}")
            while True:
                for job in _jobs_in([self._jobs.get()]):
                    self.reactor.callFromThread(job.deferred.errback, failure)
        stopping: _Job | None = None
        siblings = False
        while stopping is None:
            batch = [self._jobs.get()]
            if siblings:
                time.sleep(COMMIT_DELAY)
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except threadqueue.Empty:
                    break
            batch = _jobs_in(batch)
            siblings = len(batch) > 1
            try:
                outcomes = _transaction(db, batch)
            except _JobFailed:
                # Rare: one job raised.  Run each alone so it fails without taking others along.
                outcomes = []
                for job in batch:
                    try:
                        outcomes += _transaction(db, [job])
                    except _JobFailed as e:
                        outcomes.append((job.deferred, False, e.error))
                    except sqlite3.Error as e:
                        outcomes.append((job.deferred, False, self._unavailable(e)))
            except sqlite3.Error as e:  # the commit itself failed (disk full, I/O error)
                outcomes = [(job.deferred, False, self._unavailable(e)) for job in batch]
            for deferred, ok, value in outcomes:
                if ok and value is _STOP:
                    stopping = next(job for job in batch if job.deferred is deferred)
            outcomes = [o for o in outcomes if o[2] is not _STOP]
            # One wake-up of the reactor per commit, not one per job.
            self.reactor.callFromThread(_fire, outcomes)
        db.close()
        self.reactor.callFromThread(stopping.deferred.callback, None)

    def _unavailable(self, e: Exception) -> QueueUnavailable:
        return QueueUnavailable(f"spool {self.path!r}: commit failed: {e}")

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], reads: bool = False, hold: bool = False) -> Deferred:
        """Queue ``fn`` for the spool thread; ``hold``: keep it back for ``settle_delay``."""
        if not self._running or self._jobs is None:
            raise QueueUnavailable(f"spool {self.path!r} is not running")
        d: Deferred = Deferred()
        job = _Job(fn, d, reads)
        if hold and self.settle_delay > 0:
            self._held.append(job)
            if self._held_timer is None:
                self._held_timer = self.reactor.callLater(self.settle_delay, self._release_held)
        else:
            self._jobs.put(job)
        return d

    def _release_held(self) -> None:
        if self._held_timer is not None and self._held_timer.active():
            self._held_timer.cancel()
        self._held_timer = None
        held, self._held = self._held, []
        if held and self._jobs is not None:
            self._jobs.put(held)  # one item: the spool thread takes them into one transaction

    # -- writing -------------------------------------------------------------------------------

    def publish(self, publications: Sequence[Publication]) -> Deferred[list[str]]:
        try:
            rows = self._prepare(publications)
        except Exception as e:
            return fail(e)
        d = self._submit(lambda db: insert_rows(db, rows))
        d.addCallback(self._published, publications)
        return d

    def _prepare(self, publications: Sequence[Publication]) -> list[Row]:
        # JSON encoding happens here, on the caller's thread, so the database thread only writes.
        rows = []
        encoded: dict[tuple[int, bool], str] = {}  # one document to several queues: encode once
        for pub in publications:
            doc = pub.document
            key = (id(doc), pub.body is not None)
            text = encoded.get(key)
            if text is None:
                if pub.body is not None:
                    doc = MailerQDocument.of(doc).without_mime()
                text = encoded[key] = json.dumps(doc)
            rows.append((pub.queue, due_time(pub.document), pub.body, text))
        return rows

    def _published(self, ids: list[str], publications: Sequence[Publication]) -> list[str]:
        for queue in {pub.queue for pub in publications}:
            self._wake(queue)
            for callback in self._watchers.get(queue, ()):
                callback()
        return ids

    def watch(self, queue: str, callback: Callable[[], None]) -> None:
        self._watchers.setdefault(queue, []).append(callback)

    def poke(self, queue: str) -> None:
        self._wake(queue)

    # -- consuming -----------------------------------------------------------------------------

    def consume(self, queue: str, handler: Callable[[Lease], None], prefetch: int = 100) -> None:
        self._consumers[queue] = _Consumer(queue, handler, max(1, prefetch))
        self._wake(queue)

    def _wake(self, queue: str) -> None:
        consumer = self._consumers.get(queue)
        if consumer is None or not self._running:
            return
        if consumer.fetching:
            consumer.again = True
            return
        room = consumer.prefetch - len(consumer.leased)
        # While it holds work, the consumer fetches again only once a quarter of its prefetch is
        # free: fewer, larger fetches (each one skips every leased id), and the copies of one
        # message arrive together, to be sent in one transaction.
        if room <= 0 or (consumer.leased and room < consumer.prefetch // 4):
            return
        consumer.fetching = True
        consumer.again = False
        exclude = json.dumps(list(consumer.leased))
        now = time.time()

        def fetch(db: sqlite3.Connection) -> tuple[list[tuple[int, str, bytes | None, int | None]],
                                                   dict[int, bytes | None], float | None]:
            # One statement: the leased ids are skipped on the covering index, before their JSON
            # and MIME are read (reading them only to drop them cost more than the delivery).
            rows = db.execute(
                "SELECT id, doc, mime, body FROM docs"
                " WHERE queue = ? AND due <= ? AND id NOT IN (SELECT value FROM json_each(?))"
                " ORDER BY due, id LIMIT ?",
                (queue, now, exclude, room),
            ).fetchall()
            # A body shared by many recipients is read once, not once per document.
            bodies = {body: load_body(db, body) for body in {row[3] for row in rows} - {None}}
            (nxt,) = db.execute(
                "SELECT MIN(due) FROM docs WHERE queue = ? AND due > ?", (queue, now)
            ).fetchone()
            return rows, bodies, nxt

        self._submit(fetch, reads=True).addCallbacks(
            self._fetched, self._fetch_failed, callbackArgs=(consumer,), errbackArgs=(consumer,)
        )

    def _fetched(self, result: tuple[list, dict[int, bytes | None], float | None], consumer: _Consumer) -> None:
        rows, bodies, next_due = result
        consumer.fetching = False
        if self._consumers.get(consumer.queue) is not consumer:
            return
        # Each shared body becomes one str that every document of it holds (memory once; and
        # delivery finds the copies of one message by comparing it, identity first).
        texts = {body: None if data is None else mime_text(data) for body, data in bodies.items()}
        for row_id, doc, inline, body in rows:
            document = with_mime(json.loads(doc), mime_text(inline) if inline is not None else texts.get(body))
            consumer.leased.add(row_id)
            lease = Lease(consumer.queue, str(row_id), document, token=row_id)
            try:
                consumer.handler(lease)
            except Exception:
                log.failure("queue consumer for {queue} raised", queue=consumer.queue)
        self._schedule(consumer, next_due)
        if consumer.again or (rows and len(consumer.leased) < consumer.prefetch):
            self._wake(consumer.queue)

    def _fetch_failed(self, failure: Any, consumer: _Consumer) -> None:
        consumer.fetching = False
        log.failure("spool fetch from {queue} failed", failure, queue=consumer.queue)
        self._schedule(consumer, time.time() + 1.0)

    def _schedule(self, consumer: _Consumer, due: float | None) -> None:
        # Look again at the next due time, and at least every POLL_INTERVAL: documents another
        # process committed (``mqmta inject``, a second MTA on the same spool) wake nothing here.
        due = min(due, time.time() + POLL_INTERVAL) if due is not None else time.time() + POLL_INTERVAL
        delay = max(0.0, due - time.time()) + 0.01
        if consumer.timer is not None and consumer.timer.active():
            if consumer.timer.getTime() <= self.reactor.seconds() + delay:
                return
            consumer.timer.cancel()
        consumer.timer = self.reactor.callLater(delay, self._wake, consumer.queue)

    def settle(self, lease: Lease, publications: Sequence[Publication]) -> Deferred[list[str]]:
        return self._settle_all([(lease, publications)]).addCallback(lambda ids: ids[0])

    def settle_many(self, settlements: Sequence[Settlement]) -> Deferred[list[Exception | None]]:
        """All of ``settlements`` in one transaction: durable together or not at all."""
        n = len(settlements)
        return self._settle_all(settlements).addCallbacks(lambda _: [None] * n, lambda f: [f.value] * n)

    def _settle_all(self, settlements: Sequence[Settlement]) -> Deferred[list[list[str]]]:
        """Every settlement in one job of the spool thread; each one's new ids."""
        try:
            prepared = [(lease.queue, _row_id(lease), self._prepare(pubs)) for lease, pubs in settlements]
        except Exception as e:
            return fail(e)

        def settle(db: sqlite3.Connection) -> list[list[str]]:
            ids, bodies = [], set()
            for queue, row_id, rows in prepared:
                these, body = settle_one(db, queue, row_id, rows)
                ids.append(these)
                bodies.add(body)
            # A body that many of them shared is looked at once, after the last of them went.
            for body in bodies:
                collect_body(db, body)
            return ids

        def settled(ids: list[list[str]]) -> list[list[str]]:
            by_queue: dict[str, list[int]] = {}
            for queue, row_id, _ in prepared:
                by_queue.setdefault(queue, []).append(row_id)
            for queue, row_ids in by_queue.items():
                self._forget(queue, row_ids)
            self._published([], [pub for _, pubs in settlements for pub in pubs])
            return ids

        return self._submit(settle, hold=True).addCallback(settled)

    def release(self, lease: Lease) -> None:
        self._forget(lease.queue, [_row_id(lease)])

    def _forget(self, queue: str, row_ids: Sequence[int]) -> None:
        consumer = self._consumers.get(queue)
        if consumer is not None and not consumer.leased.isdisjoint(row_ids):
            consumer.leased.difference_update(row_ids)
            self._wake(queue)

    # -- inspection ----------------------------------------------------------------------------

    def stats(self) -> Deferred[dict[str, int]]:
        return self._submit(read_stats, reads=True)

    def list(self, queue: str, limit: int = 20) -> Deferred[list[tuple[str, Document]]]:
        return self._submit(lambda db: read_documents(db, queue, limit), reads=True)

    def show(self, queue: str, id: str) -> Deferred[Document | None]:
        return self._submit(lambda db: read_document(db, queue, id), reads=True)

    # -- administration (mqtwisted.queue.spool_admin) -------------------------------------------

    def execute(self, fn: Callable[[sqlite3.Connection], Any], reads: bool = False) -> Deferred:
        """Run ``fn(db)`` on the spool thread in a transaction of its own (or shared)."""
        return self._submit(fn, reads=reads)

    def rewrite(self, queue: str, id: str, publications: Sequence[Publication]) -> Deferred[list[str] | None]:
        """Replace document ``id`` of ``queue`` by ``publications`` in one transaction (none:
        delete it): their ids, or None when ``id`` is not there."""
        rows = self._prepare(publications)

        def rewrite(db: sqlite3.Connection) -> list[str] | None:
            if db.execute("SELECT 1 FROM docs WHERE queue = ? AND id = ?", (queue, int(id))).fetchone() is None:
                return None
            ids = insert_rows(db, rows)
            collect_body(db, delete_row(db, int(id)))
            return ids

        def done(ids: list[str] | None) -> list[str] | None:
            return ids if ids is None else self._published(ids, publications)

        return self._submit(rewrite).addCallback(done)


class _JobFailed(Exception):
    def __init__(self, error: Exception) -> None:
        self.error = error


def _jobs_in(items: list[Any]) -> list[_Job]:
    """The jobs of items taken from the job queue: a job, or a list of held settles."""
    return [job for item in items for job in (item if isinstance(item, list) else [item])]


def _begin(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting up to BUSY_TIMEOUT for another process's write transaction."""
    deadline = 0.0
    pause = 0.0001
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + BUSY_TIMEOUT
            elif now > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


def _transaction(db: sqlite3.Connection, batch: list[_Job]) -> list[tuple[Deferred, bool, Any]]:
    """Run ``batch`` in one transaction: one commit (one fsync) for all of it."""
    if all(job.reads for job in batch):
        db.execute("BEGIN")  # a snapshot to read; WAL readers wait for no writer
    else:
        _begin(db)
    results = []
    try:
        for job in batch:
            try:
                results.append((job.deferred, True, job.fn(db)))
            except Exception as e:
                raise _JobFailed(e) from e
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def _fire(outcomes: list[tuple[Deferred, bool, Any]]) -> None:
    for deferred, ok, value in outcomes:
        if ok:
            deferred.callback(value)
        else:
            deferred.errback(value)


def _row_id(lease: Lease) -> int:
    return int(lease.token if lease.token is not None else lease.id)
