"""The embedded spool against its contract: durability order, shared bodies, leases, due times."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from mqtwisted.queue import Body, Publication
from mqtwisted.queue.spool import SpoolQueue
from mqtwisted.queue.spool_tables import read_stats
from tests.conftest import ClockWithThreads, wait_until


@pytest.fixture
def spool(tmp_path):
    q = SpoolQueue(str(tmp_path / "spool.sqlite3"))
    pytest_twisted.blockon(q.start())
    yield q
    pytest_twisted.blockon(q.stop())


@pytest_twisted.inlineCallbacks
def test_shared_body_stored_once_and_complete_for_readers(spool, tmp_path):
    body = Body(data=b"Subject: hi\r\n\r\nhello\r\n")
    ids = yield spool.publish(
        [Publication("outbox", {"recipient": f"r{i}@example.com"}, body) for i in range(3)]
    )
    assert len(set(ids)) == 3
    db = sqlite3.connect(str(tmp_path / "spool.sqlite3"))
    assert db.execute("SELECT COUNT(*) FROM bodies").fetchone() == (1,)  # three recipients, one body
    doc = yield spool.show("outbox", ids[1])
    assert doc == {"recipient": "r1@example.com", "mime": "Subject: hi\r\n\r\nhello\r\n"}


@pytest_twisted.inlineCallbacks
def test_a_new_spool_has_large_pages_and_an_old_one_keeps_its_own(spool, tmp_path):
    from mqtwisted.queue.spool import PAGE_SIZE

    db = sqlite3.connect(str(tmp_path / "spool.sqlite3"))
    assert db.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)
    old = tmp_path / "old.sqlite3"
    made = sqlite3.connect(str(old))
    made.execute("PRAGMA journal_mode=WAL")
    made.execute("CREATE TABLE t (x)")
    made.close()
    q = SpoolQueue(str(old))
    yield q.start()
    ids = yield q.publish([Publication("outbox", {"n": 1}, Body(data=b"x" * 100000))])
    assert (yield q.show("outbox", ids[0]))["mime"] == "x" * 100000
    yield q.stop()
    assert sqlite3.connect(str(old)).execute("PRAGMA page_size").fetchone() == (4096,)


@pytest_twisted.inlineCallbacks
def test_concurrent_publishes_share_commits(spool):
    ds = [spool.publish([Publication("outbox", {"n": i, "mime": "x"})]) for i in range(200)]
    results = yield defer.gatherResults(ds)
    assert len({r[0] for r in results}) == 200
    stats = yield spool.stats()
    assert stats == {"outbox": 200}


@pytest_twisted.inlineCallbacks
def test_commits_wait_for_siblings_only_after_a_busy_batch(spool, monkeypatch):
    import threading
    import types

    from mqtwisted.queue import spool as spool_module

    sleeps: list[float] = []
    fake_time = types.SimpleNamespace(**{n: getattr(time, n) for n in ("time", "monotonic")})
    fake_time.sleep = lambda s: (sleeps.append(s), time.sleep(s))
    monkeypatch.setattr(spool_module, "time", fake_time)
    delay = spool_module.COMMIT_DELAY

    def one(n):
        return spool.publish([Publication("outbox", {"n": n})])

    yield one(0)
    yield one(1)
    assert delay not in sleeps  # a lone session never waits

    # Three commits queue up behind a job that holds the spool thread: they share one batch...
    release, holding = threading.Event(), threading.Event()
    held = spool._submit(lambda db: (holding.set(), release.wait(10)))
    yield wait_until(holding.is_set, what="the spool thread held")
    queued = [one(n) for n in (2, 3, 4)]
    release.set()
    yield held
    yield defer.gatherResults(queued)
    assert delay not in sleeps
    # ... so the next commit waits for siblings once, and the one after it (alone again) does not.
    yield one(5)
    assert sleeps.count(delay) == 1
    yield one(6)
    assert sleeps.count(delay) == 1


@pytest_twisted.inlineCallbacks
def test_settle_publishes_outcome_and_removes_lease_and_body(spool, tmp_path):
    body = Body(data=b"x\r\n")
    yield spool.publish([Publication("outbox", {"recipient": "a@b"}, body)])
    got = defer.Deferred()
    spool.consume("outbox", got.callback, prefetch=1)
    lease = yield got
    assert lease.document["mime"] == "x\r\n"
    yield spool.settle(lease, [Publication("success", {"recipient": "a@b", "results": []})])
    assert (yield spool.stats()) == {"success": 1}
    db = sqlite3.connect(str(tmp_path / "spool.sqlite3"))
    assert db.execute("SELECT COUNT(*) FROM bodies").fetchone() == (0,)


@pytest_twisted.inlineCallbacks
def test_future_nextattempt_is_not_handed_out_until_due(spool):
    seen = []
    spool.consume("outbox", seen.append, prefetch=10)
    due = time.time() + 0.4
    yield spool.publish([Publication("outbox", {"n": 1, "nextattempt": due}),
                         Publication("outbox", {"n": 2})])
    yield wait_until(lambda: seen, what="the document that is due")
    assert [lease.document["n"] for lease in seen] == [2]  # handed out, the other one not yet
    yield wait_until(lambda: len(seen) == 2, what="the later document, once due")
    assert time.time() >= due
    assert [lease.document["n"] for lease in seen] == [2, 1]


@pytest_twisted.inlineCallbacks
def test_prefetch_bounds_leases_and_release_redelivers(spool):
    seen = []
    spool.consume("outbox", seen.append, prefetch=2)
    yield spool.publish([Publication("outbox", {"n": i}) for i in range(5)])
    yield wait_until(lambda: len(seen) >= 2, what="two leases")
    yield spool.stats()  # a round trip through the spool thread: a fetch under way has ended
    assert len(seen) == 2
    spool.release(seen[0])
    yield wait_until(lambda: len(seen) >= 3, what="a lease after the release")
    yield spool.stats()
    assert len(seen) == 3
    assert seen[2].document["n"] == 0  # released: first in line again


@pytest_twisted.inlineCallbacks
def test_leased_documents_are_not_fetched_again_and_shared_bodies_come_along(spool):
    seen = []
    spool.consume("outbox", seen.append, prefetch=5)
    yield spool.publish([Publication("outbox", {"n": i}) for i in range(2)])
    yield wait_until(lambda: len(seen) >= 2, what="both documents leased")
    assert sorted(lease.document["n"] for lease in seen) == [0, 1]
    # Still leased while two more arrive, one body shared by two recipients' documents: the
    # fetch that follows skips the leased two and brings the shared body with each document.
    body = Body(data=b"Subject: shared\r\n\r\nbody\r\n")
    yield spool.publish([Publication("outbox", {"n": 2}, body), Publication("outbox", {"n": 3}, body)])
    yield wait_until(lambda: len(seen) >= 4, what="the two new documents leased")
    yield spool.stats()  # a round trip through the spool thread: a fetch under way has ended
    assert sorted(lease.document["n"] for lease in seen) == [0, 1, 2, 3]
    assert [lease.document["mime"] for lease in seen[2:]] == ["Subject: shared\r\n\r\nbody\r\n"] * 2


@pytest_twisted.inlineCallbacks
def test_file_body_streams_into_database(spool, tmp_path):
    path = tmp_path / "big.eml"
    path.write_bytes(b"a" * (3 << 20))
    ids = yield spool.publish([Publication("outbox", {"n": 1}, Body(path=str(path)))])
    doc = yield spool.show("outbox", ids[0])
    assert len(doc["mime"]) == 3 << 20


@pytest_twisted.inlineCallbacks
def test_committed_before_publish_fires(tmp_path):
    path = str(tmp_path / "spool.sqlite3")
    q = SpoolQueue(path)
    yield q.start()
    yield q.publish([Publication("outbox", {"n": 1})])
    # before any stop(): a reader on another connection sees the row, as a restart would
    assert read_stats(sqlite3.connect(path)) == {"outbox": 1}
    yield q.stop()
    assert os.path.exists(path)


@pytest_twisted.inlineCallbacks
def test_requeue_to_the_same_queue_keeps_the_queue_id(spool, tmp_path):
    body = Body(data=b"x\r\n")
    (first, _) = yield spool.publish([Publication("outbox", {"recipient": f"r{i}@b"}, body) for i in range(2)])
    got = defer.Deferred()
    spool.consume("outbox", lambda lease: got.called or got.callback(lease), prefetch=1)
    lease = yield got
    assert lease.id == first
    retry = dict(lease.document, nextattempt=time.time() + 3600)
    ids = yield spool.settle(
        lease, [Publication("outbox", retry), Publication("retry", {"recipient": "r0@b", "results": []})]
    )
    assert ids[0] == first  # "queued as" stays valid across retries, as Postfix's queue ids do
    doc = yield spool.show("outbox", first)
    assert doc["nextattempt"] == retry["nextattempt"] and doc["mime"] == "x\r\n"
    assert (yield spool.stats()) == {"outbox": 2, "retry": 1}
    db = sqlite3.connect(str(tmp_path / "spool.sqlite3"))
    assert db.execute("SELECT COUNT(*) FROM bodies").fetchone() == (1,)  # still shared by r1


@pytest_twisted.ensureDeferred
async def test_another_process_holding_the_write_lock(spool, tmp_path, monkeypatch):
    # A delivery worker (or mqmta inject) writes the same spool: reads do not take the write
    # lock (so they neither wait for it nor hold it up), and a publish waits for it in small
    # steps instead of failing.
    import types

    from mqtwisted.queue import spool as spool_module

    pauses: list[float] = []
    fake_time = types.SimpleNamespace(**{n: getattr(time, n) for n in ("time", "monotonic")})
    fake_time.sleep = lambda s: (pauses.append(s), time.sleep(s))
    monkeypatch.setattr(spool_module, "time", fake_time)
    other = sqlite3.connect(tmp_path / "spool.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    # Answered while the other writer still holds the lock (it commits only further down): a
    # read that waited for the lock could only have failed after the busy timeout.
    assert await spool.stats() == {}
    assert pauses == []
    published = spool.publish([Publication("outbox", {"recipient": "a@example.com"})])
    await wait_until(lambda: len(pauses) >= 20, what="the publish waiting for the lock")
    assert not published.called
    assert max(pauses) <= 0.001  # small steps: it goes on as soon as the lock is free
    other.execute("COMMIT")
    (doc_id,) = await published
    assert (await spool.stats()) == {"outbox": 1} and doc_id


@pytest_twisted.ensureDeferred
async def test_settles_held_for_a_moment_share_one_commit(tmp_path):
    clock = ClockWithThreads()
    queue = SpoolQueue(str(tmp_path / "held.sqlite3"), reactor=clock, settle_delay=0.2)
    await queue.start()
    try:
        await queue.publish([Publication("outbox", {"recipient": f"r{i}@example.com"}) for i in range(3)])
        leases = []
        queue.consume("outbox", leases.append)
        await wait_until(lambda: len(leases) == 3, what="three leases")
        settled = [queue.settle(lease, [Publication("success", lease.document)]) for lease in leases]
        clock.advance(0.19)
        await queue.stats()  # a round trip through the spool thread
        assert not any(d.called for d in settled)  # held, not yet committed
        clock.advance(0.02)
        await defer.gatherResults(settled)  # committed together once settle_delay has passed
        assert await queue.stats() == {"success": 3}
    finally:
        await queue.stop()
