"""The bench's bulk scenarios at small scale, so that a benchmark run cannot count a wrong one:
fan-out (messages to many recipients at many domains, accepted and relayed to smtp-sink) delivers
every recipient once with the body intact, and a drain (documents queued before the MTA starts)
delivers every document once.  The same pieces the bench uses: its pipelining client, its
injector and its check of smtp-sink's dump."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from bench.bulk import check_dump, dump_recipients, message, recipients, send_pipelined
from bench.peers import Server, SmtpSink
from bench.proc import REPO_DIR, Reaper, scratch_dir
from mqtwisted.testing import start_mta
from tests.conftest import need, wait_until


@pytest.fixture
def dumping_sink() -> Iterator[Server]:
    need("smtp-sink")
    reaper = Reaper()
    # smtp-sink runs as nobody: its dump goes where nobody may write (tmp_path is root's alone).
    with scratch_dir("test-sink") as workdir:
        try:
            yield SmtpSink(dump=True).start(reaper, workdir)
        finally:
            reaper.stop_all()


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")


async def delivered(mta: object, n: int) -> None:
    async def done() -> bool:
        stats = await mta.queue.stats()  # type: ignore[attr-defined]
        return stats.get("success", 0) >= n and not stats.get("outbox")

    await wait_until(done, 60, what=f"{n} recipients delivered", step=0.1)


@pytest_twisted.ensureDeferred
async def test_fanout_every_recipient_once_with_the_body_intact(tmp_path: Path, dumping_sink: Server) -> None:
    rcpts = recipients(120, 7)
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", smarthost=f"127.0.0.1:{dumping_sink.port}")
    try:
        for i in range(3):
            # A line starting with a dot in the body: dot-stuffing on the way in and out.
            data = message(i, 20_000, "fanout").replace(b"\r\n\r\n", b"\r\n\r\n.leading dot\r\n", 1)
            await threads.deferToThread(send_pipelined, mta.port, "a@example.com", rcpts, data, 30)
        await delivered(mta, 3 * 120)
        ok, note = check_dump(dumping_sink, "fanout", 3, rcpts)
        assert ok, note
        # Recipients share transactions (at most 50 each), not one each.
        records = (dumping_sink.workdir / "dump").read_bytes().split(b"X-Client-Addr: ")[1:]
        sizes = [r.count(b"X-Rcpt-Args: ") for r in records]
        assert max(sizes) == 50 and len(records) <= 18, sizes
        for record in records:
            number = int(record.split(b"Subject: fanout ", 1)[1].split(b"\n", 1)[0])
            expected = body_of(message(number, 20_000, "fanout"))
            assert record.rstrip(b"\n").endswith(b".leading dot\n" + expected.rstrip(b"\n"))
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_drain_every_queued_document_once(tmp_path: Path, dumping_sink: Server) -> None:
    rcpts = recipients(60, 10)
    data_dir = tmp_path / "mta"
    data_dir.mkdir()
    # Queued before the MTA starts, as the bench does (one body per message, shared).
    done = await threads.deferToThread(
        subprocess.run,
        [sys.executable, "-m", "bench.inject", "--data-dir", str(data_dir), "--messages", "4", "--size", "3000",
         "--tag", "drain", *rcpts],
        cwd=REPO_DIR, capture_output=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    mta = await start_mta(str(data_dir), delivery="on", smarthost=f"127.0.0.1:{dumping_sink.port}")
    try:
        await delivered(mta, 4 * 60)
        ok, note = check_dump(dumping_sink, "drain", 4, rcpts)
        assert ok, note
        assert sum(dump_recipients(dumping_sink, "drain").values()) == 240
    finally:
        await mta.stop()
