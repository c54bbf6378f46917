"""Reading an RFC 3464 report back with Python's ``email`` package, as a sender's software would."""

from __future__ import annotations

import email
import email.message
from typing import Any

import attrs


@attrs.frozen
class Parsed:
    """One report: its message, the per-message and per-recipient fields, the returned part."""

    message: email.message.Message
    per_message: dict[str, str]
    per_recipient: dict[str, str]
    returned_type: str
    returned: str


def parse_report(document: dict[str, Any]) -> Parsed:
    """The report in a ``dsn`` queue document; asserts the RFC 3464 structure on the way."""
    mime = document["mime"]
    msg = email.message_from_bytes(mime.encode() if isinstance(mime, str) else mime)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    # email parses message/delivery-status into one Message per block of fields
    blocks = status.get_payload()
    assert len(blocks) == 2, [dict(b) for b in blocks]
    per_message, per_recipient = ({k: str(v) for k, v in b.items()} for b in blocks)
    return Parsed(msg, per_message, per_recipient, returned.get_content_type(), returned.as_string())
