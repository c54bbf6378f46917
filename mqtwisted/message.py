"""The incoming message model: one MailerQ JSON document per recipient (see docs/architecture.rst).

Fields: ``envelope``, ``recipient``, ``mime`` (shared, as a queue Body), ``hostname``,
``received``, ``message-id``, ``connection`` {local-ip, local-port, remote-ip, remote-port, secure,
user}, ``dsn`` {notify, ret, orcpt, envid}, ``tags``, plus properties taken from ``x-mq-*`` headers
(smtp-extract: ``X-MQ-MaxDeliverTime: 3600`` becomes ``"maxdelivertime": 3600``; the headers are
removed from the MIME so they never travel further).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mqtwisted.connection import Connection
from mqtwisted.document import ConnectionInfo, DsnRequest, IncomingDocument, usable
from mqtwisted.xtext import xtext_decode

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_XMQ = re.compile(rb"^x-mq-([A-Za-z0-9-]+):[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n", re.I | re.M)
_HEAD_LIMIT = 256 * 1024


def header_block(mime: bytes) -> bytes:
    """The header section of a message, up to and with its last header's line end (bounded, so a
    body with no blank line costs nothing).  LF-only input, as other publishers may send, too."""
    # Searched in place: a slice of the limit first copied all of a 100 kB message.
    end = mime.find(b"\r\n\r\n", 0, _HEAD_LIMIT)
    if end >= 0:
        return mime[: end + 2]
    end = mime.find(b"\n\n", 0, _HEAD_LIMIT)
    return mime[: end + 1] if end >= 0 else mime[:_HEAD_LIMIT]


def message_id(head: bytes) -> str | None:
    """The Message-ID header's value, from a :func:`header_block`."""
    at = (b"\r\n" + head[:_HEAD_LIMIT]).lower().find(b"\nmessage-id:")
    if at < 0:
        return None
    m = _MESSAGE_ID.match(head, max(0, at - 1))
    if m is None:
        return None
    return re.sub(rb"\s+", b" ", m.group(1)).strip().decode("utf-8", "replace") or None


def extract_properties(mime: bytes, head: bytes) -> tuple[dict[str, Any], bytes]:
    """``x-mq-*`` headers as properties, and the MIME without them (``head``: its header_block)."""
    if b"x-mq-" not in head.lower():
        return {}, mime
    props: dict[str, Any] = {}
    for m in _XMQ.finditer(head):
        raw = re.sub(rb"\r\n[ \t]+", b" ", m.group(2)).decode("utf-8", "replace").strip()
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        props[m.group(1).decode("ascii").lower()] = value
    return props, _XMQ.sub(b"", head) + mime[len(head) :]


def dsn_fields(sender_params: dict[str, str | None], rcpt_params: dict[str, str | None]) -> dict[str, Any]:
    dsn: dict[str, Any] = {}
    if rcpt_params.get("NOTIFY"):
        dsn["notify"] = (rcpt_params["NOTIFY"] or "").upper()
    if rcpt_params.get("ORCPT"):
        dsn["orcpt"] = xtext_decode(rcpt_params["ORCPT"] or "")
    if sender_params.get("RET"):
        dsn["ret"] = (sender_params["RET"] or "").upper()
    if sender_params.get("ENVID"):
        dsn["envid"] = xtext_decode(sender_params["ENVID"] or "")
    return dsn


def incoming_document(
    conn: Connection,
    sender: str,
    sender_params: dict[str, str | None],
    recipient: str,
    rcpt_params: dict[str, str | None],
    *,
    hostname: str,
    received: float,
    msgid: str | None,
    properties: dict[str, Any],
) -> dict[str, Any]:
    """The JSON queued for one recipient: ``properties`` (from ``x-mq-*`` headers) overridden by
    what the session established."""
    doc = IncomingDocument(dict(properties))
    doc.envelope = sender
    doc.recipient = recipient
    doc.hostname = hostname
    doc.received = received
    doc.connection = ConnectionInfo(conn.local_ip, conn.local_port, conn.remote_ip, conn.remote_port,
                                    conn.helo, conn.secure, conn.user)
    doc.tags = usable(lambda: doc.tags, None) or []
    if msgid is not None:
        doc.message_id = msgid
    dsn = dsn_fields(sender_params, rcpt_params)
    if dsn:
        doc.dsn = DsnRequest.parse("dsn", dsn)
    # What the sender asked of every hop on the way (delivery keeps it or fails the message).
    if (sender_params.get("BODY") or "").upper() == "BINARYMIME":
        doc.binarymime = True
    if "SMTPUTF8" in sender_params:
        doc.smtputf8 = True
    if "REQUIRETLS" in sender_params:
        doc.requiretls = True
    return doc.json
