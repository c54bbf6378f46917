"""Greylisting-style delay: takes control at RCPT TO and resumes it from a timer.

The first time a (client IP, sender, recipient) triplet is seen the recipient is refused with
``451 4.7.1`` and remembered; a retry after ``MQ_GREYLIST_DELAY`` seconds (default 300) passes.
Before refusing, the plugin holds the command for ``MQ_GREYLIST_PAUSE`` seconds (default 0.5)
by taking control (returning True) and handing it back from ``MQ_startTimer``; the timer's
callback runs in this connection's context thread.  The pause is a tarpit, and shows
take-control without blocking a thread.

The triplets live in memory, one table per context (``MQ_contextData``), so no lock is needed,
at the price of a client whose retry lands on another context being greylisted again.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mqtwisted import api as mq


def mq_version() -> int:
    return mq.MQ_API_VERSION


def _setting(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def mq_context_initialize(ctx: mq.MQ_Context) -> None:
    mq.MQ_setContextData(ctx, {})


def mq_smtp_in_mailfrom(ctx: Any, conn: Any, address: str) -> bool:
    mq.MQ_setConnectionData(conn, mq.MQ_email(address).lower())
    return False


def mq_smtp_in_rcptto(ctx: Any, conn: Any, address: str) -> bool:
    if mq.MQ_authenticated(conn):
        return False  # our own users are never greylisted
    seen: dict[tuple[str, str, str], float] = mq.MQ_contextData(ctx)
    triplet = (mq.MQ_remoteIp(conn), mq.MQ_connectionData(conn) or "", mq.MQ_email(address).lower())
    now = time.time()
    first = seen.setdefault(triplet, now)
    if now - first >= _setting("MQ_GREYLIST_DELAY", 300):
        return False
    mq.MQ_setResponse(conn, 451, "Greylisted, please try again later", "4.7.1")
    # Tarpit before refusing: take control, and let the timer give it back.  Until then this
    # connection waits (its transport stops reading) while this thread serves other connections.
    mq.MQ_startTimer(ctx, _setting("MQ_GREYLIST_PAUSE", 0.5), mq.MQ_continue, conn)
    return True
