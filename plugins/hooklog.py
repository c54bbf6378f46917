"""Logs every hook it sees: a tour of the plugin API, and a fixture the tests use.

Each line names the hook, the connection id and the context (worker thread) it ran on, which is
how you can see that every hook of one connection runs on the same context.
"""

from __future__ import annotations

import threading
from typing import Any

from mqtwisted import api as mq


def mq_version() -> int:
    return mq.MQ_API_VERSION


def mq_initialize() -> None:
    mq.MQ_log(mq.MQ_INFO, "initialize")


def mq_cleanup() -> None:
    mq.MQ_log(mq.MQ_INFO, "cleanup")


def mq_context_initialize(ctx: mq.MQ_Context) -> None:
    mq.MQ_log(mq.MQ_INFO, f"context {mq.MQ_contextId(ctx)} up in {threading.current_thread().name}")


def mq_context_cleanup(ctx: mq.MQ_Context) -> None:
    mq.MQ_log(mq.MQ_INFO, f"context {mq.MQ_contextId(ctx)} down")


def _log(ctx: mq.MQ_Context, conn: mq.MQ_Connection, what: str) -> bool:
    mq.MQ_log(mq.MQ_INFO, f"conn {mq.MQ_connectionId(conn)} ctx {mq.MQ_contextId(ctx)}: {what}")
    return False  # never take control: the next plugin runs


def mq_smtp_in_connect(ctx: Any, conn: Any) -> bool:
    ip, port = mq.MQ_remoteAddress(conn)
    return _log(ctx, conn, f"connect from {ip}:{port}")


def mq_smtp_in_secure(ctx: Any, conn: Any) -> bool:
    return _log(ctx, conn, f"secure {mq.MQ_tlsVersion(conn)} {mq.MQ_tlsCipher(conn)}")


def mq_smtp_in_authenticate(ctx: Any, conn: Any, login: str, password: str) -> bool:
    return _log(ctx, conn, f"authenticate {login!r}")  # never log passwords


def mq_smtp_in_mailfrom(ctx: Any, conn: Any, address: str) -> bool:
    return _log(ctx, conn, f"mail from {address!r} (helo {mq.MQ_helo(conn)!r})")


def mq_smtp_in_rcptto(ctx: Any, conn: Any, address: str) -> bool:
    return _log(ctx, conn, f"rcpt to {address!r}")


def mq_smtp_in_data(ctx: Any, conn: Any, mime: bytes) -> bool:
    return _log(ctx, conn, f"data, {len(mime or b'')} bytes")


def mq_smtp_in_message(ctx: Any, conn: Any, message: Any) -> bool:
    return _log(ctx, conn, f"message for {mq.MQ_recipient(message)!r}")


def mq_smtp_in_close(ctx: Any, conn: Any) -> bool:
    return _log(ctx, conn, "close")


def mq_smtp_out_data(ctx: Any, conn: Any, message: Any) -> bool:
    return _log(ctx, conn, f"out data to {mq.MQ_recipient(message)!r}")


def mq_smtp_out_sent(ctx: Any, conn: Any, message: Any) -> bool:
    return _log(ctx, conn, f"out sent to {mq.MQ_recipient(message)!r}")
