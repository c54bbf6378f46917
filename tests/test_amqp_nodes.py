"""Several real mqmta nodes (``twistd -n mqmta --queue amqp://…``) on one RabbitMQ broker,
delivering to Postfix's smtp-sink: each message exactly once, a node killed with SIGKILL, the
broker cut off behind a relay.

Each test gets a vhost of its own (``rabbitmqctl``), because a node uses MailerQ's queue names
as they are; skipped when there is no broker, no rabbitmqctl or no smtp-sink.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.conftest import free_port, sleep, wait_until
from tests.conftest_amqp import Relay, require_broker

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


class Sink:
    """smtp-sink writing one file per message (``-d``), optionally slow to answer DATA."""

    def __init__(self, directory: str, delay: int = 0) -> None:
        if shutil.which("smtp-sink") is None:
            pytest.skip("smtp-sink (Postfix) not installed")
        self.directory = directory
        self.port = free_port()
        os.makedirs(directory, exist_ok=True)
        args = ["smtp-sink", "-u", os.environ.get("USER", "root"), "-d",
                os.path.join(directory, "%H%M%S."), "-m", "200"]
        if delay:
            args += ["-w", str(delay)]
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{self.port}", "200"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _first(self, prefix: bytes) -> list[str]:
        """The first ``prefix`` header line of each message file, without the prefix."""
        found = []
        for path in glob.glob(os.path.join(self.directory, "*")):
            try:
                with open(path, "rb") as f:
                    for line in f:
                        if line.startswith(prefix):
                            found.append(line[len(prefix):].strip().decode())
                            break
            except FileNotFoundError:  # smtp-sink dropped a file it had begun (the session broke)
                continue
        return found

    def subjects(self) -> list[str]:
        return self._first(b"Subject: ")

    def helos(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for helo in self._first(b"X-Helo-Args: "):
            counts[helo] = counts.get(helo, 0) + 1
        return counts

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Node:
    def __init__(self, name: str, workdir: str, amqp_url: str, sink: Sink) -> None:
        self.name = name
        self.port = free_port()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(os.path.join(self.dir, "log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "mqmta",
             "--queue", amqp_url, "--amqp-prefetch", "20", "--smtp-port", str(self.port),
             "--smarthost", f"127.0.0.1:{sink.port}", "--data-dir", self.dir,
             "--hostname", f"{name}.test", "--www-port="],
            cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def tail(self) -> str:
        with open(os.path.join(self.dir, "log"), "rb") as f:
            return f.read()[-3000:].decode("utf-8", "replace")


def inject(port: int, numbers: range, retry_until: float = 0.0) -> tuple[set[int], set[int]]:
    """Send one message per number; returns (accepted with 250, refused).  A refused or broken
    connection is reopened; with ``retry_until`` a refused message is retried until then."""
    accepted: set[int] = set()
    refused: set[int] = set()
    client = None
    for i in numbers:
        while True:
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                                          timeout=30)
                client.sendmail("s@example.org", [f"r{i}@example.com"],
                                f"Subject: msg {i}\r\nMessage-ID: <m{i}@t>\r\n\r\nbody {i}\r\n")
                accepted.add(i)
                break
            except (smtplib.SMTPException, OSError):
                try:
                    if client is not None:
                        client.close()
                finally:
                    client = None
                if time.time() >= retry_until:
                    refused.add(i)
                    break
                time.sleep(0.1)
    if client is not None:
        client.quit()
    return accepted, refused


@pytest.fixture
def cluster(vhost: str, tmp_path: Any) -> Any:
    made: list[Any] = []

    class Cluster:
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"

        def sink(self, delay: int = 0) -> Sink:
            sink = Sink(str(tmp_path / f"sink{len(made)}"), delay)
            made.append(sink)
            return sink

        def node(self, name: str, sink: Sink, url: str | None = None) -> Node:
            node = Node(name, str(tmp_path), url or self.url, sink)
            made.append(node)
            return node

    yield Cluster()
    for thing in reversed(made):
        if isinstance(thing, Node):
            if thing.proc.poll() is None:
                thing.kill()
            else:
                thing.log.close()
        else:
            thing.stop()


def outbox_count(url: str) -> int:
    """Documents in the vhost's outbox, unacknowledged ones included once no node consumes."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare("outbox", passive=True).method.message_count
    finally:
        conn.close()


@defer.inlineCallbacks
def _up(*nodes: Node) -> Any:
    try:
        yield wait_until(lambda: all(n.listening() for n in nodes), timeout=30, step=0.2)
    except AssertionError:
        raise AssertionError("\n".join(n.tail() for n in nodes)) from None


@pytest_twisted.inlineCallbacks
def test_two_nodes_deliver_every_message_exactly_once(cluster):
    sink = cluster.sink()
    a, b = cluster.node("nodea", sink), cluster.node("nodeb", sink)
    yield _up(a, b)
    batches = [range(i, 2000, 4) for i in range(4)]  # four SMTP sessions into node a
    # Retrying a 4xx as any client would: the node listens before its broker connection is up.
    until = time.time() + 60
    results = yield defer.gatherResults(
        [threads.deferToThread(inject, a.port, batch, until) for batch in batches])
    accepted = set().union(*(r[0] for r in results))
    assert len(accepted) == 2000
    yield wait_until(lambda: len(sink.subjects()) >= 2000, timeout=180, step=0.5)
    # Both nodes stopped and nothing left on the broker: no duplicate is still on its way.
    yield defer.gatherResults([threads.deferToThread(n.kill) for n in (a, b)])
    assert outbox_count(cluster.url) == 0
    subjects = sink.subjects()
    assert len(subjects) == 2000 and len(set(subjects)) == 2000
    helos = sink.helos()
    assert helos.get("nodea.test", 0) > 0 and helos.get("nodeb.test", 0) > 0, helos


@pytest_twisted.inlineCallbacks
def test_kill9_of_a_delivering_node_loses_nothing(cluster):
    sink = cluster.sink(delay=1)  # slow DATA replies: node a has work in flight when killed
    a, b = cluster.node("nodea", sink), cluster.node("nodeb", sink)
    yield _up(a, b)
    # 150: several times what the two nodes hold in flight (prefetch 20 each, plus sessions), so
    # node a has work in flight when it is killed; every further message only adds drain time.
    accepted, refused = yield threads.deferToThread(inject, b.port, range(150), time.time() + 60)
    assert not refused and len(accepted) == 150
    yield wait_until(lambda: sink.helos().get("nodea.test", 0) >= 5, timeout=60, step=0.2)
    a.kill(signal.SIGKILL)
    yield wait_until(lambda: set(sink.subjects()) >= {f"msg {i}" for i in accepted},
                   timeout=240, step=1.0)
    subjects = sink.subjects()
    repeats = len(subjects) - len(set(subjects))
    # Repeats only for what node a had in flight (its prefetch, plus sessions mid-DATA).
    assert repeats <= 20 + 10, repeats


@pytest_twisted.inlineCallbacks
def test_broker_cut_off_and_back_under_a_node(cluster):
    relay = Relay()
    relay.start()
    sink = cluster.sink()
    a = cluster.node("nodea", sink, url=cluster.url.replace(":5672/", f":{relay.port}/"))
    yield _up(a)
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
    a.kill()
    yield relay.stop()
