"""A farm of SMTP receivers on loopback addresses (127.0.1.x, one port for all), each with limits of
its own that it enforces and records, as the big mailbox providers do: concurrent connections,
messages per connection, messages per second; one greylists, one answers a random 4xx to a tenth
of the messages, one is down.  Every accepted message is recorded with the address it came from
and the EHLO name it was sent with.

Shared by the test (tests/test_shaping_farm.py, in its own reactor) and the bench's ``farm``
scenario (``python -m bench.farm DIR`` serves the farm and its DNS zone in a process of its own
and writes what the receivers saw to ``DIR/stats.json``).  :data:`FARM` is the farm, :data:`SHAPING`
the shaping file that fits it, :func:`plan` the load.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.protocols.basic import LineReceiver


@dataclass(frozen=True)
class Spec:
    """One receiver: its name (``mx.NAME.farm``), address, the domains whose MX it is, and the
    limits it enforces (None: none)."""

    name: str
    address: str
    domains: tuple[str, ...]
    #: a connection beyond this many at once is refused with a 421 greeting
    max_connections: int | None = None
    #: MAIL after this many messages on one connection gets ``421 4.7.0 rate limited``
    messages_per_connection: int | None = None
    #: more MAIL commands than this within any one second break its rate
    per_second: int | None = None
    #: the first attempt of every recipient gets ``451 4.7.1`` (greylisting)
    greylist: bool = False
    #: this fraction of messages gets a random 4xx after DATA (seeded: the same sequence every run)
    transient: float = 0.0
    #: nothing listens: connections are refused
    down: bool = False

    @property
    def host(self) -> str:
        return f"mx.{self.name}.farm"


#: The farm.  ``suspend`` shares ``limit``'s per-connection limit, but the shaping file does not
#: tell the sender about it: its 421 is what the automation rule reacts to.  ``dsn`` receives
#: the bounces an MTA sends back to the senders' domain (Postfix does; mqmta queues them in ``dsn``).
FARM: tuple[Spec, ...] = (
    Spec("conc", "127.0.1.1", ("conc.test", "conc2.test"), max_connections=2),
    Spec("limit", "127.0.1.2", ("limit.test",), messages_per_connection=20),
    Spec("count", "127.0.1.3", ("count.test",), per_second=50),
    Spec("suspend", "127.0.1.4", ("suspend.test",), messages_per_connection=20),
    Spec("grey", "127.0.1.5", ("grey.test",), greylist=True),
    Spec("random", "127.0.1.6", ("random.test",), transient=0.1),
    Spec("down", "127.0.1.7", ("down.test",), down=True),
    Spec("src", "127.0.1.8", ("src.test",)),
    Spec("dsn", "127.0.1.9", ("sender.test",)),
)

SENDER = "farm@sender.test"

#: The shaping file an operator would write for this farm: each receiver's limits, with the rate
#: at 90 % of what the receiver allows (the receiver sees arrival times, which jitter).
SHAPING = r"""
[default]
connection_limit = 4
idle_timeout = "2s"

["conc.test"]                  # conc2.test has the same MX host: the two share these limits
connection_limit = 2

["limit.test"]
max_deliveries_per_connection = 20

["count.test"]
max_message_rate = "45/s"

["suspend.test"]
connection_limit = 1
[["suspend.test".automation]]
regex = '^421 4\.7\.0 .*rate limited'
action = "suspend"
duration = "1s"

