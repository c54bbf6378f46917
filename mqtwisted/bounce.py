"""Delivery status notifications: RFC 3464 ``multipart/report`` messages to a message's sender.

One report per recipient document (MailerQ keeps one document per recipient), for each of the
four actions RFC 3461 asks an MTA to report:

* ``failed`` — given up for good; due unless NOTIFY excludes FAILURE (no NOTIFY: due);
* ``delayed`` — still being retried after ``delay-warning-time``; due only when NOTIFY names DELAY;
* ``relayed`` — accepted by a next hop that does not offer DSN, so no success report can come
  from further on; due only when NOTIFY names SUCCESS;
* ``delivered`` — put on the ``local`` queue, mqmta's final delivery; due only when NOTIFY names
  SUCCESS.

A failure report returns what RET asks (the whole message, or its headers with ``RET=HDRS``);
the others return the headers only, as Postfix does: RFC 3461 §4.3 gives RET for failures, and a
success or delay notice needs no copy of the body.
"""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from mqtwisted.document import Bounce, Document, DsnRequest, OutgoingDocument, usable
from mqtwisted.jsonvalues import arrival_date
from mqtwisted.message import header_block
from mqtwisted.results import Attempt

#: action → (the NOTIFY keyword that asks for it, Subject, the sentence that explains it)
_ACTIONS: dict[str, tuple[str, str, str]] = {
    "failed": ("FAILURE", "Undelivered Mail Returned to Sender",
               "Your message could not be delivered to one or more recipients."),
    "delayed": ("DELAY", "Delayed Mail (still being retried)",
                "Your message has not been delivered yet.  It is still being retried; you do not "
                "need to send it again."),
    "relayed": ("SUCCESS", "Successful Mail Delivery Report",
                "Your message was relayed to a system that does not send delivery status "
                "notifications: this is the last notification you will receive for it."),
    "delivered": ("SUCCESS", "Successful Mail Delivery Report",
                  "Your message was delivered to the destination listed below."),
}


@attrs.frozen
class Notice:
    """What one report says about its recipient (the per-recipient fields of RFC 3464 §2.3)."""

    action: str
    status: str
    diagnostic: str = ""
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None
    #: the reason in words, for the human-readable part
    text: str = ""


def wants_report(document: Mapping[str, Any] | Document, action: str) -> bool:
    """Whether the sender asked for a report of ``action`` (RFC 3461 §4.1): never to the null
    sender (no report about a report), never with NOTIFY=NEVER; a failure unless NOTIFY leaves
    FAILURE out; delay and success only when NOTIFY names them."""
    doc = Document.of(document)
    if not usable(lambda: doc.sender, "").strip():
        return False
    request = usable(lambda: doc.dsn, None)
    if action == "failed":
        return request is None or request.wants_failure_report
    return request is not None and request.asks(_ACTIONS[action][0])


def diagnostic_code(attempt: Attempt) -> str:
    """RFC 3464 §2.3.6: the server's reply as ``smtp; …``, else mqmta's own reason."""
    if attempt.code is not None:
        return f"smtp; {attempt.code} {attempt.status + ' ' if attempt.status else ''}{attempt.description}".strip()
    return f"X-mqmta; {attempt.description}" if attempt.description else ""


def failed(attempt: Attempt) -> Notice:
    """The notice of ``attempt``, the last one of a message given up."""
    status = attempt.status or ""
    if not status.startswith("5"):
        # A failure report carries a permanent status; a temporary one that ran out of time is
        # "delivery time expired" (RFC 3463 X.4.7).
        status = "5.4.7" if attempt.state == "process" or not attempt.is_permanent else "5.0.0"
    return Notice("failed", status, diagnostic_code(attempt), attempt.mta, attempt.time,
                  text=f"{attempt.description or 'delivery failed'} (state {attempt.state}, result {attempt.result})")


def delayed(attempt: Attempt, until: float) -> Notice:
    """The notice of a message still retried after ``attempt``, until ``until`` (epoch seconds)."""
    status = attempt.status if attempt.status and attempt.status.startswith("4") else "4.0.0"
    return Notice("delayed", status, diagnostic_code(attempt), attempt.mta, attempt.time, until,
                  text=f"{attempt.description or 'not delivered yet'} (will retry until {email.utils.formatdate(until)})")


def relayed(attempt: Attempt) -> Notice:
    """The notice of a message a next hop without DSN accepted (``attempt``)."""
    return Notice("relayed", "2.0.0", diagnostic_code(attempt), attempt.mta, attempt.time,
                  text=f"relayed to {attempt.mta or 'the next system'}, which does not offer DSN")


def delivered(queue: str, when: float) -> Notice:
    """The notice of a message put on the local queue ``queue`` at ``when``."""
    return Notice("delivered", "2.0.0", f"X-mqmta; delivered to queue {queue}", None, when,
                  text=f"delivered to queue {queue}")


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def build_report(
    document: Mapping[str, Any] | Document,
    notice: Notice,
    *,
    reporting_mta: str,
    now: float,
    original: bytes | None = None,
) -> dict[str, Any]:
    """The document for the ``dsn`` queue: from the null sender to the original envelope sender,
    reporting ``notice`` for the document's recipient.  ``original`` is the message (default:
    the document's ``mime``).  It is written whatever the document holds: a property it cannot
    use is left out of the report."""
    doc = OutgoingDocument.of(document)
    sender = usable(lambda: doc.sender, "")
    recipient = usable(lambda: doc.recipient, None) or ""
    dsn = usable(lambda: doc.dsn, None) or DsnRequest()
    _, subject, explanation = _ACTIONS[notice.action]
    boundary = f"=_mqmta_{uuid.uuid4().hex}"
    date = email.utils.formatdate(now)

    human = [f"This is the mail system at {reporting_mta}.", "", explanation, "",
             f"<{recipient}>: {notice.text}"]
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
    per_rcpt += [f"Final-Recipient: rfc822; {recipient}", f"Action: {notice.action}", f"Status: {notice.status}"]
    if notice.remote_mta:
        per_rcpt.append(f"Remote-MTA: dns; {notice.remote_mta}")
    if notice.diagnostic:
        per_rcpt.append(f"Diagnostic-Code: {notice.diagnostic}")
    per_rcpt.append(f"Last-Attempt-Date: {email.utils.formatdate(notice.last_attempt or now)}")
    if notice.will_retry_until is not None:
        per_rcpt.append(f"Will-Retry-Until: {email.utils.formatdate(notice.will_retry_until)}")

    if original is None:
        original = usable(lambda: doc.mime, None) or b""
    # RFC 8689 §5: a report goes without REQUIRETLS (a new message from the null sender), so
    # the body of a message that asked for it is left out.
    whole = notice.action == "failed" and not dsn.headers_only and not usable(lambda: bool(doc.requiretls), False)
    third_type, third = ("message/rfc822", original) if whole else ("text/rfc822-headers", header_block(original))
    returned = "Undelivered message" if notice.action == "failed" else "Message"
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
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
        f"Content-Description: {returned} {'' if whole else 'headers'}".rstrip(),
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
    report.bounce = Bounce(recipient, notice.status, notice.action)
    return report.json
