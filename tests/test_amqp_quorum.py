"""The RabbitMQ backend's safety on one broker: quorum queues and at-least-once delay buckets,
queues an operator declared otherwise, a full queue that refuses, a list of brokers, and a
redelivery whose outcome is already stored."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from mqtwisted.options import ConfigError, MQOptions
from mqtwisted.queue import Publication, QueueUnavailable
from mqtwisted.queue.amqp import SETTLE_PAUSE, AmqpQueue
from mqtwisted.queue.amqp_link import broker_urls
from mqtwisted.queue.amqp_wire import DELAY_BUCKETS
from mqtwisted.wiring import make_queue
from tests.conftest import sleep, wait_until
from tests.conftest_amqp import (
    AMQP_URL,
    BROKER_PORT,
    Leases,
    Relay,
    amqp_prefix_fixture,  # noqa: F401  (fixture amqp_prefix)
    blocking_channel,
    closed_port,
    own_fixture,  # noqa: F401  (fixture own)
)


def test_broker_urls_split_a_host_list_and_keep_the_rest():
    assert broker_urls("amqp://u:p@h1:5672,h2:5673, h3:5674/v%2Fh?heartbeat=5") == [
        "amqp://u:p@h1:5672/v%2Fh?heartbeat=5",
        "amqp://u:p@h2:5673/v%2Fh?heartbeat=5",
        "amqp://u:p@h3:5674/v%2Fh?heartbeat=5",
    ]
    assert broker_urls("amqp://h/") == ["amqp://h/"]
    with pytest.raises(ValueError, match="empty host"):
        broker_urls("amqp://u:p@h1,,h2/")


def test_an_unknown_queue_type_is_refused_with_its_name():
    with pytest.raises(ValueError, match="classic, quorum.*'mirrored'"):
        AmqpQueue(AMQP_URL, queue_type="mirrored")


def test_the_option_names_itself_and_reaches_the_queue():
    options = MQOptions()
    with pytest.raises(ConfigError, match="--amqp-queue-type: bad value 'mirrored'"):
        options.parseOptions(["--amqp-queue-type", "mirrored"])
    with pytest.raises(ConfigError, match="--amqp-max-backoff: bad value '0': must be more than 0"):
        MQOptions().parseOptions(["--amqp-max-backoff", "0"])
    options = MQOptions()
    options.parseOptions(["--queue", "amqp://u:p@h1:5672,h2:5673/v", "--amqp-queue-type", "quorum",
                          "--amqp-max-backoff", "2"])
    queue = make_queue(options)
    assert queue.queue_type == "quorum" and queue.max_backoff == 2
    assert [(b.host, b.port) for b in queue.link.brokers] == [("h1", 5672), ("h2", 5673)]
    # a bad host of the list is the option's error, not urllib's or pika's traceback alone
    for url, says in [("amqp://u:p@h1:abc,h2/v", "Port could not be cast"), ("amqp://u:p@h1,,h2/v", "empty host"),
                      ("amqp://u:p@h1,h2/v?heartbeat=x", "heartbeat")]:
        options = MQOptions()
        options.parseOptions(["--queue", url])
        with pytest.raises(ConfigError, match=f"^--queue: .*{says}") as info:
            make_queue(options)
        assert ":p@" not in str(info.value)


def _queues(prefix: str) -> dict[str, dict]:
    """name -> {"type": …, "arguments": {…}} of the broker's queues with ``prefix``."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not found: cannot read the queues' arguments")
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--formatter", "json", "name", "type", "arguments"],
        check=True, capture_output=True, timeout=60).stdout
    return {
        q["name"]: {"type": q["type"], "arguments": {a[0]: a[2] for a in q["arguments"]}}
        for q in json.loads(out) if q["name"].startswith(prefix)
    }


