"""The ``mqmta`` command: queue inspection (``queue stats|list|show``), ``inject``, ``mktap``,
``dkim keygen``, ``plugin-header``, ``pause`` and ``suppress`` (:mod:`mqtwisted.cli_state`).

Queue commands on the spool read the database directly (SQLite in WAL mode lets them read while
the MTA writes); on amqp they talk to the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from mqtwisted import cli_state
from mqtwisted.document import Document, IncomingDocument
from mqtwisted.queue import AMQP_QUEUE_TYPES, QUEUE_NAMES


def _spool_path(data_dir: str) -> str:
    path = os.path.join(os.path.abspath(data_dir), "spool.sqlite3")
    if not os.path.exists(path):
        raise SystemExit(f"mqmta: no spool at {path} (wrong --data-dir?)")
    return path


def _run_queue(args: argparse.Namespace, call: Any) -> Any:
    """Run one queue call on a reactor of our own (amqp backend)."""
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    from mqtwisted.wiring import tool_queue

    async def main() -> Any:
        q = tool_queue(args.queue_url, args.data_dir, args.amqp_queue_type)
        await q.start()
        try:
            return await call(q)
        finally:
            await q.stop()

    # Not task.react: it ends the process with sys.exit before the caller can print the result.
    outcome: list[Any] = []
    d = defer.ensureDeferred(main())
    d.addBoth(outcome.append)
    d.addBoth(lambda _: reactor.callLater(0, reactor.stop))
    reactor.run()
    if isinstance(outcome[0], Failure):
        raise SystemExit(f"mqmta: queue {args.queue_url}: {outcome[0].getErrorMessage()}")
    return outcome[0]


def cmd_queue(args: argparse.Namespace) -> int:
    if args.queue_url != "spool":
        return _queue_amqp(args)
    from mqtwisted.queue.spool_tables import read_document, read_documents, read_stats

    db = sqlite3.connect(f"file:{_spool_path(args.data_dir)}?mode=ro", uri=True)
    if args.action == "stats":
        stats = read_stats(db)
        for name in sorted(set(QUEUE_NAMES) | set(stats)):
            print(f"{name:12} {stats.get(name, 0)}")
    elif args.action == "list":
        for id_, doc in read_documents(db, args.name, args.limit):
            print(id_, json.dumps(Document.of(doc).without_mime(), sort_keys=True))
    else:
        doc = read_document(db, args.name, args.id)
        if doc is None:
            print(f"mqmta: no document {args.id} in queue {args.name}", file=sys.stderr)
            return 1
        print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def _queue_amqp(args: argparse.Namespace) -> int:
    if args.action == "stats":
        stats = _run_queue(args, lambda q: q.stats())
        for name in sorted(set(QUEUE_NAMES) | set(stats or {})):
            print(f"{name:12} {(stats or {}).get(name, 0)}")
        return 0
    if args.action == "list":
        docs = _run_queue(args, lambda q: q.list(args.name, args.limit))
        for id_, doc in docs or []:
            print(id_, json.dumps(Document.of(doc).without_mime(), sort_keys=True))
        return 0
    doc = _run_queue(args, lambda q: q.show(args.name, args.id))
    if doc is None:
        print(f"mqmta: no document {args.id} in queue {args.name}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def cmd_mktap(args: argparse.Namespace, rest: list[str]) -> int:
    """Write a TAP file: the pickled Application that ``twistd -f FILE`` runs."""
    import pickle

    from twisted.application import service

    from mqtwisted.options import MQOptions
    from mqtwisted.service import make_service

    options = MQOptions()
    options.parseOptions(rest)
    application = service.Application("mqmta")
    make_service(options, signals=True).setServiceParent(application)
    with open(args.output, "wb") as f:
        pickle.dump(application, f, protocol=2)
    print(f"wrote {args.output}; run it with: twistd -n -f {args.output}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqmta", description="mqmta mail transfer agent tools")
    sub = p.add_subparsers(dest="command", required=True)
    # --data-dir and --queue are accepted before or after the action ("queue stats --data-dir D").
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", default=argparse.SUPPRESS)
    where.add_argument("--queue", dest="queue_url", default=argparse.SUPPRESS, help="spool or amqp://...")
    where.add_argument("--amqp-queue-type", choices=AMQP_QUEUE_TYPES, default=argparse.SUPPRESS,
                       help="the type mqmta declares its AMQP queues with (classic)")
    where.add_argument("--state", default=argparse.SUPPRESS, help="redis://host:port/db (default: the data directory)")
    q = sub.add_parser("queue", help="inspect the queues", parents=[where])
    qs = q.add_subparsers(dest="action", required=True)
    qs.add_parser("stats", help="documents per named queue", parents=[where])
    ql = qs.add_parser("list", help="the first documents of a queue (without mime)", parents=[where])
    ql.add_argument("name")
    ql.add_argument("--limit", type=int, default=20)
    qw = qs.add_parser("show", help="one document as JSON", parents=[where])
    qw.add_argument("name")
    qw.add_argument("id")
    m = sub.add_parser("mktap", help="write a TAP file from twistd mqmta options")
    m.add_argument("-o", "--output", default="mqmta.tap")
    i = sub.add_parser("inject", help="put a message (stdin) on the outbox")
    i.add_argument("--from", dest="sender")
    i.add_argument("--to", dest="recipients", nargs="+")
    i.add_argument("--json", action="store_true",
                   help="read MailerQ JSON documents from stdin, one per line (as POST /v1/inject takes them)")
    i.add_argument("--data-dir", default="mqmta-data")
    i.add_argument("--queue", dest="queue_url", default="spool")
    i.add_argument("--amqp-queue-type", choices=AMQP_QUEUE_TYPES, default="classic")
    i.add_argument("--outbox", default="outbox")
    d = sub.add_parser("dkim", help="DKIM keys").add_subparsers(dest="action", required=True)
    k = d.add_parser("keygen", help="write a new private key, print the DNS TXT record to publish")
    k.add_argument("--domain", required=True)
    k.add_argument("--selector", required=True)
    k.add_argument("--algorithm", choices=["rsa-sha256", "ed25519-sha256"], default="rsa-sha256")
    k.add_argument("--bits", type=int, default=2048, help="RSA key size (at least 1024)")
    k.add_argument("-o", "--output", help="private key file (default DOMAIN.SELECTOR.pem; never overwritten)")
    sub.add_parser("plugin-header", help="print the directory of mqtwisted.h, for cc -I")
    cli_state.add_parsers(sub, where)
    return p


def cmd_plugin_header() -> int:
    from mqtwisted.cplugins.native import header_dir

    print(header_dir())
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from mqtwisted.signing import write_key_pair

    path = args.output or f"{args.domain}.{args.selector}.pem"
    try:
        record = write_key_pair(path, args.domain, args.selector, args.algorithm, args.bits)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mqmta: dkim keygen: {path}: {e}") from e
    print(f"wrote {path} (mode 0600); publish this DNS record:", file=sys.stderr)
    print(record)
    return 0


def injected(sender: str, recipient: str, now: float) -> dict[str, Any]:
    """The document ``mqmta inject`` queues for one recipient (its MIME travels as a Body)."""
    doc = IncomingDocument()
    doc.envelope = sender
    doc.recipient = recipient
    doc.received = now
    doc.tags = ["inject"]
    return doc.json


def cmd_inject(args: argparse.Namespace) -> int:
    import time

    from twisted.internet import defer, task

    from mqtwisted.queue import Body, Publication
    from mqtwisted.wiring import tool_queue

    now = time.time()
    if args.json:
        pubs = json_documents(sys.stdin.buffer, args.outbox, now)
    elif args.sender is None or not args.recipients:
        raise SystemExit("mqmta inject: give --from and --to (the message on stdin), or --json")
    else:
        mime = sys.stdin.buffer.read()
        body = Body(data=mime, size=len(mime))
        pubs = [Publication(args.outbox, injected(args.sender, r, now), body) for r in args.recipients]

    async def main(reactor: Any) -> None:
        q = tool_queue(args.queue_url, args.data_dir, args.amqp_queue_type)
        await q.start()
        try:
            ids = await q.publish(pubs)
        finally:
            await q.stop()
        for pub, id_ in zip(pubs, ids, strict=True):
            print(f"queued {id_} for {pub.document['recipient']}")

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return 0


def json_documents(stream: Any, outbox: str, now: float) -> list[Any]:
    """The publications of MailerQ JSON documents, one per line of ``stream``; SystemExit naming
    the line and field of the first bad one (nothing is queued then)."""
    from mqtwisted.console.api_inject import documents
    from mqtwisted.console.http import ApiError, loads

    pubs = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            pubs += documents(loads(line), outbox, now)
        except ValueError as e:
            raise SystemExit(f"mqmta inject: stdin:{number}: not JSON: {e}") from None
        except ApiError as e:
            raise SystemExit(f"mqmta inject: stdin:{number}: {e.message}") from None
    return pubs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mktap"]:
        known, rest = parser().parse_known_args(argv)
        return cmd_mktap(known, rest)
    args = parser().parse_args(argv)
    args.data_dir = getattr(args, "data_dir", "mqmta-data")
    args.queue_url = getattr(args, "queue_url", "spool")
    args.amqp_queue_type = getattr(args, "amqp_queue_type", "classic")
    if args.command == "queue":
        return cmd_queue(args)
    if args.command == "inject":
        return cmd_inject(args)
    if args.command == "dkim":
        return cmd_dkim_keygen(args)
    if args.command == "plugin-header":
        return cmd_plugin_header()
    if args.command == "pause":
        return cli_state.cmd_pause(args)
    if args.command == "suppress":
        return cli_state.cmd_suppress(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
