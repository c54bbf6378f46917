"""The RabbitMQ backend against a real broker: confirms, MailerQ JSON for other clients, delay
buckets, settle order, inspection, several nodes, and the broker cut off and back."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mqtwisted.queue import Body, Lease, Publication, QueueUnavailable, mime_bytes
from mqtwisted.queue.amqp import AmqpQueue
from mqtwisted.queue.amqp_wire import UnackedTags, decode_document, delay_bucket, encode_document
from tests.conftest import sleep, wait_until
from tests.conftest_amqp import (
    AMQP_URL,
    Leases,
    Relay,
    amqp_prefix_fixture,  # noqa: F401  (fixture amqp_prefix)
    amqp_queue_fixture,  # noqa: F401  (fixture amqp_queue)
    blocking_channel,
    closed_port,
    leaked_calls,
    own_fixture,  # noqa: F401  (fixture own)
)

# -- no broker needed ---------------------------------------------------------------------------


def test_broker_alarm_reaches_the_queue():
    # pika's Twisted adapter offers Connection.Blocked only on the connection it wraps; the one
    # function that reaches for it must keep working when pika changes (fails here if it breaks).
    import pika
    from pika import frame, spec
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from mqtwisted.queue.amqp_link import on_broker_alarm

    seen = []
    conn = TwistedProtocolConnection(pika.ConnectionParameters(), MemoryReactorClock())
    on_broker_alarm(conn, lambda: seen.append("blocked"), lambda: seen.append("unblocked"))
    conn.makeConnection(StringTransport())
    conn.dataReceived(frame.Method(0, spec.Connection.Blocked("low on memory")).marshal())
    assert seen == ["blocked"]
    conn.dataReceived(frame.Method(0, spec.Connection.Unblocked()).marshal())
    assert seen == ["blocked", "unblocked"]


def test_multiple_ack_never_covers_an_unsettled_tag():
    tags = UnackedTags()
    for tag in range(1, 9):
        tags.add(tag)
    assert tags.settle([2, 3]) == (0, [2, 3])  # 1 is unsettled: one ack each
    assert tags.settle([1, 5]) == (1, [5])  # 1 in one (2, 3 went); 4 still held
    tags.forget(4)  # nacked
    assert tags.settle([7, 6]) == (7, [])  # 5 acked already, 4 nacked: all up to 7
    tags.add(9)
    assert tags.settle([9, 8]) == (9, [])


def test_delay_bucket_rounds_down_with_a_floor():
    assert delay_bucket(0.3) == 1
    assert delay_bucket(1.0) == 1
    assert delay_bucket(599.9) == 300
    assert delay_bucket(600) == 600
    assert delay_bucket(10**7) == 86400


def test_encoding_keeps_8bit_octets_and_stays_utf8():
    raw = "Subject: caf\u00e9\r\n\r\n".encode() + bytes(range(128, 256))
    payload = encode_document({"mime": raw.decode("utf-8", "surrogateescape")})
    payload.decode("utf-8")  # valid UTF-8 for every other consumer
    assert "café".encode() in payload  # real UTF-8 stays readable, not \\u-escaped
    assert mime_bytes(decode_document(payload)["mime"]) == raw


@pytest_twisted.inlineCallbacks
def test_unreachable_broker_fails_fast_and_never_hangs(own):
    q = own(AmqpQueue(f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F", timeout=1.0,
                      max_backoff=0.2))
    # comes up anyway: the node must answer 451 while the broker is down (the deadline only
    # turns a hang into a failure)
    yield q.start().addTimeout(20, reactor)
    assert not q.connected
    published = q.publish([Publication("outbox", {"n": 1})])
    assert published.called  # refused at once, no timer involved
    with pytest.raises(QueueUnavailable):
        yield published
    with pytest.raises(QueueUnavailable):
        yield q.stats()
    yield q.stop()
    assert leaked_calls() == []  # stop() fires once every timer of the queue is gone


# -- against the broker -------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_published_documents_are_persistent_complete_json(amqp_queue, amqp_prefix):
    body = Body(data=b"Subject: hi\r\n\r\n\xe9t\xe9\r\n")
    ids = yield amqp_queue.publish([
        Publication("outbox", {"recipient": "a@example.com", "envelope": "s@example.org"}, body),
        Publication("outbox", {"recipient": "b@example.com", "envelope": "s@example.org"}, body),
    ])
    assert len(set(ids)) == 2
    conn, ch = blocking_channel()
    try:
        got = []
        for _ in range(2):
            method, props, payload = ch.basic_get(amqp_prefix + "outbox", auto_ack=True)
            assert method is not None
            assert props.delivery_mode == 2
            assert props.content_type == "application/json"
            got.append((props.message_id, json.loads(payload)))
        # durable: redeclaring it as transient is refused by the broker
        with pytest.raises(Exception, match="PRECONDITION_FAILED"):
            ch.queue_declare(amqp_prefix + "outbox", durable=False)
    finally:
        if conn.is_open:
            conn.close()
    assert [i for i, _ in got] == ids
    for (_, doc), rcpt in zip(got, ["a@example.com", "b@example.com"], strict=True):
        assert doc["recipient"] == rcpt
        assert mime_bytes(doc["mime"]) == body.data  # every copy complete, 8-bit intact


@pytest_twisted.inlineCallbacks
def test_plain_json_from_any_client_is_consumed(amqp_queue, amqp_prefix):
    conn, ch = blocking_channel()
    doc = {"envelope": "s@example.org", "recipient": "r@example.com", "mime": "Subject: x\r\n\r\n"}
    ch.basic_publish("", amqp_prefix + "outbox", b"this is not json")
    ch.basic_publish("", amqp_prefix + "outbox", json.dumps(doc).encode())
    conn.close()
    leases = Leases()
    amqp_queue.consume("outbox", leases)
    lease = yield leases.next()
    assert lease.document == doc
    assert lease.id.startswith("sha1-")  # no message id: a stable digest instead
    yield amqp_queue.settle(lease, [Publication("results", {**doc, "results": []})])
    stats = yield amqp_queue.stats()
    assert stats["outbox"] == 0  # the garbage was rejected, not requeued to spin
    assert stats["results"] == 1
    assert len(leases.seen) == 1


@pytest_twisted.inlineCallbacks
def test_nextattempt_waits_in_a_delay_bucket_without_spinning(amqp_queue):
    leases = Leases()
    amqp_queue.consume("outbox", leases)
    due = time.time() + 2.5
    yield amqp_queue.publish([Publication("outbox", {"n": 1, "nextattempt": due})])
    stats = yield amqp_queue.stats()
    assert stats["outbox"] == 0 and stats["mq-delay"] == 1
    lease = yield leases.next(timeout=8)
    assert time.time() >= due
    assert time.time() < due + 1.5  # rounded down, so late by less than the smallest bucket
    assert lease.document["n"] == 1
    assert len(leases.seen) == 1


@pytest_twisted.inlineCallbacks
def test_consumer_delays_a_document_that_is_not_due(amqp_queue, amqp_prefix):
    # An outside client puts a future nextattempt straight into the outbox.
    conn, ch = blocking_channel()
    due = time.time() + 1.5
    ch.basic_publish("", amqp_prefix + "outbox", json.dumps({"n": 2, "nextattempt": due}).encode())
    conn.close()
    leases = Leases()
    amqp_queue.consume("outbox", leases)
    yield wait_until(lambda: amqp_queue.stats().addCallback(lambda s: s["mq-delay"] == 1),
                     what="the early document moved to the delay queue")
    assert leases.seen == []
    lease = yield leases.next(timeout=8)
    assert time.time() >= due
    assert lease.document["n"] == 2


@pytest_twisted.inlineCallbacks
def test_result_queues_are_not_delayed(amqp_queue):
    # A retry copy carries the message's future nextattempt; watchers must see it at once.
    yield amqp_queue.publish([Publication("retry", {"n": 1, "nextattempt": time.time() + 600})])
    stats = yield amqp_queue.stats()
    assert stats["retry"] == 1 and stats["mq-delay"] == 0


@pytest_twisted.inlineCallbacks
def test_queues_of_other_names_are_declared_on_first_use(amqp_queue, amqp_prefix):
    # Delivery may be configured with its own queue names, or a message may name its own.
    assert (yield amqp_queue.list("custom-results")) == []
    yield amqp_queue.publish([Publication("custom-results", {"n": 1})])
    leases = Leases()
    amqp_queue.consume("custom-outbox", leases)
    due = time.time() + 1.2
    yield amqp_queue.publish([Publication("custom-outbox", {"n": 2, "nextattempt": due})])
    lease = yield leases.next(timeout=6)
    assert time.time() >= due and lease.document["n"] == 2
    assert [doc for _, doc in (yield amqp_queue.list("custom-results"))] == [{"n": 1}]
    conn, ch = blocking_channel()
    for name in ("custom-results", "custom-outbox"):
        ch.queue_delete(amqp_prefix + name)
    conn.close()


@pytest_twisted.inlineCallbacks
def test_settle_acks_only_after_the_broker_confirmed(amqp_queue):
    yield amqp_queue.publish([Publication("outbox", {"n": 1})])
    leases = Leases()
    amqp_queue.consume("outbox", leases)
    lease = yield leases.next()
    events = []
    publisher = amqp_queue.link.publisher
    held: list[defer.Deferred] = []
    real_publish = publisher.basic_publish

    def holding_publish(*args, **kwargs):
        confirm = real_publish(*args, **kwargs)
        gate = defer.Deferred()
        held.append(gate)
        gate.addCallback(lambda _: confirm)
        confirm.addCallback(lambda r: events.append("confirmed") or r)
        return gate

    consumer_channel = lease.token.channel
    real_ack = consumer_channel.basic_ack
    publisher.basic_publish = holding_publish
    consumer_channel.basic_ack = lambda *a, **k: (events.append("acked"), real_ack(*a, **k))[1]
    try:
        settled = amqp_queue.settle(lease, [Publication("success", {"n": 1})])
        # The broker confirms; the settle still waits for the (held) confirm to reach it.
        yield wait_until(lambda: "confirmed" in events, what="the broker's confirm")
        assert "acked" not in events and not settled.called
        held[0].callback(None)
        yield settled
    finally:
        del publisher.basic_publish
        del consumer_channel.basic_ack
    assert events == ["confirmed", "acked"]


@pytest_twisted.inlineCallbacks
def test_unroutable_outcome_fails_settle_and_keeps_the_document(amqp_queue, amqp_prefix):
    yield amqp_queue.publish([Publication("outbox", {"n": 1})])
    leases = Leases()
    amqp_queue.consume("outbox", leases, prefetch=1)
    lease = yield leases.next()
    conn, ch = blocking_channel()
    ch.queue_delete(amqp_prefix + "failure")  # an operator deleted the result queue
    conn.close()
    with pytest.raises(QueueUnavailable):
        yield amqp_queue.settle(lease, [Publication("failure", {"n": 1})])
    amqp_queue.release(lease)
    again = yield leases.next()
    assert again.id == lease.id and again.document == {"n": 1}


def _recording(amqp_queue, channel, events):
    """Record every publish, confirm and ack of ``amqp_queue`` (``channel``: a consumer's)."""
    publisher = amqp_queue.link.publisher
    real_publish, real_ack = publisher.basic_publish, channel.basic_ack

    def publish(*args, **kwargs):
        events.append("published")
        return real_publish(*args, **kwargs).addCallback(lambda r: events.append("confirmed") or r)

    publisher.basic_publish = publish
    def ack(*args, **kwargs):
        events.append("acked" + (" up to" if kwargs.get("multiple") else ""))
        return real_ack(*args, **kwargs)

    channel.basic_ack = ack

    def undo():
        del publisher.basic_publish
        del channel.basic_ack

    return undo


@pytest_twisted.inlineCallbacks
def test_settle_many_publishes_together_and_acks_after_every_confirm(amqp_queue):
    """A reactor turn's settlements cost one wait for the broker's confirms, not one each."""
    yield amqp_queue.publish([Publication("outbox", {"n": i}) for i in range(3)])
    leases = Leases()
    amqp_queue.consume("outbox", leases, prefetch=10)
    yield wait_until(lambda: len(leases.seen) == 3)
    events: list[str] = []
    undo = _recording(amqp_queue, leases.seen[0].token.channel, events)
    try:
        errors = yield amqp_queue.settle_many([
            (leases.seen[0], [Publication("success", {"n": 0}), Publication("results", {"n": 0})]),
            (leases.seen[1], [Publication("success", {"n": 1})]),
            (leases.seen[2], [Publication("success", {"n": 2})]),
        ])
    finally:
        undo()
    assert errors == [None, None, None]
    assert events == ["published"] * 4 + ["confirmed"] * 4 + ["acked up to"]
    stats = yield amqp_queue.stats()
    assert (stats["outbox"], stats["success"], stats["results"]) == (0, 3, 1)


@pytest_twisted.inlineCallbacks
def test_settle_many_fails_only_the_leases_that_cannot_settle(amqp_queue, amqp_prefix):
    """An unroutable outcome and a void lease fail alone; the others are settled (their
    outcomes published again after the batch failed: repeated, never lost)."""
    yield amqp_queue.publish([Publication("outbox", {"n": i}) for i in range(3)])
    leases = Leases()
    amqp_queue.consume("outbox", leases, prefetch=10)
    yield wait_until(lambda: len(leases.seen) == 3)
    conn, ch = blocking_channel()
    ch.queue_delete(amqp_prefix + "failure")  # an operator deleted the result queue
    conn.close()
    void = Lease("outbox", "gone", {"n": 9}, token=None)
    errors = yield amqp_queue.settle_many([
        (leases.seen[0], [Publication("success", {"n": 0})]),
        (leases.seen[1], [Publication("failure", {"n": 1})]),
        (void, [Publication("success", {"n": 9})]),
        (leases.seen[2], [Publication("success", {"n": 2})]),
    ])
    assert errors[0] is None and errors[3] is None
    assert isinstance(errors[1], QueueUnavailable) and isinstance(errors[2], QueueUnavailable)
    amqp_queue.release(leases.seen[1])
    yield wait_until(lambda: len(leases.seen) == 4)
    yield sleep(0.2)  # time for a wrongly unsettled one to come back as well
    assert [lease.document for lease in leases.seen[3:]] == [{"n": 1}]  # the failed one only


@pytest_twisted.inlineCallbacks
def test_prefetch_bounds_unsettled_leases(amqp_queue):
    yield amqp_queue.publish([Publication("outbox", {"n": i}) for i in range(5)])
    leases = Leases()
    amqp_queue.consume("outbox", leases, prefetch=2)
    yield wait_until(lambda: len(leases.seen) == 2)
    # The broker's own count: three held back (had it sent them, none would be ready).
    assert (yield amqp_queue.stats())["outbox"] == 3
    assert len(leases.seen) == 2
    yield amqp_queue.settle(leases.seen[0], [])
    yield wait_until(lambda: len(leases.seen) == 3)
    assert [lease.document["n"] for lease in leases.seen] == [0, 1, 2]


@pytest_twisted.inlineCallbacks
def test_list_and_show_leave_documents_in_place(amqp_queue):
    ids = yield amqp_queue.publish([Publication("outbox", {"n": i}) for i in range(3)])
    listed = yield amqp_queue.list("outbox", limit=2)
    assert listed == [(ids[0], {"n": 0}), (ids[1], {"n": 1})]
    assert (yield amqp_queue.show("outbox", ids[2])) == {"n": 2}
    assert (yield amqp_queue.show("outbox", "nope")) is None
    assert (yield amqp_queue.stats())["outbox"] == 3
    leases = Leases()
    amqp_queue.consume("outbox", leases)
    yield wait_until(lambda: len(leases.seen) == 3)
    assert [lease.id for lease in leases.seen] == ids  # order kept


@pytest_twisted.inlineCallbacks
def test_consumer_channel_closed_by_broker_restarts_only_that_consumer(amqp_queue):
    yield amqp_queue.publish([Publication("outbox", {"n": 1}), Publication("local", {"n": 2})])
    outbox, local = Leases(), Leases()
    amqp_queue.consume("outbox", outbox, prefetch=1)
    amqp_queue.consume("local", local, prefetch=1)
    lease = yield outbox.next()
    other = yield local.next()
    conn = amqp_queue.link.connection
    lease.token.channel.basic_ack(424242)  # unknown tag: the broker closes that channel (406)
    again = yield outbox.next()
    assert again.id == lease.id  # redelivered on the consumer's new channel
    with pytest.raises(QueueUnavailable):
        yield amqp_queue.settle(lease, [])  # the old lease is void
    assert amqp_queue.link.connection is conn and amqp_queue.connected
    yield amqp_queue.settle(other, [])  # the other consumer's lease was untouched
    yield amqp_queue.settle(again, [])
    assert counts_of((yield amqp_queue.stats())) == {}


def counts_of(stats):
    return {k: v for k, v in stats.items() if v}


@pytest_twisted.inlineCallbacks
def test_two_nodes_share_the_outbox_and_take_over_unsettled(amqp_prefix, own):
    nodes = [own(AmqpQueue(AMQP_URL, prefix=amqp_prefix, timeout=3, max_backoff=0.5))
             for _ in range(2)]
    yield defer.gatherResults([n.start() for n in nodes])
    handled: dict[int, list[int]] = {0: [], 1: []}
    held: list = []

    def handler(i):
        def handle(lease):
            if i == 1 and len(held) < 5:
                held.append(lease)  # node 1 "dies" holding these
                return
            handled[i].append(lease.document["n"])
            nodes[i].settle(lease, [])
        return handle

    nodes[0].consume("outbox", handler(0), prefetch=10)
    nodes[1].consume("outbox", handler(1), prefetch=10)
    yield nodes[0].publish([Publication("outbox", {"n": i}) for i in range(200)])
    yield wait_until(lambda: len(held) == 5 and len(handled[0]) + len(handled[1]) == 195)
    yield nodes[1].stop()
    yield wait_until(lambda: len(handled[0]) + len(handled[1]) == 200)
    everything = sorted(handled[0] + handled[1])
    assert everything == list(range(200))  # each exactly once, the held ones by node 0
    assert {lease.document["n"] for lease in held} <= set(handled[0])
    yield nodes[0].stop()


def connect_failures(events: list[dict]) -> int:
    return sum(1 for e in events if e.get("log_format", "").startswith("AMQP connection to")
               and "failed" in e.get("log_format", ""))


@pytest_twisted.inlineCallbacks
def test_broker_cut_off_and_back(amqp_prefix, logged, own):
    relay = own(Relay())
    relay.start()
    q = own(AmqpQueue(relay.url, prefix=amqp_prefix, timeout=2.0, max_backoff=0.5))
    yield q.start()
    assert q.connected
    leases = Leases()
    q.consume("outbox", leases, prefetch=10)
    yield q.publish([Publication("outbox", {"n": 1})])
    before = yield leases.next()

    yield relay.stop()
    yield wait_until(lambda: not q.connected, timeout=5)
    published = q.publish([Publication("outbox", {"n": 2})])
    assert published.called  # refused at once, no timer: SMTP answers 451 at once
    with pytest.raises(QueueUnavailable):
        yield published
    with pytest.raises(QueueUnavailable):  # the lease of the lost channel is void
        yield q.settle(before, [Publication("success", {"n": 1})])
    failed = connect_failures(logged)
    yield wait_until(lambda: connect_failures(logged) >= failed + 2,
                     what="two reconnection attempts against the closed port")

    relay.start()
    yield q.wait_connected(timeout=10)
    yield q.publish([Publication("outbox", {"n": 3})])  # publishing resumed by itself
    redelivered = yield leases.next()  # consuming resumed: first the unsettled one again
    assert redelivered.document == {"n": 1} and redelivered.id == before.id
    fresh = yield leases.next()
    assert fresh.document == {"n": 3}
    yield q.settle(redelivered, [Publication("success", {"n": 1})])
    yield q.settle(fresh, [Publication("success", {"n": 3})])
    assert (yield q.stats())["success"] == 2
    yield q.stop()
    assert leaked_calls() == []  # stop() fires once every timer of the queue is gone
    yield relay.stop()


@pytest_twisted.inlineCallbacks
def test_no_confirmed_publication_is_lost_across_cuts(amqp_prefix, own):
    relay = own(Relay())
    relay.start()
    q = own(AmqpQueue(relay.url, prefix=amqp_prefix, timeout=2.0, max_backoff=0.3))
    yield q.start()
    confirmed: set[int] = set()
    failed = 0

    def handle(lease):
        q.settle(lease, [Publication("success", lease.document)]).addErrback(lambda f: None)

    q.consume("outbox", handle, prefetch=20)
    numbers = iter(range(100000))
    stop = []

    @defer.inlineCallbacks
    def session():
        nonlocal failed
        while not stop:
            n = next(numbers)
            try:
                yield q.publish([Publication("outbox", {"n": n})])
            except QueueUnavailable:
                failed += 1
                yield sleep(0.02)  # a client's pause before it tries again (not a wait to assert)
            else:
                confirmed.add(n)

    sessions = defer.gatherResults([session() for _ in range(10)])
    for _ in range(3):  # the broker goes away three times, mid-traffic
        yield wait_until(lambda n=len(confirmed): len(confirmed) >= n + 40,
                         what="traffic flowing before the cut")
        yield relay.stop()
        yield wait_until(lambda n=failed: failed > n, what="publishing refused while the broker is away")
        relay.start()
        yield q.wait_connected(timeout=10)
    resumed = len(confirmed)
    yield wait_until(lambda: len(confirmed) >= resumed + 40, what="traffic flowing after the last cut")
    stop.append(True)
    yield sessions
    assert failed > 0 and len(confirmed) > 100

    # Everything confirmed ends up in success (repeats allowed, losses not).
    conn, ch = blocking_channel()
    delivered: set[int] = set()

    def drain() -> bool:
        while True:
            method, _props, body = ch.basic_get(amqp_prefix + "success", auto_ack=True)
            if method is None:
                return confirmed <= delivered
            delivered.add(json.loads(body)["n"])

    try:
        yield wait_until(drain, timeout=20, step=0.2)
    finally:
        conn.close()
    yield q.stop()
    yield relay.stop()


@pytest_twisted.inlineCallbacks
def test_hung_broker_times_out_publishes_then_recovers(amqp_prefix, own):
    relay = own(Relay())
    relay.start()
    q = own(AmqpQueue(relay.url, prefix=amqp_prefix, timeout=1.5, max_backoff=0.5))
    yield q.start()
    relay.blackhole = True  # connection up, nothing answers: no FIN, no RST
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        yield q.publish([Publication("outbox", {"n": 1})])
    # Bounded by the 1.5 s timeout, never a hang: the upper bound is generous for a loaded
    # machine (without the timeout nothing would answer at all).
    assert 1.0 < time.monotonic() - started < 15.0
    yield relay.stop()  # the partition ends with the connection gone
    yield wait_until(lambda: not q.connected, timeout=5)
    relay.start()
    yield q.wait_connected(timeout=10)
    yield q.publish([Publication("outbox", {"n": 2})])
    yield q.stop()
    yield relay.stop()


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_publish_throughput_with_confirms(amqp_queue, capsys):
    doc = {"envelope": "s@example.org", "recipient": "r@example.com", "mime": "x" * 2000}
    count = 5000
    started = time.monotonic()
    # 100 concurrent "sessions", each waiting for its confirm before the next message.
    pending = iter(range(count))

    @defer.inlineCallbacks
    def session():
        for _ in pending:
            yield amqp_queue.publish([Publication("outbox", doc)])

    yield defer.gatherResults([session() for _ in range(100)])
    rate = count / (time.monotonic() - started)
    with capsys.disabled():
        print(f"\nAMQP publish with confirms: {rate:.0f} messages/s (2 KB, 100 concurrent)")
    assert (yield amqp_queue.stats())["outbox"] == count
    assert rate > 200  # a floor far below a loaded 2-core machine's rate (over 1000/s)


def test_reactor_is_clean_after_the_module():
    assert [c for c in reactor.getDelayedCalls() if c.active() and "amqp" in repr(c.func)] == []
