"""MailerQ's JSON value conventions: how times, retry schedules, host names and the MIME are
written in a document, and the checked readers the typed document
(:mod:`mqtwisted.document`) builds its accessors from.  Each reader takes the property's key and
its raw JSON value and returns the typed value, or raises :class:`DocumentError` naming the key.
"""

from __future__ import annotations

import datetime
import email.utils
import math
from collections.abc import Mapping
from typing import Any

#: The outbound TLS policies a document's ``security`` may name (the delivery client's levels).
SECURITY_LEVELS: tuple[str, ...] = ("none", "optional", "opportunistic", "required", "verified")

#: Timestamps in ``results`` and MailerQ's other time properties: ``YYYY-MM-DD HH:MM:SS`` in UTC.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class DocumentError(ValueError):
    """A property the MTA interprets holds a value it cannot use."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key = key
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"property {key!r}: expected {expected}, got {shown}")


# -- JSON values ---------------------------------------------------------------------------------


def mime_text(data: bytes) -> str:
    """MIME bytes as the ``mime`` JSON string; 8-bit octets survive as surrogate escapes."""
    return data.decode("utf-8", "surrogateescape")


def mime_bytes(text: str) -> bytes:
    """The inverse of :func:`mime_text`."""
    return text.encode("utf-8", "surrogateescape")


#: the last second formatted: a busy worker stamps many attempts within the same second
_last_formatted: tuple[int, str] = (-1, "")


def format_time(seconds: float) -> str:
    global _last_formatted
    whole = math.floor(seconds)
    last = _last_formatted  # one read: another thread may replace it meanwhile
    if last[0] != whole:
        last = _last_formatted = (whole, datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime(TIME_FORMAT))
    return last[1]


def parse_time(value: Any) -> float | None:
    """A timestamp as MailerQ writes it, an ISO 8601 string or epoch seconds; None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return parsed.timestamp()
    return None


def parse_intervals(value: Any) -> tuple[int, ...] | None:
    """``[600, 1800]`` or ``"600,1800"`` → (600, 1800); None when unusable."""
    if isinstance(value, str):
        value = [v for v in value.replace(";", ",").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        return None
    try:
        out = tuple(int(float(v)) for v in value)
    except (TypeError, ValueError):
        return None
    return out if all(v >= 0 for v in out) else None


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port


# -- parsers: (key, raw JSON value) -> typed value, or DocumentError ------------------------------


def text_value(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DocumentError(key, value, "a string")
    return value


def boolean_value(key: str, value: Any) -> bool:
    if value not in (True, False):  # 0 and 1 as well: other publishers write them
        raise DocumentError(key, value, "true or false")
    return bool(value)


def count_value(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise DocumentError(key, value, "a whole number")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DocumentError(key, value, "a whole number") from None
    if n < 0 or (isinstance(value, float) and n != value):
        raise DocumentError(key, value, "a whole number")
    return n


def timestamp_value(key: str, value: Any) -> float:
    seconds = parse_time(value)
    if seconds is None:
        raise DocumentError(key, value, "a time (epoch seconds or 'YYYY-MM-DD HH:MM:SS')")
    return seconds


def intervals_value(key: str, value: Any) -> tuple[int, ...]:
    schedule = parse_intervals(value)
    if schedule is None:
        raise DocumentError(key, value, "a list of seconds")
    return schedule


def security_value(key: str, value: Any) -> str:
    if value not in SECURITY_LEVELS:
        raise DocumentError(key, value, "one of " + ", ".join(SECURITY_LEVELS))
    return str(value)


def mime_value(key: str, value: Any) -> bytes:
    if isinstance(value, str):
        return mime_bytes(value)
    if isinstance(value, bytes):  # an in-flight incoming document, before it is queued
        return value
    raise DocumentError(key, value, "the message as a string")


def dump_mime(value: bytes | str) -> str:
    return value if isinstance(value, str) else mime_text(value)


def tags_value(key: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise DocumentError(key, value, "a list")
    return [str(v) for v in value]


def object_value(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DocumentError(key, value, "an object")
    return value


def arrival_date(received: float) -> str:
    """An RFC 5322 date for a DSN's ``Arrival-Date`` (RFC 3464 §2.2.5)."""
    return email.utils.formatdate(received)