@pytest_twisted.inlineCallbacks
def test_quorum_declares_every_queue_quorum_and_buckets_at_least_once(amqp_prefix, own):
    q = own(AmqpQueue(AMQP_URL, prefix=amqp_prefix, timeout=3.0, queue_type="quorum"))
    yield q.start()
    yield q.publish([Publication("custom", {"n": 1})])  # a queue declared on first use
    queues = _queues(amqp_prefix)
    assert {info["type"] for info in queues.values()} == {"quorum"}
    assert amqp_prefix + "custom" in queues and amqp_prefix + "outbox" in queues
    buckets = [queues[f"{amqp_prefix}mq-delay-{s}"]["arguments"] for s in DELAY_BUCKETS]
    for arguments in buckets:
        assert arguments["x-dead-letter-strategy"] == "at-least-once"
        assert arguments["x-overflow"] == "reject-publish"
        assert arguments["x-dead-letter-exchange"] == ""
    # and a delayed document still comes back through the at-least-once dead-lettering
    leases = Leases()
    q.consume("outbox", leases)
    yield q.publish([Publication("outbox", {"n": 2, "nextattempt": int(time.time()) + 1})])
    lease = yield leases.next(timeout=15)
    assert lease.document["n"] == 2
    yield q.settle(lease, [])


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
@pytest_twisted.inlineCallbacks
def test_a_queue_declared_otherwise_is_used_and_a_full_one_refuses(amqp_prefix, own, logged,
                                                                   queue_type):
    # The operator's own outbox: a length limit that refuses publishes (and, for the quorum
    # node, of the other type too).
    conn, ch = blocking_channel()
    ch.queue_declare(amqp_prefix + "outbox", durable=True,
                     arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    conn.close()
    q = own(AmqpQueue(AMQP_URL, prefix=amqp_prefix, timeout=3.0, queue_type=queue_type))
    yield q.start()
    assert q.connected  # a 406 on declare is not a crash
    said = [e for e in logged if "exists with other arguments" in e.get("log_format", "")]
    assert len(said) == 1 and said[0]["queue"] == amqp_prefix + "outbox"
    assert "inequivalent arg" in said[0]["found"]  # the broker's words on what differs
    yield q.publish([Publication("outbox", {"n": 1}), Publication("outbox", {"n": 2})])
    channel = q.link.publisher
    with pytest.raises(QueueUnavailable, match="refused the message"):
        yield q.publish([Publication("outbox", {"n": 3})])  # 451 to the SMTP client
    # A nack costs that publication and the publishing channel (a new one asks the queue's
    # leader again: see AmqpLink._renew_publisher), never the connection.
    yield wait_until(lambda: q.link.publisher is not channel and q.connected, timeout=5)
    assert not channel.is_open
    leases = Leases()
    q.consume("outbox", leases, prefetch=2)
    found = set()
    while len(found) < 2:
        lease = yield leases.next()
        found.add(lease.document["n"])
        yield q.settle(lease, [])
    assert found == {1, 2}


@pytest_twisted.inlineCallbacks
def test_a_refused_outcome_is_published_again_while_the_lease_holds(amqp_prefix, own):
    conn, ch = blocking_channel()
    ch.queue_declare(amqp_prefix + "results", durable=True, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", amqp_prefix + "results", b"{}")  # full
    q = own(AmqpQueue(AMQP_URL, prefix=amqp_prefix, timeout=1.5))
    yield q.start()
    yield q.publish([Publication("outbox", {"n": 1}), Publication("outbox", {"n": 2})])
    leases = Leases()
    q.consume("outbox", leases, prefetch=1)
    first = yield leases.next()
    started = time.monotonic()
    settling = q.settle(first, [Publication("results", {"n": 1})])
    outcome: list = []
    settling.addBoth(lambda result: outcome.append(result) or result)
    yield sleep(0.8)
    assert outcome == []  # refused, and being tried again
    ch.queue_purge(amqp_prefix + "results")  # room again: the next try is stored
    yield settling
    assert time.monotonic() - started >= SETTLE_PAUSE
    second = yield leases.next()
    assert second.document["n"] == 2 and len(leases.seen) == 2  # the first was not given back
    # Full again (with the first outcome), for longer than the queue's timeout: settle fails
    # and the lease stays, to be released.
    with pytest.raises(QueueUnavailable, match="refused"):
        yield q.settle(second, [Publication("results", {"n": 2})])
    assert time.monotonic() - started >= 1.5
    q.release(second)
    again = yield leases.next()
    assert again.document["n"] == 2
    # A settle trying again ends with stop(), not a timeout later: cancelled while it pauses
    # between two tries, or failed with the connection when a loaded machine's broker had not
    # refused the first try yet.
    pausing = q.settle(again, [Publication("results", {"n": 2})])
    yield sleep(0.2)
    stopping = time.monotonic()
    yield q.stop()
    with pytest.raises((defer.CancelledError, QueueUnavailable)):
        yield pausing
    assert time.monotonic() - stopping < 1.0
    conn.close()


@pytest_twisted.inlineCallbacks
def test_a_list_of_brokers_fails_over_to_the_next(amqp_prefix, own, logged):
    relay = own(Relay())
    relay.start()
    # A dead one first, then the relay (to be cut), then the broker itself.
    hosts = f"127.0.0.1:{closed_port()},127.0.0.1:{relay.port},127.0.0.1:{BROKER_PORT}"
    url = AMQP_URL.replace(f"127.0.0.1:{BROKER_PORT}", hosts)
    q = own(AmqpQueue(url, prefix=amqp_prefix, timeout=2.0, max_backoff=0.5))
    yield q.start()
    yield q.wait_connected(10)
    assert q.link.current == 1  # the relay: the first that answered
    leases = Leases()
    q.consume("outbox", leases, prefetch=10)
    yield q.publish([Publication("outbox", {"n": 1})])
    held = yield leases.next()  # unsettled when its broker goes
    yield relay.stop()
    yield wait_until(lambda: q.connected and q.link.current == 2, timeout=10)
    again = yield leases.next()  # the broker redelivers the void lease; the consumer restarted
    assert again.id == held.id
    with pytest.raises(QueueUnavailable):
        yield q.settle(held, [])
    yield q.publish([Publication("outbox", {"n": 2})])  # confirms on the new connection
    after = yield leases.next()
    yield defer.gatherResults([q.settle(again, []), q.settle(after, [])])
    lost = [e for e in logged if "lost" in e.get("log_format", "") and "next" in e]
    assert lost and lost[0]["next"].startswith(f"127.0.0.1:{BROKER_PORT}/")


@pytest_twisted.inlineCallbacks
def test_a_redelivery_whose_outcome_is_stored_is_not_delivered_again(amqp_prefix, own):
    q = own(AmqpQueue(AMQP_URL, prefix=amqp_prefix, timeout=3.0, queue_type="quorum"))
    yield q.start()
    yield q.publish([Publication("outbox", {"n": 1})])
    leases = Leases()
    q.consume("outbox", leases, prefetch=1)
    lease = yield leases.next()
    # The outcome goes out; the lease's channel goes before its ack can (a broker node lost
    # between the two): the broker redelivers the document with redelivered set.
    settled = q.settle(lease, [Publication("results", {"n": 1, "results": []})])
    lease.token.channel.close()
    with pytest.raises(QueueUnavailable, match="outcome stored"):
        yield settled
    yield wait_until(lambda: q.repeats_skipped == 1, timeout=10)
    yield sleep(0.5)
    assert len(leases.seen) == 1  # handed out once
    stats = yield q.stats()
    assert stats["outbox"] == 0 and stats["results"] == 1
