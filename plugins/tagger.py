"""Edits each incoming message's JSON in ``mq_smtp_in_message``: tags and a header.

``mq_smtp_in_message`` runs once per recipient, before that recipient's JSON is queued, so edits
can differ per recipient.  Adds the tag ``via-mqmta`` (plus ``authenticated`` for logged-in
senders), and a ``X-MQ-Received-By`` header at the top of the MIME when the body is in memory.
"""

from __future__ import annotations

from typing import Any

from mqtwisted import api as mq

HEADER = b"X-MQ-Received-By"


def mq_version() -> int:
    return mq.MQ_API_VERSION


def mq_smtp_in_message(ctx: Any, conn: Any, message: Any) -> bool:
    doc = mq.MQ_json(message)
    tags = doc.setdefault("tags", [])
    tags.append("via-mqmta")
    if mq.MQ_authenticated(conn):
        tags.append("authenticated")
    mime = mq.MQ_mime(message)
    if mime is not None:  # None: a large body kept on disk; leave it alone
        host = doc.get("hostname") or "mqmta"
        mq.MQ_setMime(message, HEADER + b": " + host.encode("ascii", "replace") + b"\r\n" + mime)
    return False
