"""``python -m bench.inject --data-dir DIR --queue URL --messages N --size BYTES --tag T RCPT...``

Puts N messages on mqmta's outbox before it starts, each to every RCPT: one document per
recipient sharing one body per message, as ``mqmta inject`` queues them (its code, without a
process start per message).  Each message's Subject is ``T number`` (see bench/bulk.py)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.bulk import message
from mqtwisted.cli import injected
from mqtwisted.queue import Body, Publication
from mqtwisted.wiring import tool_queue


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inject")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--queue", default="spool")
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--size", type=int, default=5000)
    p.add_argument("--tag", default="drain")
    p.add_argument("recipients", nargs="+")
    args = p.parse_args()

    from twisted.internet import defer, task

    async def run(reactor: Any) -> None:
        q = tool_queue(args.queue, args.data_dir)
        await q.start()
        try:
            now = time.time()
            for i in range(args.messages):
                data = message(i, args.size, args.tag)
                body = Body(data=data, size=len(data))
                await q.publish([Publication("outbox", injected("a@example.com", r, now), body)
                                 for r in args.recipients])
        finally:
            await q.stop()

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
