"""The spool's tables and what one transaction does to them, apart from the thread, the jobs and
the consumers of :mod:`mqtwisted.queue.spool` (and readable from the CLI on a read-only handle).

``docs`` holds one row per document; a body that several documents share lives once in
``bodies`` and each row points at it, while a single recipient's body stays in its own row
(``mime``): fewer pages to write.  A body is dropped once no document points at it.
"""

from __future__ import annotations

import json
import os
import sqlite3

from mqtwisted.document import Document as MailerQDocument
from mqtwisted.queue import Body, Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    due REAL NOT NULL DEFAULT 0,
    body INTEGER REFERENCES bodies(id),
    doc TEXT NOT NULL,
    mime BLOB
);
CREATE INDEX IF NOT EXISTS docs_by_queue ON docs (queue, due, id);
CREATE INDEX IF NOT EXISTS docs_by_body ON docs (body) WHERE body IS NOT NULL;
"""

BLOB_CHUNK = 1 << 20
#: a body up to this size, used by one document only, is kept in that document's row
INLINE = 1 << 20

#: what :func:`insert_rows` writes: (queue, due, body, JSON text)
Row = tuple[str, float, Body | None, str]


def insert_rows(
    db: sqlite3.Connection,
    rows: list[Row],
    reuse: tuple[str, int] | None = None,
) -> list[str]:
    """Insert ``rows``; with ``reuse=(queue, id)`` the first row for that queue rewrites
    document ``id`` in place, so a message re-queued for a retry keeps its queue id."""
    uses: dict[int, int] = {}
    for _, _, body, _ in rows:
        if body is not None:
            uses[id(body)] = uses.get(id(body), 0) + 1
    body_ids: dict[int, int] = {}
    ids = []
    for queue, due, body, doc in rows:
        body_id = inline = None
        if body is not None:
            if uses[id(body)] == 1 and body.data is not None and len(body.data) <= INLINE:
                # One recipient: the body lives in the document's row (fewer pages to write).
                inline = body.data
            else:
                body_id = body_ids.get(id(body))
                if body_id is None:
                    body_id = body_ids[id(body)] = store_body(db, body)
        if reuse is not None and reuse[0] == queue:
            row_id, reuse = reuse[1], None
            (old_body,) = db.execute(
                "SELECT body FROM docs WHERE id = ?", (row_id,)
            ).fetchone() or (None,)
            db.execute(
                "UPDATE docs SET due = ?, body = ?, doc = ?, mime = ? WHERE id = ?",
                (due, body_id, doc, inline, row_id),
            )
            collect_body(db, old_body)
            ids.append(str(row_id))
            continue
        cur = db.execute(
            "INSERT INTO docs (queue, due, body, doc, mime) VALUES (?, ?, ?, ?, ?)",
            (queue, due, body_id, doc, inline),
        )
        ids.append(str(cur.lastrowid))
    return ids


def store_body(db: sqlite3.Connection, body: Body) -> int:
    if body.data is not None:
        return db.execute("INSERT INTO bodies (data) VALUES (?)", (body.data,)).lastrowid
    assert body.path is not None
    size = os.path.getsize(body.path)
    body_id = db.execute("INSERT INTO bodies (data) VALUES (zeroblob(?))", (size,)).lastrowid
    with open(body.path, "rb") as src, db.blobopen("bodies", "data", body_id) as blob:
        while chunk := src.read(BLOB_CHUNK):
            blob.write(chunk)
    return body_id


def load_body(db: sqlite3.Connection, body_id: int | None, inline: bytes | None = None) -> bytes | None:
    if inline is not None:
        return bytes(inline)
    if body_id is None:
        return None
    row = db.execute("SELECT data FROM bodies WHERE id = ?", (body_id,)).fetchone()
    return None if row is None else bytes(row[0])


def settle_one(db: sqlite3.Connection, queue: str, row_id: int,
                rows: list[Row]) -> tuple[list[str], int | None]:
    """Store ``rows``, then remove leased document ``row_id`` of ``queue`` (unless one of the
    rows rewrote it in place: a retry keeps its id).  Its ids, and the body the removed
    document pointed at, for :func:`collect_body` once the caller is done."""
    requeued = any(row[0] == queue for row in rows)
    ids = insert_rows(db, rows, reuse=(queue, row_id))
    return ids, None if requeued else delete_row(db, row_id)


def delete_row(db: sqlite3.Connection, row_id: int) -> int | None:
    """Remove document ``row_id``: the body it pointed at, for :func:`collect_body`."""
    row = db.execute("DELETE FROM docs WHERE id = ? RETURNING body", (row_id,)).fetchone()
    return None if row is None else row[0]


def collect_body(db: sqlite3.Connection, body_id: int | None) -> None:
    """Drop a shared body once no document points at it."""
    if body_id is not None:
        db.execute(
            "DELETE FROM bodies WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM docs WHERE body = ?1)",
            (body_id,),
        )


def complete(db: sqlite3.Connection, doc: str, body_id: int | None, inline: bytes | None) -> Document:
    return with_mime(json.loads(doc), load_body(db, body_id, inline))


def with_mime(document: Document, mime: bytes | str | None) -> Document:
    """The stored JSON completed with its body (stored apart, once per message)."""
    if mime is not None:
        MailerQDocument(document).mime = mime
    return document


def read_documents(db: sqlite3.Connection, queue: str, limit: int) -> list[tuple[str, Document]]:
    """The first ``limit`` documents of ``queue`` (for the CLI; also works on a read-only handle)."""
    rows = db.execute(
        "SELECT id, doc, body, mime FROM docs WHERE queue = ? ORDER BY id LIMIT ?", (queue, limit)
    ).fetchall()
    return [(str(i), complete(db, doc, body, mime)) for i, doc, body, mime in rows]


def read_document(db: sqlite3.Connection, queue: str, id: str) -> Document | None:
    row = db.execute(
        "SELECT doc, body, mime FROM docs WHERE queue = ? AND id = ?", (queue, int(id))
    ).fetchone()
    return None if row is None else complete(db, *row)


def read_stats(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT queue, COUNT(*) FROM docs GROUP BY queue").fetchall())
