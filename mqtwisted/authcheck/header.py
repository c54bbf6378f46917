"""The ``Authentication-Results`` header fields of an arriving message: the one this MTA adds, on
top, and the removal of those that claim to come from this MTA already, which it did not write
(RFC 8601 §5: a receiver must be able to trust the fields its own host name is on).
"""

from __future__ import annotations

import re

import authres

from mqtwisted.message import header_block

HEADER = b"Authentication-Results"
_FIELD = re.compile(rb"^authentication-results[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n", re.I | re.M)
_COMMENT = re.compile(r"\([^()]*\)")


def claimed_by(value: bytes) -> str:
    """The authserv-id an ``Authentication-Results`` value names (lower case; '' if none)."""
    text = re.sub(rb"\r?\n", b"", value).decode("utf-8", "replace")
    try:
        return str(authres.AuthenticationResultsHeader.parse_value(text).authserv_id or "").lower()
    except authres.AuthResError:
        # Malformed, yet it may still claim to be ours: its first word outside comments is the id.
        while _COMMENT.search(text):
            text = _COMMENT.sub(" ", text)
        words = text.split(";", 1)[0].split()
        return words[0].lower() if words else ""


def stamp(start: bytes, field: bytes, authserv_id: str) -> bytes:
    """``start`` (the message, or its first bytes with the whole header section) with ``field``
    prepended and every ``Authentication-Results`` field claiming ``authserv_id`` removed."""
    head = header_block(start)
    ours = authserv_id.lower()
    kept = _FIELD.sub(lambda m: b"" if claimed_by(m.group(0).split(b":", 1)[1]) == ours else m.group(0), head)
    return field + kept + start[len(head):]
