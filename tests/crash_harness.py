"""Crash-safety harness: kill -9 a real ``twistd mqmta`` at random moments during inbound load and
during delivery, restart it on the same spool, and count.

    python -m tests.crash_harness --rounds 10 [--seed N] [--clients 6] [--json] \
        [--mta-arg=--delivery-processes=1]

Set-up: a counting sink (aiosmtpd in this process, on a loopback port) records the Message-ID of
every message it receives; the MTA relays everything to it (``--smarthost``); client threads send
messages with unique Message-IDs and note each one only after its ``250``.  Each round lets traffic
run for a random time, then SIGKILLs the MTA either in the middle of inbound load ("inbound") or,
with the clients paused and a backlog still being delivered to a slowed-down sink, in the middle
of delivery ("delivery"); then starts it again.  After the last round the MTA drains its queue.

The verdict: every message answered 250 reached the sink at least once (``lost`` must be 0);
``repeated`` counts messages the sink got more than once (a delivery in flight at the kill is
repeated: allowed, and reported).  Exit status 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from tests.conftest import free_port
from tests.realmta import MTAProcess

_MSGID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.IGNORECASE | re.MULTILINE)


class CountingSink:
    """An SMTP server that accepts everything and counts Message-IDs (and can be slowed down)."""

    def __init__(self, port: int, log_path: str) -> None:
        from aiosmtpd.controller import Controller

        self.port = port
        self.received: Counter[str] = Counter()
        self.delay = 0.0
        self._lock = threading.Lock()
        self._log = open(log_path, "a")
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                import asyncio

                if sink.delay:
                    await asyncio.sleep(sink.delay)
                m = _MSGID.search(envelope.original_content or envelope.content or b"")
                mid = m.group(1).decode() if m else "<none>"
                with sink._lock:
                    sink.received[mid] += 1
                    sink._log.write(mid + "\n")
                    sink._log.flush()
                return "250 2.0.0 counted"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=0)

    def start(self) -> CountingSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self._log.close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.received)


class Clients:
    """Threads that keep sending; a Message-ID is recorded only once the MTA said 250."""

    def __init__(self, port: int, n: int, tag: str) -> None:
        self.port = port
        self.acked: list[str] = []
        self.sent = 0
        self.errors = 0
        self.stop = threading.Event()
        self.paused = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(f"{tag}{i}",), daemon=True) for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, name: str) -> None:
        i = 0
        while not self.stop.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                continue
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
                    s.ehlo("load.test")
                    for _ in range(20):  # a few messages per connection, then a new one
                        if self.stop.is_set() or self.paused.is_set():
                            break
                        i += 1
                        mid = f"<{name}.{i}@crash.test>"
                        body = f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\n{'x' * 300}\r\n"
                        with self._lock:
                            self.sent += 1
                        s.sendmail("load@crash.test", ["sink@example.com"], body)
                        with self._lock:
                            self.acked.append(mid)  # only after the 250
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.errors += 1
                time.sleep(0.05)  # the MTA is down or restarting

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def run(rounds: int, seed: int | None = None, clients: int = 6, workdir: str | None = None,
        min_run: float = 0.5, max_run: float = 2.0, drain_timeout: float = 90.0,
        kinds: list[str] | None = None, out: Any = sys.stdout,
        mta_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the harness; returns the report (also printed to ``out``).  ``kinds`` fixes the kind of
    each round ("inbound"/"delivery", cycled); by default each is chosen at random."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="mqmta-crash-")
    data = os.path.join(workdir, "data")
    sink = CountingSink(free_port(), os.path.join(workdir, "sink.log")).start()
    mta = MTAProcess(
        data, f"--smarthost=127.0.0.1:{sink.port}", "--retry-interval=1", "--threads=2",
        "--max-idle-time=1", *mta_args,
    )
    port = mta.port
    load = Clients(port, clients, f"s{seed}-")
    kills: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        mta.start()
        load.start()
        for r in range(rounds):
            kind = kinds[r % len(kinds)] if kinds else rng.choice(["inbound", "delivery"])
            if kind == "delivery":
                # Build a backlog, stop sending, and slow the sink down so that the kill lands
                # while messages are on the wire to it.
                sink.delay = 0.02
                time.sleep(rng.uniform(min_run, max_run))
                load.paused.set()
                time.sleep(rng.uniform(0.05, 0.4))
            else:
                sink.delay = 0.0
                load.paused.clear()
                time.sleep(rng.uniform(min_run, max_run))
            at = {"round": r + 1, "kind": kind, "acked": len(load.acked), "delivered": len(sink.snapshot())}
            mta.kill(signal.SIGKILL)
            kills.append(at)
            print(f"round {r + 1}/{rounds}: kill -9 during {kind} load "
                  f"({at['acked']} acknowledged, {at['delivered']} delivered so far)", file=out, flush=True)
            mta = MTAProcess(data, *mta.args, port=port)
            mta.start()
            load.paused.clear()
            sink.delay = 0.0
        time.sleep(rng.uniform(min_run, max_run))
        load.finish()
        acked = list(load.acked)
        # Drain: everything acknowledged must reach the sink (retries are 1 s apart).
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            got = sink.snapshot()
            if all(m in got for m in acked):
                break
            time.sleep(0.2)
        mta.stop()  # once it has exited no repeat can still be on its way to the sink
        got = sink.snapshot()
    finally:
        load.finish()
        mta.stop()
        sink.stop()
    lost = sorted(m for m in acked if m not in got)
    repeated = {m: n for m, n in got.items() if n > 1}
    unacked_delivered = sum(1 for m in got if m not in set(acked))
    report = {
        "seed": seed,
        "rounds": rounds,
        "kills": kills,
        "sent": load.sent,
        "acknowledged": len(acked),
        "delivered_unique": sum(1 for m in acked if m in got),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "repeated": len(repeated),
        "repeat_deliveries": sum(n - 1 for n in repeated.values()),
        "delivered_not_acknowledged": unacked_delivered,
        "client_errors": load.errors,
        "seconds": round(time.monotonic() - started, 1),
        "workdir": workdir,
    }
    print(
        f"crash harness (seed {seed}): {rounds} kill -9 rounds "
        f"({Counter(k['kind'] for k in kills)}), {report['acknowledged']} messages answered 250, "
        f"{report['delivered_unique']} reached the sink, lost {report['lost']}, "
        f"repeated {report['repeated']} ({report['repeat_deliveries']} extra deliveries), "
        f"{unacked_delivered} delivered though the client saw no 250 (killed before the reply), "
        f"{report['seconds']}s",
        file=out, flush=True,
    )
    if own_dir and not lost:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    p.add_argument("--mta-arg", action="append", default=[], metavar="OPT",
                   help="extra twistd mqmta option, e.g. --mta-arg=--delivery-processes=1")
    args = p.parse_args(argv)
    report = run(args.rounds, seed=args.seed, clients=args.clients, mta_args=tuple(args.mta_arg))
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if report["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
