"""The state backend of one machine: ``state.sqlite3`` in the data directory, beside the spool.

SQLite for the same reasons as the spool: it is in the standard library, a crash never leaves a
half-written file, and in WAL mode the ``mqmta`` command writes while the MTA reads.  A separate
file rather than tables in the spool: the spool has one writer thread of its own (group
commit), and the command must not compete with it for the spool's lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading

from mqtwisted.state.backend import Days, Holds
from mqtwisted.state.pauses import Pause
from mqtwisted.state.suppression import Suppression

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pauses (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS suppressions (pattern TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS holds (key TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS days (key TEXT NOT NULL, day INTEGER NOT NULL, count INTEGER NOT NULL,
                                 PRIMARY KEY (key, day));
INSERT OR IGNORE INTO meta VALUES ('version', 0);
"""


class SqliteBackend:
    """:class:`~mqtwisted.state.backend.Backend` in one SQLite file (made on first use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must stay in the thread that made them.
        db = getattr(self._local, "db", None)
        if db is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._local.db = db
        return db

    def _changed(self, sql: str, args: tuple) -> int:
        db = self.db
        with db:
            db.execute("BEGIN IMMEDIATE")
            n = db.execute(sql, args).rowcount
            if n:
                db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
        return n

    def version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()[0])

    def put_pause(self, pause: Pause) -> None:
        self._changed("INSERT OR REPLACE INTO pauses VALUES (?, ?)", (pause.id, json.dumps(pause.to_json())))

    def pauses(self) -> list[Pause]:
        return [Pause.from_json(json.loads(doc)) for (doc,) in self.db.execute("SELECT doc FROM pauses")]

    def remove_pause(self, pause_id: str) -> bool:
        return self._changed("DELETE FROM pauses WHERE id = ?", (pause_id,)) > 0

    def put_suppression(self, entry: Suppression) -> None:
        self._changed("INSERT OR REPLACE INTO suppressions VALUES (?, ?)",
                      (entry.pattern, json.dumps(entry.to_json())))

    def suppressions(self) -> list[Suppression]:
        return [Suppression.from_json(json.loads(doc)) for (doc,) in self.db.execute("SELECT doc FROM suppressions")]

    def remove_suppression(self, pattern: str) -> bool:
        return self._changed("DELETE FROM suppressions WHERE pattern = ?", (pattern,)) > 0

    def sync(self, holds: Holds, days: Days, now: float) -> tuple[Holds, Days]:
        db = self.db
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO holds VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET until = excluded.until, "
                "reason = excluded.reason WHERE excluded.until > holds.until",
                [(key, until, reason) for key, (until, reason) in holds.items()])
            db.executemany(
                "INSERT INTO days VALUES (?, ?, ?) ON CONFLICT (key, day) DO UPDATE SET count = count + excluded.count",
                [(key, day, n) for (key, day), n in days.items()])
            db.execute("DELETE FROM holds WHERE until <= ?", (now,))
            all_holds = {k: (u, r) for k, u, r in db.execute("SELECT key, until, reason FROM holds")}
            all_days = {(k, d): n for k, d, n in db.execute("SELECT key, day, count FROM days")}
        return all_holds, all_days

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
