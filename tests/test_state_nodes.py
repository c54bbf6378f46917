"""Two real mqmta nodes (``twistd -n mqmta``) on one RabbitMQ broker sharing their limits through
a real Redis (``--state redis://…``): a destination with ``connection_limit = 2`` never sees more
than two connections at once, from both nodes together, while each node alone would open two.
The receiver counts its concurrent connections and answers each message slowly, so that both
nodes want more connections than the limit.  Skipped without a broker, rabbitmqctl or Redis."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, threads
from twisted.protocols.basic import LineReceiver

from tests.conftest import free_port, wait_until
from tests.conftest_nodes import consumers
from tests.conftest_redis import redis_url  # noqa: F401  (a fixture)
from tests.test_amqp_nodes import vhost  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = 24


class Counting(protocol.ServerFactory):
    """Counts connections open at once; every message is answered after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.open = 0
        self.max_open = 0
        self.helos: list[str] = []

    def buildProtocol(self, addr: Any) -> Slow:
        p = Slow()
        p.factory = self
        return p


class Slow(LineReceiver):
    factory: Counting

    def connectionMade(self) -> None:
        self.factory.open += 1
        self.factory.max_open = max(self.factory.max_open, self.factory.open)
        self.in_data = False
        self.helo = ""
        self.sendLine(b"220 slow.test ESMTP")

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.helos.append(self.helo)
                reactor.callLater(self.factory.delay, self.sendLine, b"250 2.0.0 queued")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.helo = line[5:].decode()
            self.sendLine(b"250-slow.test\r\n250 PIPELINING")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.1.0 ok")


def start_node(name: str, workdir: str, *args: str) -> tuple[subprocess.Popen, int, Any]:
    port = free_port()
    data = os.path.join(workdir, name)
    os.makedirs(data, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(os.path.join(data, "log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mqmta",
         "--smtp-port", str(port), "--data-dir", data, "--hostname", f"{name}.test", "--www-port=", *args],
        cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, port, log


def inject(port: int, first: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(first, first + count):
            s.sendmail("s@example.org", [f"r{i}@example.com"], f"Subject: {i}\r\n\r\nbody\r\n")


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_a_connection_limit_through_redis(vhost, redis_url, tmp_path):  # noqa: F811
    receiver = Counting(delay=0.3)
    listening = reactor.listenTCP(0, receiver, interface="127.0.0.1")
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('["127.0.0.1"]\nconnection_limit = 2\nmax_deliveries_per_connection = 1\n')
    common = ("--queue", f"amqp://guest:guest@127.0.0.1:5672/{vhost}", "--state", redis_url,
              "--shaping", str(shaping), "--smarthost", f"127.0.0.1:{listening.getHost().port}",
              "--smtp-client-security=none", "--max-idle-time=0")
    nodes = [start_node(n, str(tmp_path), *common) for n in ("nodea", "nodeb")]
    try:
        for _proc, port, _ in nodes:
            await wait_until(lambda port=port: _listening(port), timeout=60, what="a node listening")
        # Both must be consuming, or the first one takes every message (the test wants both).
        await wait_until(lambda: consumers(vhost) >= 2, timeout=60, what="both nodes consuming")
        await threads.deferToThread(inject, nodes[0][1], 0, MESSAGES // 2)
        await threads.deferToThread(inject, nodes[1][1], MESSAGES // 2, MESSAGES // 2)
        await wait_until(lambda: len(receiver.helos) >= MESSAGES, timeout=90, what="every message delivered")
        assert receiver.max_open == 2  # reached (both nodes wanted more), never passed
        assert {"nodea.test", "nodeb.test"} <= set(receiver.helos)
        assert len(receiver.helos) == MESSAGES
    finally:
        for proc, _, _log in nodes:
            proc.terminate()
        for proc, _, log in nodes:
            await threads.deferToThread(proc.wait, 30)
            log.close()
        await listening.stopListening()


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
