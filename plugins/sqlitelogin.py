"""Checks AUTH logins against an SQLite file, with one ``sqlite3`` connection per context.

sqlite3 connections must stay in the thread that opened them.  Every context is one thread, so
the connection is opened in ``mq_context_initialize``, kept with ``MQ_setContextData`` and closed
in ``mq_context_cleanup``, all in that thread; hooks of that context find it with
``MQ_contextData``.  No locks needed.

The database (``MQ_LOGIN_DB``, default ``logins.sqlite3`` next to this plugin) has a table
``users(login TEXT PRIMARY KEY, salt BLOB, hash BLOB)`` where hash is
``hashlib.scrypt(password, salt=salt, n=2**14, r=8, p=1)``; :func:`add_user` writes one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from typing import Any

from mqtwisted import api as mq

SCHEMA = "CREATE TABLE IF NOT EXISTS users (login TEXT PRIMARY KEY, salt BLOB, hash BLOB)"


def mq_version() -> int:
    return mq.MQ_API_VERSION


def database() -> str:
    return os.environ.get("MQ_LOGIN_DB") or os.path.join(
        os.path.dirname(__file__), "logins.sqlite3"
    )


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1)


def add_user(db: sqlite3.Connection, login: str, password: str) -> None:
    salt = os.urandom(16)
    db.execute(SCHEMA)
    db.execute(
        "INSERT OR REPLACE INTO users VALUES (?, ?, ?)", (login, salt, _hash(password, salt))
    )
    db.commit()


def mq_context_initialize(ctx: mq.MQ_Context) -> None:
    db = sqlite3.connect(database())
    db.execute(SCHEMA)
    mq.MQ_setContextData(ctx, db)


def mq_context_cleanup(ctx: mq.MQ_Context) -> None:
    db = mq.MQ_contextData(ctx)
    if db is not None:
        db.close()
        mq.MQ_setContextData(ctx, None)


def check(db: sqlite3.Connection, login: str, password: str) -> bool:
    row = db.execute("SELECT salt, hash FROM users WHERE login = ?", (login,)).fetchone()
    if row is None:
        _hash(password, b"0" * 16)  # same work either way: no user enumeration by timing
        return False
    salt, expected = row
    return hmac.compare_digest(_hash(password, salt), expected)


def mq_smtp_in_authenticate(ctx: Any, conn: Any, login: str, password: str) -> bool:
    ok = check(mq.MQ_contextData(ctx), login, password)
    mq.MQ_setAuthenticated(conn, ok)
    if not ok:
        mq.MQ_log(mq.MQ_WARN, f"login failed for {login!r} from {mq.MQ_remoteIp(conn)}")
    return False
