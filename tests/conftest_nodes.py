"""Real mqmta nodes for the tests that run several: ``twistd -n mqmta`` on an AMQP queue,
Postfix's smtp-sink to deliver to, and an SMTP client that knows which messages got 250
(tests/test_amqp_nodes.py on one broker, tests/test_rabbit_cluster.py on a cluster).

Not a conftest.py on purpose: the tests that need it import it.
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
from typing import Any

import pytest
from twisted.internet import defer

from tests.conftest import free_port, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Sink:
    """smtp-sink writing one file per message (``-d``), optionally slow to answer DATA."""

    def __init__(self, directory: str, delay: int = 0, port: int = 0, soft_reject: str = "") -> None:
        """``port``: 0 for a free one; ``soft_reject``: commands answered 4xx (``-r``)."""
        if shutil.which("smtp-sink") is None:
            pytest.skip("smtp-sink (Postfix) not installed")
        self.directory = directory
        self.port = port or free_port()
        os.makedirs(directory, exist_ok=True)
        args = ["smtp-sink", "-u", os.environ.get("USER", "root"), "-d",
                os.path.join(directory, "%H%M%S."), "-m", "200"]
        if delay:
            args += ["-w", str(delay)]
        if soft_reject:
            args += ["-r", soft_reject]
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
    """``twistd -n mqmta`` on the AMQP queue ``amqp_url``, relaying everything to ``sink``."""

    def __init__(self, name: str, workdir: str, amqp_url: str, sink: Sink,
                 extra: tuple[str, ...] = ()) -> None:
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
             "--hostname", f"{name}.test", "--www-port=", *extra],
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


@defer.inlineCallbacks
def up(*nodes: Node) -> Any:
    try:
        yield wait_until(lambda: all(n.listening() for n in nodes), timeout=30, step=0.2)
    except AssertionError:
        raise AssertionError("\n".join(n.tail() for n in nodes)) from None




def consumers(vhost: str, queue: str = "outbox") -> int:
    """Consumers attached to ``queue`` of ``vhost`` (0 while it is not declared yet): a node
    listens for SMTP before its delivery worker consumes, and mail injected meanwhile all goes to
    the nodes already consuming."""
    import pika

    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    with pika.BlockingConnection(params) as conn:
        try:
            return conn.channel().queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0


def stop_all(made: list[Any]) -> None:
    """Stop the sinks and nodes a test made, the last made first, whatever state they are in."""
    for thing in reversed(made):
        if isinstance(thing, Node):
            if thing.proc.poll() is None:
                thing.kill()
            else:
                thing.log.close()
        else:
            thing.stop()
