"""Cleanup with ``x-mq-*`` extraction on a body the server spilled to disk (> 1 MiB): the headers
become JSON properties, the stored MIME is the rest byte for byte, the body is rewritten file to
file (the queue is handed a file, never the whole body in memory), and no temporary file is left."""

from __future__ import annotations

import os
import sqlite3

import pytest_twisted

from mqtwisted.cleanup import Cleanup
from mqtwisted.envelope import Envelope, Recipient
from mqtwisted.queue import Body, mime_bytes
from mqtwisted.queue.spool import SpoolQueue
from mqtwisted.queue.spool_tables import read_document
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.testing import test_connection


class Recording:
    """A queue that passes everything to a real spool and remembers what it was handed."""

    def __init__(self, inner: SpoolQueue) -> None:
        self.inner = inner
        self.bodies: list[Body | None] = []

    def publish(self, publications):
        self.bodies += [p.body for p in publications]
        return self.inner.publish(publications)


@pytest_twisted.ensureDeferred
async def test_x_mq_headers_of_a_spilled_body_are_extracted_without_loading_it(tmp_path) -> None:
    spill = tmp_path / "incoming"
    spill.mkdir()
    head = b"From: a@example.org\r\nX-Mq-Maxattempts: 3\r\nX-MQ-Tags: [\"x\"]\r\nSubject: big\r\n\r\n"
    rest = b"".join(b"line %07d of a big body\r\n" % i for i in range(120_000))  # ~3 MB
    original = spill / "incoming-1.eml"
    original.write_bytes(head + rest)
    spool = SpoolQueue(str(tmp_path / "spool.sqlite3"))
    await spool.start()
    queue = Recording(spool)
    try:
        cleanup = Cleanup(queue, RelayPolicy(), "mx.test")  # loopback is trusted: extraction on
        envelope = Envelope("a@example.org", {}, [Recipient("b@example.com", {}, False),
                                                   Recipient("c@example.com", {}, False)])
        ids = await cleanup(test_connection(), envelope, Body(path=str(original), size=len(head) + len(rest)))
        assert len(ids) == 2
        (body,) = {id(b): b for b in queue.bodies}.values()  # one body shared by both recipients
        assert body.data is None and body.path is not None  # a file, not bytes in memory
        db = sqlite3.connect(tmp_path / "spool.sqlite3")
        for doc_id in ids:
            doc = read_document(db, "outbox", doc_id)
            assert doc["maxattempts"] == 3 and doc["tags"] == ["x"]
            assert mime_bytes(doc["mime"]) == b"From: a@example.org\r\nSubject: big\r\n\r\n" + rest
    finally:
        await spool.stop()
    # The rewritten copy is gone; the original is the server's to remove.
    assert os.listdir(spill) == ["incoming-1.eml"]
