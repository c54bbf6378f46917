"""aiosmtpd peer: accepts every message, keeps nothing, counts them into a file.

Usage: ``python bench/peer_aiosmtpd.py PORT COUNTFILE``. The count is written
periodically and on exit, so the harness can check that every message arrived
(smtp-source does not notice a server that drops messages).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiosmtpd.smtp import SMTP


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:  # noqa: N802
        self.count += 1
        return "250 OK"


def write_count(path: str, count: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(count))
    # rename so the harness never reads a half-written number
    import os

    os.replace(path + ".tmp", path)


async def serve(port: int, countfile: str) -> None:
    handler = CountingHandler()
    loop = asyncio.get_running_loop()
    # hostname given: aiosmtpd would otherwise call getfqdn() (a DNS lookup) per connection;
    # data_size_limit=None: the 50 MB message of the memory scenario must be accepted.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench", data_size_limit=None),
        "127.0.0.1",
        port,
        backlog=1024,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    written = -1
    while not stop.is_set():
        if handler.count != written:
            written = handler.count
            write_count(countfile, written)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass
    server.close()
    write_count(countfile, handler.count)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
