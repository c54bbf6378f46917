"""What one outbound message looks like on the wire: the DATA payload and the MAIL/RCPT lines.

Pure functions of the message and the server's EHLO keywords; the transaction rules that decide
when they are sent are in :mod:`mqtwisted.smtp.outbound`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mqtwisted.xtext import xtext_encode

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def encode_body(mime: bytes) -> bytes:
    """The DATA payload for ``mime``: CRLF line endings, leading dots doubled, ending in CRLF.

    Works on whole lines before any chunking, so a ``.`` at the start of the first line or
    of a line that crosses a transport chunk is still doubled (Twisted's transformChunk
    misses both).  The terminating ``.`` line is not included.
    """
    if not mime:
        return b""
    data = mime
    crlf = data.count(b"\r\n")
    # C-speed counts first: mail from our own server is already CRLF-only and rarely has a
    # leading dot, and the regular expressions cost more than the rest of a message's sending.
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        data = _LINE_END.sub(b"\r\n", data)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def wire(message: Any, handle: Any) -> tuple[str, str, bytes]:
    """Envelope, recipient and MIME as sent: a hook's ``wire_*`` override, else the message's."""
    h = handle
    envelope = h.wire_envelope if h is not None and h.wire_envelope is not None else message.envelope
    recipient = h.wire_recipient if h is not None and h.wire_recipient is not None else message.recipient
    mime = h.wire_mime if h is not None and h.wire_mime is not None else message.mime
    return envelope, recipient, mime


def mail_line(
    envelope: str, recipient: str, body: bytes, dsn: Mapping[str, Any], extensions: Mapping[bytes, Any]
) -> bytes:
    """``MAIL FROM`` with the parameters the server advertised and the message needs."""
    params = []
    if b"SIZE" in extensions:
        params.append(b"SIZE=%d" % len(body))
    if b"8BITMIME" in extensions and not body.isascii():
        params.append(b"BODY=8BITMIME")
    if b"SMTPUTF8" in extensions and not (envelope + recipient).isascii():
        params.append(b"SMTPUTF8")
    if b"DSN" in extensions and dsn:
        ret = str(dsn.get("ret") or "").upper()
        if ret in ("FULL", "HDRS"):
            params.append(b"RET=" + ret.encode())
        if dsn.get("envid"):
            params.append(b"ENVID=" + xtext_encode(str(dsn["envid"])).encode())
    return b" ".join([b"MAIL FROM:<" + envelope.encode("utf-8") + b">", *params])


def rcpt_line(recipient: str, dsn: Mapping[str, Any], extensions: Mapping[bytes, Any]) -> bytes:
    """``RCPT TO`` with the DSN parameters when the server advertised DSN (RFC 3461)."""
    params = []
    if b"DSN" in extensions and dsn:
        notify = dsn.get("notify")
        if isinstance(notify, (list, tuple)):
            notify = ",".join(notify)
        if notify:
            params.append(b"NOTIFY=" + str(notify).upper().replace(" ", "").encode())
        if dsn.get("orcpt"):
            orcpt = str(dsn["orcpt"])
            if ";" not in orcpt:
                orcpt = "rfc822;" + orcpt
            addr_type, _, addr = orcpt.partition(";")
            params.append(b"ORCPT=" + (addr_type + ";" + xtext_encode(addr)).encode())
    return b" ".join([b"RCPT TO:<" + recipient.encode("utf-8") + b">", *params])
