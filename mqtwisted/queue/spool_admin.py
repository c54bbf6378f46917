"""The queue admin (:mod:`mqtwisted.queue.admin`) on the spool: SQL run on the spool's thread."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed

from mqtwisted.queue import Document, Publication
from mqtwisted.queue.admin import Page
from mqtwisted.queue.spool import SpoolQueue

_MATCH = (
    " AND (id = ?2 OR lower(json_extract(doc, '$.recipient')) LIKE ?3 ESCAPE '\\'"
    " OR lower(json_extract(doc, '$.envelope')) LIKE ?3 ESCAPE '\\')"
)


def _like(search: str) -> str:
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def browse(db: sqlite3.Connection, queue: str, offset: int, limit: int, search: str) -> Page:
    where = "WHERE queue = ?1" + (_MATCH if search else "")
    args: tuple = (queue, int(search) if search.isdigit() else -1, _like(search)) if search else (queue,)
    (total,) = db.execute(f"SELECT COUNT(*) FROM docs {where}", args).fetchone()
    rows = db.execute(
        f"SELECT id, doc, length(mime) FROM docs {where} ORDER BY id LIMIT {int(limit)} OFFSET {int(offset)}", args
    ).fetchall()
    documents = []
    for row_id, doc, inline in rows:
        document = {k: v for k, v in json.loads(doc).items() if k != "mime"}
        if inline is not None:
            document["mime-size"] = inline
        documents.append((str(row_id), document))
    return Page(total, documents)


def retry(db: sqlite3.Connection, queue: str, id: str) -> bool:
    cur = db.execute(
        "UPDATE docs SET due = ?, doc = json_remove(doc, '$.nextattempt') WHERE queue = ? AND id = ?",
        (time.time(), queue, int(id)),
    )
    return cur.rowcount > 0


class SpoolAdmin:
    """Ids on the spool are row numbers: any other id is not there (answered without a job on
    the spool's thread)."""

    def __init__(self, spool: SpoolQueue) -> None:
        self.spool = spool

    def browse(self, queue: str, offset: int, limit: int, search: str = "") -> Deferred[Page]:
        return self.spool.execute(lambda db: browse(db, queue, offset, limit, search), reads=True)

    def show(self, queue: str, id: str) -> Deferred[Document | None]:
        if not id.isdigit():
            return succeed(None)
        return self.spool.show(queue, id)

    def replace(self, queue: str, id: str, publications: Sequence[Publication]) -> Deferred[list[str] | None]:
        if not id.isdigit():
            return succeed(None)
        return self.spool.rewrite(queue, id, publications)

    def retry(self, queue: str, id: str) -> Deferred[bool]:
        if not id.isdigit():
            return succeed(False)

        def woken(found: bool) -> bool:
            if found:
                self.spool.poke(queue)
            return found

        return self.spool.execute(lambda db: retry(db, queue, id)).addCallback(woken)