[sources."127.0.0.2"]
ehlo_domain = "mta2.farm.test"
[sources."127.0.0.3"]
ehlo_domain = "mta3.farm.test"
[sources."127.0.0.4"]
ehlo_domain = "mta4.farm.test"
[pools.bulk]
sources = ["127.0.0.3:3", "127.0.0.4"]
"""

#: (domain, share of the load in %, x-mq headers of its messages).  ``down.test``'s messages give
#: up after three attempts (a per-message setting: a retried transient 4xx elsewhere must not).
LOAD: tuple[tuple[str, int, dict[str, str]], ...] = (
    ("conc.test", 14, {}),
    ("conc2.test", 6, {}),
    ("limit.test", 20, {}),
    ("count.test", 4, {}),
    ("suspend.test", 1, {}),
    ("grey.test", 18, {}),
    ("random.test", 24, {}),
    ("down.test", 1, {"X-MQ-MaxAttempts": "3"}),
    ("src.test", 4, {"X-MQ-Ips": '["127.0.0.2"]'}),
    ("src.test", 8, {"X-MQ-Pool": "bulk"}),
)

#: the least load :func:`plan` spreads (each line gets at least 30 messages)
LEAST = 500


@dataclass(frozen=True)
class Batch:
    """One line of the load: ``count`` messages, each to one recipient, ``1u{tag}@domain``,
    ``2u{tag}@domain`` … (smtp-source's ``-N``), with these headers."""

    domain: str
    tag: str
    count: int
    headers: tuple[tuple[str, str], ...]

    def recipients(self) -> list[str]:
        return [f"{i}u{self.tag}@{self.domain}" for i in range(1, self.count + 1)]


def plan(n: int) -> list[Batch]:
    """``n`` messages over the farm's domains by :data:`LOAD`, at least 30 on each line
    (``suspend.test`` must pass its 20 per connection), the rest to the largest line."""
    if n < LEAST:
        raise ValueError(f"the farm's load is at least {LEAST} messages, not {n}")
    counts = [max(30, n * share // 100) for _, share, _ in LOAD]
    counts[counts.index(max(counts))] += n - sum(counts)
    return [Batch(domain, f"x{line}", count, tuple(headers.items()))
            for line, ((domain, _, headers), count) in enumerate(zip(LOAD, counts, strict=True))]


def message_text(batch: Batch, size: int = 2000) -> str:
    """The message smtp-source sends (``-F``) for ``batch``: headers, then about ``size`` bytes."""
    head = [f"From: {SENDER}", f"To: farm@{batch.domain}", "Subject: farm",
            *(f"{k}: {v}" for k, v in batch.headers)]
    body = ["x" * 76] * max(1, size // 78)
    return "\n".join([*head, "", *body]) + "\n"


def inject(port: int, batches: list[Batch], workdir: str, source: str = "smtp-source", timeout: float = 120) -> None:
    """Send the batches to ``127.0.0.1:port`` (blocking), one smtp-source per batch, all at once,
    each with two sessions sending message after message; raises RuntimeError when one fails."""
    import subprocess

    runs = []
    for batch in batches:
        path = os.path.join(workdir, f"{batch.tag}.eml")
        with open(path, "w") as f:
            f.write(message_text(batch))
        runs.append(subprocess.Popen(
            [source, "-N", "-d", "-s", "2", "-m", str(batch.count), "-F", path, "-f", SENDER,
             "-t", f"u{batch.tag}@{batch.domain}", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    failed = []
    for batch, run in zip(batches, runs, strict=True):
        try:
            out, _ = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            out, _ = run.communicate()
            failed.append(f"{batch.tag}: timed out")
            continue
        if run.returncode:
            failed.append(f"{batch.tag}: exit {run.returncode}: {out.strip()[-200:]}")
    if failed:
        raise RuntimeError("smtp-source failed: " + "; ".join(failed))


def zone_records(bulk: int = 0) -> dict[str, list[tuple]]:
    """The DNS zone: each domain's MX is its receiver, each receiver's A its address; and for the
    end-to-end load, ``example.com`` and ``bulk`` domains ``d0.test`` … on 127.0.0.1."""
    records: dict[str, list[tuple]] = {
        "example.com": [("MX", 10, "mx1.example.com")], "mx1.example.com": [("A", "127.0.0.1")],
    }
    for i in range(bulk):
        records[f"d{i}.test"] = [("MX", 10, f"mx.d{i}.test")]
        records[f"mx.d{i}.test"] = [("A", "127.0.0.1")]
    for spec in FARM:
        for domain in spec.domains:
            records[domain] = [("MX", 10, spec.host)]
        records[spec.host] = [("A", spec.address)]
    return records


# --------------------------------------------------------------------------- receivers

TRANSIENT_REPLIES = (
    b"450 4.2.1 mailbox busy, try again later",
    b"451 4.3.0 temporary local problem",
    b"452 4.3.1 insufficient system storage",
)


class Receiver(protocol.ServerFactory):
    """One receiver of the farm: enforces its :class:`Spec` and records what it saw."""

    def __init__(self, spec: Spec, seed: int = 14) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.open = 0
        self.max_open = 0
        #: when each connection was made
        self.connections: list[float] = []
        #: when each ``421 rate limited`` was answered
        self.rate_limited: list[float] = []
        #: when each MAIL was accepted
        self.mail_times: list[float] = []
        self.recent: deque[float] = deque()
        self.max_per_second = 0
        self.violations: Counter[str] = Counter()
        self.greylisted: set[str] = set()
        self.transient = 0
        #: recipient -> (peer address, EHLO name) of its accepted message
        self.accepted: dict[str, tuple[str, str]] = {}
        self.duplicates = 0

    def buildProtocol(self, addr: Any) -> FarmSMTP:
        p = FarmSMTP()
        p.factory = self
        return p

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": len(self.accepted), "duplicates": self.duplicates, "connections": len(self.connections),
            "max_open": self.max_open, "max_per_second": self.max_per_second,
            "rate_limited": len(self.rate_limited), "greylisted": len(self.greylisted),
            "transient": self.transient, "violations": dict(self.violations),
            "sources": sorted([*k, n] for k, n in Counter(self.accepted.values()).items()),
        }


class FarmSMTP(LineReceiver):
    factory: Receiver
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        f = self.factory
        f.open += 1
        f.max_open = max(f.max_open, f.open)
        f.connections.append(reactor.seconds())
        self.ehlo = ""
        self.sent = 0
        self.rcpts: list[str] = []
        self.in_data = False
        limit = f.spec.max_connections
        if limit is not None and f.open > limit:
            f.violations["connections"] += 1
            self.sendLine(b"421 4.7.0 too many connections from you")
            self.transport.loseConnection()
            return
        self.sendLine(f"220 {f.spec.host} ESMTP farm".encode())

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.end_of_data()
            return
        verb = line[:4].upper()
        handler = getattr(self, "smtp_" + verb.decode("ascii", "replace"), None)
        if handler is None:
            self.sendLine(b"502 5.5.2 unknown command")
        else:
            handler(line)

    def smtp_EHLO(self, line: bytes) -> None:
        self.ehlo = line[5:].decode().strip()
        self.sendLine(f"250-{self.factory.spec.host}".encode())
        self.sendLine(b"250-PIPELINING")
        self.sendLine(b"250 8BITMIME")

    smtp_HELO = smtp_EHLO

    def smtp_MAIL(self, line: bytes) -> None:
        f = self.factory
        now = reactor.seconds()
        limit = f.spec.messages_per_connection
        if limit is not None and self.sent >= limit:
            f.rate_limited.append(now)
            f.violations["messages per connection"] += 1
            self.sendLine(b"421 4.7.0 rate limited, try again later")
            self.transport.loseConnection()
            return
        f.mail_times.append(now)
        f.recent.append(now)
        while f.recent and f.recent[0] <= now - 1.0:
            f.recent.popleft()
        f.max_per_second = max(f.max_per_second, len(f.recent))
        if f.spec.per_second is not None and len(f.recent) > f.spec.per_second:
            f.violations["rate"] += 1
        self.rcpts = []
        self.sendLine(b"250 2.1.0 ok")

    def smtp_RCPT(self, line: bytes) -> None:
        f = self.factory
        start, end = line.find(b"<"), line.find(b">")
        rcpt = line[start + 1 : end].decode().lower()
        if f.spec.greylist and rcpt not in f.greylisted:
            f.greylisted.add(rcpt)
            self.sendLine(b"451 4.7.1 greylisted, try again later")
            return
        self.rcpts.append(rcpt)
        self.sendLine(b"250 2.1.5 ok")

    def smtp_DATA(self, line: bytes) -> None:
        if not self.rcpts:
            self.sendLine(b"554 5.5.1 no valid recipients")
            return
        self.in_data = True
        self.sendLine(b"354 go ahead")

    def end_of_data(self) -> None:
        f = self.factory
        self.sent += 1
        rcpts, self.rcpts = self.rcpts, []
        if f.spec.transient and f.rng.random() < f.spec.transient:
            f.transient += 1
            self.sendLine(f.rng.choice(TRANSIENT_REPLIES))
            return
        for rcpt in rcpts:
            if rcpt in f.accepted:
                f.duplicates += 1
            f.accepted[rcpt] = (self.transport.getPeer().host, self.ehlo)
        self.sendLine(b"250 2.0.0 queued")

    def smtp_RSET(self, line: bytes) -> None:
        self.rcpts = []
        self.sendLine(b"250 2.0.0 ok")

    def smtp_NOOP(self, line: bytes) -> None:
        self.sendLine(b"250 2.0.0 ok")

    def smtp_QUIT(self, line: bytes) -> None:
        self.sendLine(b"221 2.0.0 bye")
        self.transport.loseConnection()


class Farm:
    """The receivers of :data:`FARM` listening on one port (the down one holds its address and
    port without listening, so connections to it are refused and nobody else can take it)."""

    def __init__(self, specs: tuple[Spec, ...] = FARM, seed: int = 14) -> None:
        self.receivers = {spec.name: Receiver(spec, seed) for spec in specs}
        self.port = 0
        self.listening: list[Any] = []
        self.held: list[socket.socket] = []

    def __getitem__(self, name: str) -> Receiver:
        return self.receivers[name]

    def start(self) -> int:
        """Listen on a port free on every farm address; returns it."""
        for _ in range(20):
            try:
                self._listen(0)
                return self.port
            except (CannotListenError, OSError):
                self.stop()
        raise RuntimeError("no port free on every farm address")

    def _listen(self, port: int) -> None:
        for receiver in self.receivers.values():
            address = receiver.spec.address
            if receiver.spec.down:
                s = socket.socket()
                self.held.append(s)
                s.bind((address, port))
                port = port or s.getsockname()[1]
            else:
                self.listening.append(reactor.listenTCP(port, receiver, interface=address))
                port = port or self.listening[-1].getHost().port
        self.port = port

    def stop(self) -> Any:
        from twisted.internet import defer

        for s in self.held:
            s.close()
        self.held = []
        listening, self.listening = self.listening, []
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in listening])

    def stats(self) -> dict[str, Any]:
        return {name: r.stats() for name, r in self.receivers.items()}


def limit_violations(stats: dict[str, dict[str, Any]]) -> int:
    """Violations of the limits the sender was told about: every receiver's, except the 421s of
    ``suspend``, whose limit the shaping file leaves for the automation rule to find."""
    total = 0
    for name, s in stats.items():
        for kind, n in s["violations"].items():
            if not (name == "suspend" and kind == "messages per connection"):
                total += n
    return total


# --------------------------------------------------------------------------- as a process


def serve(state_dir: str, bulk: int = 0) -> None:
    """Serve the farm and its DNS zone (with ``bulk`` domains) until SIGTERM:
    ``state_dir/farm.json`` says their ports once they listen; ``state_dir/stats.json`` (what the
    receivers saw, and how many DNS queries the zone answered) is rewritten whenever it changes
    (checked every 50 ms)."""
    from twisted.internet import task

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.dnszone import DNSZone

    farm = Farm()
    port = farm.start()
    zone = DNSZone(zone_records(bulk))
    dns_port = zone.start()
    _write(os.path.join(state_dir, "farm.json"), {"port": port, "dns_port": dns_port})
    last: list[str] = [""]

    def dump() -> None:
        text = json.dumps({"receivers": farm.stats(), "dns_queries": len(zone.resolver.queries)}, sort_keys=True)
        if text != last[0]:
            last[0] = text
            _write(os.path.join(state_dir, "stats.json"), json.loads(text))

    loop = task.LoopingCall(dump)
    loop.start(0.05)
    reactor.addSystemEventTrigger("before", "shutdown", dump)
    reactor.run()


def _write(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
