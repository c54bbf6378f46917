"""Bulk scenarios: one message to many recipients (``fanout``) and a full outbox drained
(``drain``), mqmta against Postfix, both relaying to a fresh smtp-sink that dumps what it gets.

Every recipient of every message must arrive exactly once (the sink's dump has one ``X-Rcpt-Args``
record per RCPT, and each message carries its number in its ``Subject``), else the round is
``LOST``.  Each side's own count of delivered recipients (mqmta's ``success`` queue, Postfix's
``status=sent`` log lines) says when it is done, as smtp-sink counts transactions, not recipients.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.peers import Mqmta, Peer, Postfix, Server, mqmta_env
from bench.proc import LOOPBACK, REPO_DIR, BenchError, Reaper, run, tree_peak_rss, wait_for
from bench.scenarios import (
    STALL,
    Options,
    Relaying,
    ScenarioResult,
    _vhost,
    not_available,
    port_open,
    prepare_sides,
    round_robin,
)

#: fan-out: messages, recipients each, domains they are spread over, body size
FANOUT = (20, 1000, 50, 50_000)
#: drain: recipients per message, domains, body size (``--messages`` documents in all)
DRAIN = (1000, 100, 5_000)


def recipients(count: int, domains: int) -> list[str]:
    return [f"u{i}@d{i % domains}.example" for i in range(count)]


def message(number: int, size: int, tag: str) -> bytes:
    """A message of about ``size`` bytes whose Subject names it (``tag number``)."""
    head = (f"From: a@example.com\r\nTo: list@example.com\r\nSubject: {tag} {number}\r\n"
            f"Message-Id: <{tag}.{number}@bench.invalid>\r\n\r\n").encode()
    line = b"%06d " % number + b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def send_pipelined(port: int, sender: str, rcpts: list[str], data: bytes, timeout: float) -> None:
    """One transaction, the envelope in one write (PIPELINING, as both servers offer it)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if not line:
                    raise BenchError("connection closed by the server")
                if line[3:4] != b"-":
                    return line

        for expected, command in ((b"220", None), (b"250", b"EHLO bench.invalid\r\n")):
            if command:
                s.sendall(command)
            got = reply()
            if not got.startswith(expected):
                raise BenchError(f"server said {got!r}")
        envelope = [f"MAIL FROM:<{sender}>\r\n".encode()]
        envelope += [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
        s.sendall(b"".join(envelope) + b"DATA\r\n")
        for i in range(len(rcpts) + 1):
            got = reply()
            if not got.startswith(b"250"):
                raise BenchError(f"command {i} of the envelope refused: {got!r}")
        got = reply()
        if not got.startswith(b"354"):
            raise BenchError(f"DATA refused: {got!r}")
        body = data.replace(b"\r\n.", b"\r\n..")
        s.sendall(body + b".\r\n")
        got = reply()
        if not got.startswith(b"250"):
            raise BenchError(f"message refused: {got!r}")
        s.sendall(b"QUIT\r\n")


def dump_recipients(sink: Server, tag: str) -> Counter[tuple[str, str]]:
    """(message number, recipient) of every RCPT the sink received, counted; and the number of
    bytes seen of each message must not matter: the dump is checked for the Subject only."""
    seen: Counter[tuple[str, str]] = Counter()
    try:
        text = (sink.workdir / "dump").read_bytes()
    except OSError:
        return seen
    subject = re.compile(rb"\nSubject: " + tag.encode() + rb" (\d+)\r?\n")
    for record in text.split(b"X-Client-Addr: ")[1:]:
        m = subject.search(record)
        number = m.group(1).decode() if m else "?"
        for rcpt in re.findall(rb"X-Rcpt-Args: <?([^>\s]+)>?", record):
            seen[(number, rcpt.decode())] += 1
    return seen


class _Delivered:
    """Recipients the sink has received so far (its dump's ``X-Rcpt-Args`` records, read as the
    file grows: cheap enough to ask every 50 ms), and whether the side's queue is empty."""

    def __init__(self, side: Peer, server: Server) -> None:
        self.side = side.inner if isinstance(side, (Relaying, _Filled)) else side
        self.server = server
        self.dump = server.extra["sink"].workdir / "dump"
        self.offset = 0
        self.seen = 0

    def count(self) -> int:
        try:
            with open(self.dump, "rb") as f:
                if f.seek(0, os.SEEK_END) < self.offset:
                    self.offset = self.seen = 0  # replaced: count it again
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return self.seen
        end = chunk.rfind(b"\n") + 1
        self.seen += chunk[:end].count(b"X-Rcpt-Args: ")
        self.offset += end
        return self.seen

    def empty(self) -> bool:
        if isinstance(self.side, Postfix):
            return Postfix.queue_empty(self.server)
        try:
            return Mqmta.stats(self.server).get("outbox", 0) == 0
        except BenchError:
            return True  # no count of the broker's queues: every recipient arrived, that is all


def wait_delivered(side: Peer, server: Server, n: int, timeout: float) -> tuple[bool, int]:
    """Until the sink got ``n`` recipients and the queue is empty, or nothing moved for STALL."""
    delivered = _Delivered(side, server)
    progress = {"count": -1, "at": time.monotonic()}

    def done() -> bool:
        got = delivered.count()
        if got != progress["count"]:
            progress.update(count=got, at=time.monotonic())
        if got >= n and delivered.empty():
            return True
        return time.monotonic() - progress["at"] > STALL

    wait_for(done, timeout, 0.05)
    got = delivered.count()
    return got >= n and delivered.empty(), got


def check_dump(sink: Server, tag: str, messages: int, rcpts: list[str]) -> tuple[bool, str]:
    """Every (message, recipient) exactly once in the sink's dump."""
    wanted = {(str(i), r) for i in range(messages) for r in rcpts}
    seen = dump_recipients(sink, tag)
    twice = sum(1 for v in seen.values() if v > 1)
    missing = len(wanted - set(seen))
    extra = len(set(seen) - wanted)
    if twice or missing or extra:
        return False, f"sink: {missing} recipients missing, {twice} twice, {extra} unknown"
    return True, f"{len(wanted)} recipients in {sink.count() or 0} transactions"


# --------------------------------------------------------------------------- fan-out


def scenario_fanout(opts: Options) -> ScenarioResult:
    messages, per_message, domains, size = FANOUT
    res = ScenarioResult(
        "fanout",
        f"7 fan-out: {messages} messages of {size // 1000} kB, each to {per_message} recipients at "
        f"{domains} domains, accepted and relayed to smtp-sink, seconds",
    )
    workers = ("--delivery-processes=1",)
    mq = Relaying(Mqmta(delivery=True, smarthost="127.0.0.1:1", extra_args=workers), dump=True)
    pf = Relaying(Postfix(relay_port=1), dump=True)
    sides = prepare_sides([mq, pf], opts, res)
    if mq not in sides:
        return not_available(res, res.unavailable.get(mq.name, "mqmta not available"))
    rcpts = recipients(per_message, domains)

    def body(side: Peer, server: Server, workdir: Path) -> dict[str, tuple[float, bool | None, str]]:
        sink: Server = server.extra["sink"]
        errors: list[Exception] = []
        t0 = time.monotonic()

        def client(numbers: range) -> None:
            try:
                for i in numbers:
                    send_pipelined(server.port, "a@example.com", rcpts, message(i, size, "fanout"), opts.timeout)
            except (OSError, BenchError) as e:
                errors.append(e)

        # Four sessions at once, five messages each.
        threads = [threading.Thread(target=client, args=(range(k, messages, 4),)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accept = time.monotonic() - t0
        if errors:
            raise BenchError(f"sending failed: {errors[0]}")
        done, got = wait_delivered(side, server, messages * per_message, opts.timeout)
        total = time.monotonic() - t0
        if not done:
            return {"accept": (accept, None, ""),
                    "accept+relay": (total, False, f"not done: {got} of {messages * per_message} delivered")}
        ok, note = check_dump(sink, "fanout", messages, rcpts)
        return {"accept": (accept, True, ""), "accept+relay": (total, ok, note)}

    round_robin(res, sides, opts, {"accept": "s", "accept+relay": "s"}, body)
    return res


# --------------------------------------------------------------------------- drain


class _Filled(Peer):
    """A side started with its queue already full: ``fill(workdir, sink_port)`` puts the
    documents in, then the MTA starts; the time runs from the start to the last delivery."""

    def __init__(self, inner: Peer, fill: Callable[[Peer, Path, int, Reaper], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.fill = fill
        self.relaying = Relaying(inner, dump=True)

    def prepare(self, allow_install: bool) -> None:
        self.relaying.prepare(allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        # The sink first (the MTA relays to it), then the queue is filled, then the clock starts.
        (workdir / "sink").mkdir()
        (workdir / "mta").mkdir()
        sink = self.relaying.sink.start(reaper, workdir / "sink")
        self.fill(self.inner, workdir / "mta", sink.port, reaper)
        t0 = time.monotonic()
        if isinstance(self.inner, Postfix):
            self.inner.relay_port = sink.port
        else:
            self.inner.smarthost = f"{LOOPBACK}:{sink.port}"  # type: ignore[attr-defined]
        server = self.inner.start(reaper, workdir / "mta")
        server.extra.update(sink=sink, t0=t0)
        return server


def drain_messages(opts: Options) -> tuple[int, list[str]]:
    per_message, domains, _ = DRAIN
    per_message = min(per_message, opts.messages)
    return max(1, opts.messages // per_message), recipients(per_message, domains)


def fill_mqmta(opts: Options, amqp: bool = False) -> Callable[[Peer, Path, int, Reaper], None]:
    count, rcpts = drain_messages(opts)

    def fill(side: Peer, workdir: Path, sink_port: int, reaper: Reaper) -> None:
        assert isinstance(side, Mqmta)
        (workdir / "data").mkdir(exist_ok=True)
        queue = "spool"
        if amqp:
            # A vhost of its own for this round: filled now, consumed by the MTA started next.
            url, drop = _vhost(opts.amqp_url)
            reaper.on_stop("vhost", drop)
            side.queue_url = queue = url
        argv = [sys.executable, "-m", "bench.inject", "--data-dir", str(workdir / "data"), "--queue", queue,
                "--messages", str(count), "--size", str(DRAIN[2]), "--tag", "drain", *rcpts]
        r = run(argv, opts.timeout, cwd=REPO_DIR, env=mqmta_env())
        if r.returncode:
            raise BenchError(f"bench.inject failed: {(r.stdout + r.stderr)[-500:]}")

    return fill


def fill_postfix(opts: Options) -> Callable[[Peer, Path, int, Reaper], None]:
    count, rcpts = drain_messages(opts)

    def fill(side: Peer, workdir: Path, sink_port: int, reaper: Reaper) -> None:
        # Postfix makes its queue on the first start; stopped, sendmail leaves each message in
        # maildrop (postdrop), and the next start picks them all up.
        assert isinstance(side, Postfix)
        side.relay_port = sink_port
        first = Reaper()
        try:
            side.start(first, workdir)
        finally:
            first.stop_all()
        for i in range(count):
            data = message(i, DRAIN[2], "drain")
            r = subprocess.run(["sendmail", "-C", str(workdir / "postfix"), "-f", "a@example.com", *rcpts],
                               input=data.replace(b"\r\n", b"\n"), capture_output=True, timeout=60)
            if r.returncode:
                raise BenchError(f"sendmail failed: {r.stderr[-300:]!r}")

    return fill


def scenario_drain(opts: Options) -> ScenarioResult:
    count, rcpts = drain_messages(opts)
    n = count * len(rcpts)
    res = ScenarioResult(
        "drain",
        f"8 drain: {n} documents already queued ({count} messages of {len(rcpts)} recipients at "
        f"{DRAIN[1]} domains), relayed to smtp-sink, seconds from the MTA's start to the last delivery",
    )
    workers = ("--delivery-processes=1",)
    mq = _Filled(Mqmta(delivery=True, smarthost="127.0.0.1:1", extra_args=workers), fill_mqmta(opts))
    pf = _Filled(Postfix(relay_port=1), fill_postfix(opts))
    sides: list[Peer] = [mq, pf]
    host_port = opts.amqp_url.split("@")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    if host in ("127.0.0.1", "localhost") and port_open(int(port or 5672), LOOPBACK) and shutil.which("rabbitmqctl"):
        amqp = Mqmta("mqmta-amqp", delivery=True, smarthost="127.0.0.1:1", queue_url=opts.amqp_url,
                     extra_args=workers)
        sides.append(_Filled(amqp, fill_mqmta(opts, amqp=True)))
    else:
        res.unavailable["mqmta-amqp"] = f"no RabbitMQ on {host_port}"
    sides = prepare_sides(sides, opts, res)
    if mq not in sides:
        return not_available(res, res.unavailable.get(mq.name, "mqmta not available"))

    def body(side: Peer, server: Server, workdir: Path) -> dict[str, tuple[float, bool | None, str]]:
        sink: Server = server.extra["sink"]
        done, got = wait_delivered(side, server, n, opts.timeout)
        total = time.monotonic() - server.extra["t0"]
        if not done:
            return {"drain": (total, False, f"not done: {got} of {n} delivered")}
        ok, note = check_dump(sink, "drain", count, rcpts)
        out = {"drain": (total, ok, note)}
        if isinstance(side, _Filled) and isinstance(side.inner, Mqmta) and server.pid:
            # The bound: the outbox is not loaded into memory (MTA and worker together).
            out["peak RSS"] = (tree_peak_rss(server.pid) / 1e6, ok, "MTA + delivery worker, VmHWM")
        return out

    round_robin(res, sides, opts, {"drain": "s", "peak RSS": "MB"}, body)
    return res
