"""Recipient allow-list: refuses every RCPT TO not listed, with a reply of our choosing.

The list is a file with one address or ``@domain`` per line (``#`` comments), named by the
environment variable ``MQ_ALLOWLIST`` (default ``allowlist.txt`` next to this plugin).  It is read
once in ``mq_initialize``.  Shows ``MQ_setResponse``: a 5xx refuses just that recipient.
"""

from __future__ import annotations

import os
from typing import Any

from mqtwisted import api as mq

_allowed: frozenset[str] = frozenset()


def mq_version() -> int:
    return mq.MQ_API_VERSION


def load(path: str) -> frozenset[str]:
    entries = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip().lower()
            if line:
                entries.add(line)
    return frozenset(entries)


def mq_initialize() -> None:
    global _allowed
    path = os.environ.get("MQ_ALLOWLIST") or os.path.join(
        os.path.dirname(__file__), "allowlist.txt"
    )
    try:
        _allowed = load(path)
    except OSError as e:
        # Fail closed: with no list nobody is allowed, and the log says why.
        mq.MQ_log(mq.MQ_CRIT, f"cannot read allow-list {path}: {e}; refusing every recipient")
        _allowed = frozenset()


def allowed(address: str) -> bool:
    address = mq.MQ_email(address).lower()
    domain = "@" + address.rpartition("@")[2]
    return address in _allowed or domain in _allowed


def mq_smtp_in_rcptto(ctx: Any, conn: Any, address: str) -> bool:
    if not allowed(address):
        mq.MQ_setResponse(conn, 550, f"<{mq.MQ_email(address)}>: recipient not allowed", "5.7.1")
    return False
