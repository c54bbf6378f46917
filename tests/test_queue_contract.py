"""The Queue contract of :mod:`mqtwisted.queue`, the same tests on every backend.

amqp runs against the real broker (skipped, or failed under ``MQMTA_REQUIRE_AMQP=1``, when none
answers), once with classic queues and once with quorum queues (``--amqp-queue-type``); spool runs
whenever ``mqtwisted.queue.spool.SpoolQueue`` exists.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mqtwisted.queue import QUEUE_NAMES, Body, Publication, QueueUnavailable
from tests.conftest_amqp import (
    AMQP_URL,
    Leases,
    delete_topology,
    require_broker,
    unique_prefix,
)


def _spool_class() -> Any:
    try:
        from mqtwisted.queue.spool import SpoolQueue
    except ImportError:
        return None
    return SpoolQueue


@pytest.fixture(params=["amqp-classic", "amqp-quorum", "spool"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param.startswith("amqp-"):
        require_broker()
        from mqtwisted.queue.amqp import AmqpQueue

        prefix = unique_prefix()
        q = AmqpQueue(AMQP_URL, prefix=prefix, timeout=3.0, max_backoff=0.5,
                      queue_type=request.param.removeprefix("amqp-"))
        cleanup = lambda: delete_topology(prefix)  # noqa: E731
    else:
        spool_class = _spool_class()
        if spool_class is None:
            pytest.skip("mqtwisted.queue.spool.SpoolQueue is not importable")
        q = spool_class(str(tmp_path / "spool.sqlite3"))
        cleanup = lambda: None  # noqa: E731
    pytest_twisted.blockon(q.start())
    yield q
    pytest_twisted.blockon(q.stop())
    cleanup()


def counts(stats: dict[str, int]) -> dict[str, int]:
    """The named queues that hold something (backends may or may not list empty ones)."""
    return {k: v for k, v in stats.items() if k in QUEUE_NAMES and v}


@pytest_twisted.inlineCallbacks
def test_publish_consume_settle(backend):
    body = Body(data=b"Subject: hi\r\n\r\nhello\r\n")
    ids = yield backend.publish([
        Publication("outbox", {"recipient": "a@example.com"}, body),
        Publication("outbox", {"recipient": "b@example.com"}, body),
    ])
    assert len(ids) == 2 and len(set(ids)) == 2
    leases = Leases()
    backend.consume("outbox", leases, prefetch=10)
    first = yield leases.next()
    second = yield leases.next()
    assert {first.id, second.id} == set(ids)
    for lease in (first, second):
        assert lease.queue == "outbox"
        assert lease.document["mime"] == "Subject: hi\r\n\r\nhello\r\n"  # complete JSON
    by_id = {first.id: first, second.id: second}
    assert by_id[ids[0]].document["recipient"] == "a@example.com"
    outcome = yield backend.settle(first, [
        Publication("results", {"recipient": "a@example.com", "results": []}),
        Publication("success", {"recipient": "a@example.com", "results": []}),
    ])
    assert len(outcome) == 2
    yield backend.settle(second, [Publication("failure", {"recipient": "b@example.com"})])
    assert counts((yield backend.stats())) == {"results": 1, "success": 1, "failure": 1}
    # Settled documents are gone for good: one published after them comes next, not them again.
    (marker,) = yield backend.publish([Publication("outbox", {"recipient": "c@example.com"})])
    after = yield leases.next()
    assert after.id == marker and len(leases.seen) == 3


@pytest_twisted.inlineCallbacks
def test_settle_many_settles_each_lease_and_reports_each_outcome(backend):
    """A transaction's recipients settle together: one delivered, one back in the outbox for a
    retry, one failed; the shared body outlives the ones that went."""
    body = Body(data=b"Subject: many\r\n\r\nshared\r\n")
    yield backend.publish([Publication("outbox", {"recipient": f"{c}@example.com"}, body) for c in "abc"])
    leases = Leases()
    backend.consume("outbox", leases, prefetch=10)
    by_rcpt = {}
    for _ in range(3):
        lease = yield leases.next()
        by_rcpt[lease.document["recipient"][0]] = lease
    again = {"recipient": "b@example.com", "results": [{"result": "error"}]}
    errors = yield backend.settle_many([
        (by_rcpt["a"], [Publication("success", {"recipient": "a@example.com"})]),
        (by_rcpt["b"], [Publication("outbox", again, body), Publication("retry", {"recipient": "b@example.com"})]),
        (by_rcpt["c"], [Publication("failure", {"recipient": "c@example.com"})]),
    ])
    assert errors == [None, None, None]
    retried = yield leases.next()
    assert retried.document == {**again, "mime": "Subject: many\r\n\r\nshared\r\n"}
    settled = counts((yield backend.stats()))
    settled.pop("outbox", None)  # the spool counts the leased retry, a broker does not
    assert settled == {"success": 1, "retry": 1, "failure": 1}


@pytest_twisted.inlineCallbacks
def test_failed_settle_removes_nothing(backend):
    """Outcome first, removal second: when the outcome cannot be stored the document stays."""
    yield backend.publish([Publication("outbox", {"n": 1})])
    leases = Leases()
    backend.consume("outbox", leases, prefetch=1)
    lease = yield leases.next()
    unreadable = Body(path="/nonexistent/mqmta-contract-body")
    with pytest.raises(Exception):  # noqa: B017  (each backend reports it its own way)
        yield backend.settle(lease, [Publication("success", {"n": 1}, unreadable)])
    assert counts((yield backend.stats())).get("success", 0) == 0
    backend.release(lease)
    again = yield leases.next()
    assert again.id == lease.id and again.document == {"n": 1}
    yield backend.settle(again, [Publication("success", {"n": 1})])
    assert counts((yield backend.stats())) == {"success": 1}


@pytest_twisted.inlineCallbacks
def test_outcome_is_durable_when_settle_fires(backend):
    yield backend.publish([Publication("outbox", {"n": 1})])
    leases = Leases()
    backend.consume("outbox", leases, prefetch=1)
    lease = yield leases.next()
    yield backend.settle(lease, [Publication("results", {"n": 1, "results": []})])
    # Visible at once to any reader, without waiting for anything else.
    listed = yield backend.list("results")
    assert [doc for _, doc in listed] == [{"n": 1, "results": []}]


@pytest_twisted.inlineCallbacks
def test_nextattempt_delays_delivery(backend):
    leases = Leases()
    backend.consume("outbox", leases, prefetch=10)
    due = time.time() + 1.2
    yield backend.publish([
        Publication("outbox", {"n": "later", "nextattempt": due}),
        Publication("outbox", {"n": "now", "nextattempt": time.time() - 5}),
    ])
    now = yield leases.next()
    assert now.document["n"] == "now"
    later = yield leases.next(timeout=6)
    assert later.document["n"] == "later"
    assert time.time() >= due  # not handed out before it was due


@pytest_twisted.inlineCallbacks
def test_release_redelivers(backend):
    yield backend.publish([Publication("outbox", {"n": i}) for i in range(3)])
    leases = Leases()
    backend.consume("outbox", leases, prefetch=1)
    first = yield leases.next()
    yield backend.stats()  # a round trip to the backend: what it would send more has arrived
    assert len(leases.seen) == 1  # prefetch bounds the unsettled leases
    backend.release(first)
    # Delivered again, not necessarily next: a quorum queue puts a released document at the back.
    again = yield leases.next()
    while again.id != first.id:
        yield backend.settle(again, [])
        again = yield leases.next()
    assert again.document == first.document and len(leases.seen) <= 4


@pytest_twisted.inlineCallbacks
def test_stats_list_show(backend):
    ids = yield backend.publish(
        [Publication("outbox", {"n": i}) for i in range(3)]
        + [Publication("results", {"n": "r"})]
    )
    assert counts((yield backend.stats())) == {"outbox": 3, "results": 1}
    listed = yield backend.list("outbox", limit=2)
    assert [doc for _, doc in listed] == [{"n": 0}, {"n": 1}]
    assert [i for i, _ in listed] == ids[:2]
    assert (yield backend.show("outbox", ids[2])) == {"n": 2}
    assert (yield backend.show("results", ids[3])) == {"n": "r"}


@pytest_twisted.inlineCallbacks
def test_publish_after_stop_fails_with_queue_unavailable(backend):
    yield backend.stop()
    with pytest.raises(QueueUnavailable):
        yield defer.maybeDeferred(backend.publish, [Publication("outbox", {"n": 1})])
    yield backend.start()  # the fixture stops it again


def test_the_queue_imports_no_smtp_module() -> None:
    # The queue moves documents; it knows nothing of SMTP, not even through another module.
    import ast
    import pathlib

    root = pathlib.Path(__file__).parent.parent

    def imports(module: str) -> set[str]:
        path = root / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = root / module.replace(".", "/") / "__init__.py"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mqtwisted"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names
                             if (root / node.module.replace(".", "/") / f"{a.name}.py").exists())
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("mqtwisted"))
        return found

    start = ["mqtwisted.queue", *(f"mqtwisted.queue.{p.stem}" for p in (root / "mqtwisted/queue").glob("*.py")
                                  if p.stem != "__init__")]
    seen: dict[str, str] = {m: "" for m in start}
    todo = list(start)
    while todo:
        module = todo.pop()
        for name in imports(module):
            if name not in seen:
                seen[name] = module
                todo.append(name)
    smtp = {m: via for m, via in seen.items() if m == "mqtwisted.smtp" or m.startswith("mqtwisted.smtp.")}
    assert smtp == {}, f"queue modules reach SMTP modules (module: imported by): {smtp}"
