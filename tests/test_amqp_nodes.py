"""Several real mqmta nodes (``twistd -n mqmta --queue amqp://…``) on one RabbitMQ broker,
delivering to Postfix's smtp-sink: each message exactly once, a node killed with SIGKILL, the
broker cut off behind a relay.

Each test gets a vhost of its own (``rabbitmqctl``), because a node uses MailerQ's queue names
as they are; skipped when there is no broker, no rabbitmqctl or no smtp-sink.
``MQMTA_NODES_MESSAGES`` sets the two-node load (default 500; 2000 before, 11-20 s of the suite).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.conftest import sleep, wait_until
from tests.conftest_amqp import Relay, require_broker
from tests.conftest_nodes import Node, Sink, inject, stop_all, up

pytestmark = pytest.mark.slow

NODES_MESSAGES = int(os.environ.get("MQMTA_NODES_MESSAGES", "500"))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def vhost() -> Any:
    require_broker()
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not found: cannot make a vhost for the nodes")
    name = f"mqtest-{uuid.uuid4().hex[:10]}"
    try:
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"rabbitmqctl cannot add a vhost here: {e}")
    yield name
    _rabbitmqctl("delete_vhost", name)


@pytest.fixture
def cluster(vhost: str, tmp_path: Any) -> Any:
    made: list[Any] = []

    class Cluster:
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"

        def sink(self, delay: int = 0) -> Sink:
            sink = Sink(str(tmp_path / f"sink{len(made)}"), delay)
            made.append(sink)
            return sink

        def node(self, name: str, sink: Sink, url: str | None = None, *extra: str) -> Node:
            node = Node(name, str(tmp_path), url or self.url, sink, extra)
            made.append(node)
            return node

    yield Cluster()
    stop_all(made)


def outbox_count(url: str) -> int:
    """Documents in the vhost's outbox, unacknowledged ones included once no node consumes."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare("outbox", passive=True).method.message_count
    finally:
        conn.close()


@pytest_twisted.inlineCallbacks
def test_two_nodes_deliver_every_message_exactly_once(cluster):
    sink = cluster.sink()
    a, b = cluster.node("nodea", sink), cluster.node("nodeb", sink)
    yield up(a, b)
    count = NODES_MESSAGES
    batches = [range(i, count, 4) for i in range(4)]  # four SMTP sessions into node a
    # Retrying a 4xx as any client would: the node listens before its broker connection is up.
    until = time.time() + 60
    results = yield defer.gatherResults(
        [threads.deferToThread(inject, a.port, batch, until) for batch in batches])
    accepted = set().union(*(r[0] for r in results))
    assert len(accepted) == count
    yield wait_until(lambda: len(sink.subjects()) >= count, timeout=180, step=0.5)
    # Both nodes stopped and nothing left on the broker: no duplicate is still on its way.
    yield defer.gatherResults([threads.deferToThread(n.kill) for n in (a, b)])
    assert outbox_count(cluster.url) == 0
    subjects = sink.subjects()
    assert len(subjects) == count and len(set(subjects)) == count
    helos = sink.helos()
    assert helos.get("nodea.test", 0) > 0 and helos.get("nodeb.test", 0) > 0, helos


@pytest_twisted.inlineCallbacks
def test_kill9_of_a_delivering_node_loses_nothing(cluster):
    # Node a delivers to a sink slow to answer DATA, so it has work in flight when it is killed;
    # node b to a quick one, so what node a leaves behind is drained at once (with one slow sink
    # for both, node b took 15 s at 1 s per DATA).
    slow, quick = cluster.sink(delay=1), cluster.sink()
    a, b = cluster.node("nodea", slow), cluster.node("nodeb", quick)
    yield up(a, b)
    # 150: several times what the two nodes hold in flight (prefetch 20 each, plus sessions), so
    # node a has work in flight when it is killed.
    accepted, refused = yield threads.deferToThread(inject, b.port, range(150), time.time() + 60)
    assert not refused and len(accepted) == 150
    yield wait_until(lambda: slow.helos().get("nodea.test", 0) >= 5, timeout=60, step=0.2)
    a.kill(signal.SIGKILL)
    yield wait_until(lambda: set(slow.subjects() + quick.subjects()) >= {f"msg {i}" for i in accepted},
                     timeout=240, step=0.2)
    subjects = slow.subjects() + quick.subjects()
    repeats = len(subjects) - len(set(subjects))
    # Repeats only for what node a had in flight (its prefetch, plus sessions mid-DATA).
    assert repeats <= 20 + 10, repeats


@pytest_twisted.inlineCallbacks
def test_broker_cut_off_and_back_under_a_node(cluster):
    relay = Relay()
    relay.start()
    sink = cluster.sink()
    # Reconnecting at most 1 s apart: the default backoff let the node sleep 4 s past the relay's return.
    a = cluster.node("nodea", sink, cluster.url.replace(":5672/", f":{relay.port}/"), "--amqp-max-backoff", "1")
    yield up(a)
    yield threads.deferToThread(inject, a.port, range(2000, 2001), time.time() + 30)  # warm
    injecting = threads.deferToThread(inject, a.port, range(400))
    # The cuts are timed into a running SMTP client in another thread, which reports nothing until
    # it ends: pacing by the clock is all there is; "accepted and refused" below checks it worked.
    for _ in range(2):
        yield sleep(1.0)
        yield relay.stop()
        yield sleep(2.0)  # SMTP answers 451 meanwhile
        relay.start()
    accepted, refused = yield injecting
    assert accepted and refused  # the cuts fell into the traffic: 4xx, never a false 250
    # every 250 delivered, and delivery resumed by itself after the cuts
    yield wait_until(lambda: set(sink.subjects()) >= {f"msg {i}" for i in accepted},
                   timeout=120, step=0.5)
    # publishing resumed too: the node accepts mail again without a restart
    more, refused_after = yield threads.deferToThread(
        inject, a.port, range(1000, 1010), time.time() + 20)
    assert len(more) == 10 and not refused_after
    yield wait_until(lambda: set(sink.subjects()) >= {f"msg {i}" for i in more},
                   timeout=60, step=0.5)
    # In a thread: the relay runs on this reactor, and the node's shutdown talks to the broker
    # through it (blocking here left the node hanging until Node.kill's 20 s and a SIGKILL).
    yield threads.deferToThread(a.kill)
    assert "shutdown complete" in a.tail(), a.tail()  # a clean shutdown after the cuts, not a SIGKILL
    yield relay.stop()
