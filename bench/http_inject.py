"""``python -m bench.http_inject``: the same messages queued over HTTP (``POST /v1/inject``) and
over SMTP, into a fresh ``twistd -n mqmta`` each (delivery off), one run of each.

* HTTP: ``--messages`` MailerQ JSON documents of about ``--size`` bytes of MIME, ``--batch`` per
  request, ``--clients`` keep-alive connections at once (Python's http.client, one thread each).
* SMTP: Postfix's ``smtp-source``, ``--sessions`` sessions, the same count and size.

A side counts only when the outbox holds exactly ``--messages`` documents afterwards (read from
``/status``).  Prints messages per second and writes ``bench/results/http_inject.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.peers import Mqmta
from bench.proc import BENCH_DIR, LOOPBACK, Reaper, log, run, scratch_dir, wait_for


def mime(i: int, size: int) -> str:
    head = f"From: app@example.org\r\nTo: r{i}@example.com\r\nSubject: bench {i}\r\n\r\n"
    line = "x" * 76 + "\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def inject_http(www: int, messages: int, size: int, batch: int, clients: int) -> float:
    bodies = [
        json.dumps([{"envelope": "app@example.org", "recipient": f"r{i}@example.com", "mime": mime(i, size)}
                    for i in range(start, min(messages, start + batch))]).encode()
        for start in range(0, messages, batch)
    ]
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(LOOPBACK, www, timeout=120)
        while True:
            with lock:
                if not bodies:
                    break
                body = bodies.pop()
            conn.request("POST", "/v1/inject", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            if answer.status != 200:
                errors.append(f"{answer.status} {data[:200]!r}")
                break
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if errors:
        raise SystemExit(f"http inject failed: {errors[0]}")
    return elapsed


def inject_smtp(port: int, messages: int, size: int, sessions: int) -> float:
    argv = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", "app@example.org", "-t", "r@example.com", f"{LOOPBACK}:{port}"]
    t0 = time.monotonic()
    r = run(argv, 600)
    if r.returncode:
        raise SystemExit(f"smtp-source failed: {(r.stdout + r.stderr)[-300:]}")
    return time.monotonic() - t0


def one_side(name: str, args: argparse.Namespace, reaper: Reaper) -> dict[str, object]:
    peer = Mqmta(label=f"mqmta-{name}")
    peer.prepare(allow_install=False)
    with scratch_dir(name) as work:
        server = peer.start(reaper, work)
        try:
            if name == "http":
                elapsed = inject_http(server.extra["www"], args.messages, args.size, args.batch, args.clients)
            else:
                elapsed = inject_smtp(server.port, args.messages, args.size, args.sessions)
            queued = wait_for(lambda: server.count() == args.messages, 30)
            count = server.count()
        finally:
            reaper.stop_all()
    rate = args.messages / elapsed
    log(f"{name}: {args.messages} messages in {elapsed:.2f} s = {rate:.0f}/s, outbox {count}")
    return {"seconds": round(elapsed, 3), "messages_per_second": round(rate, 1), "verified": bool(queued),
            "outbox": count}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_inject", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=2000, help="bytes of MIME per message")
    p.add_argument("--batch", type=int, default=100, help="documents per HTTP request")
    p.add_argument("--clients", type=int, default=4, help="HTTP connections at once")
    p.add_argument("--sessions", type=int, default=10, help="smtp-source sessions")
    p.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "http_inject.json")
    args = p.parse_args(argv)
    reaper = Reaper()
    try:
        results = {"http": one_side("http", args, reaper), "smtp": one_side("smtp", args, reaper)}
    finally:
        reaper.stop_all()
    ratio = results["http"]["messages_per_second"] / results["smtp"]["messages_per_second"]  # type: ignore[operator]
    report = {"messages": args.messages, "size": args.size, "batch": args.batch, "clients": args.clients,
              "sessions": args.sessions, **results, "http_over_smtp": round(ratio, 2)}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(r["verified"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
