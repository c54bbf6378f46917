"""Delivery status notifications (RFC 3464 ``multipart/report``) for messages that failed."""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Mapping
from typing import Any

from mqtwisted.document import (
    Bounce,
    Document,
    DsnRequest,
    OutgoingDocument,
    usable,
)
from mqtwisted.jsonvalues import arrival_date
from mqtwisted.message import header_block
from mqtwisted.results import Attempt


def wants_failure_dsn(document: Mapping[str, Any] | Document) -> bool:
    """A DSN is due unless the envelope is empty (no bounce to a bounce) or the sender's NOTIFY
    excludes FAILURE (RFC 3461 §4.1)."""
    doc = Document.of(document)
    if not usable(lambda: doc.sender, "").strip():
        return False
    request = usable(lambda: doc.dsn, None)
    return request is None or request.wants_failure_report


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def build_dsn(
    document: Mapping[str, Any] | Document,
    attempt: Attempt,
    *,
    reporting_mta: str,
    now: float,
) -> dict[str, Any]:
    """The document for the ``dsn`` queue: from the null sender to the original envelope sender,
    reporting ``attempt`` (the last one) for the document's recipient.  It is written whatever
    the document holds: a property it cannot use is left out of the report."""
    doc = OutgoingDocument.of(document)
    sender = usable(lambda: doc.sender, "")
    recipient = usable(lambda: doc.recipient, None) or ""
    dsn = usable(lambda: doc.dsn, None) or DsnRequest()
    status = attempt.status or ""
    if not status.startswith("5"):
        # A failure report carries a permanent status; a temporary one that ran out of time is
        # "delivery time expired" (RFC 3463 X.4.7).
        status = "5.4.7" if attempt.state == "process" or not attempt.is_permanent else "5.0.0"
    boundary = f"=_mqmta_{uuid.uuid4().hex}"
    date = email.utils.formatdate(now)
    diagnostic = ""
    if attempt.code is not None:
        diagnostic = f"smtp; {attempt.code} {attempt.status + ' ' if attempt.status else ''}{attempt.description}".strip()
    elif attempt.description:
        diagnostic = f"X-mqmta; {attempt.description}"

    human = [
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
        f"<{recipient}>: {attempt.description or 'delivery failed'}",
        f"    (state {attempt.state}, result {attempt.result})",
    ]
    per_message = [f"Reporting-MTA: dns; {reporting_mta}"]
    if dsn.envid:
        per_message.append(f"Original-Envelope-Id: {dsn.envid}")
    received = usable(lambda: doc.received, None)
    if received is not None:
        per_message.append(f"Arrival-Date: {arrival_date(received)}")
    per_rcpt = []
    if dsn.orcpt:
        orcpt = dsn.orcpt
        per_rcpt.append(f"Original-Recipient: {orcpt if ';' in orcpt else 'rfc822;' + orcpt}")
    per_rcpt += [f"Final-Recipient: rfc822; {recipient}", "Action: failed", f"Status: {status}"]
    if attempt.mta:
        per_rcpt.append(f"Remote-MTA: dns; {attempt.mta}")
    if diagnostic:
        per_rcpt.append(f"Diagnostic-Code: {diagnostic}")
    per_rcpt.append(f"Last-Attempt-Date: {date}")

    original = usable(lambda: doc.mime, None) or b""
    headers_only = dsn.headers_only
    if headers_only:
        third_type, third = "text/rfc822-headers", header_block(original)
    else:
        third_type, third = "message/rfc822", original

    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{uuid.uuid4().hex}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        *per_message,
        "",
        *per_rcpt,
        "",
        f"--{boundary}",
        f"Content-Type: {third_type}",
        "Content-Description: Undelivered " + ("message headers" if headers_only else "message"),
        "",
        "",
    ]
    body = "\r\n".join(head).encode("utf-8", "replace") + _crlf(third)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    body += f"\r\n--{boundary}--\r\n".encode()
    report = OutgoingDocument()
    report.envelope = ""
    report.recipient = sender
    report.mime = body
    report.bounce = Bounce(recipient, status)
    return report.json
