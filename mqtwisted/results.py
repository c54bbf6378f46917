"""Delivery attempts as MailerQ records them, and the policy that turns them into outcomes.

One :class:`Attempt` per try; ``Attempt.record()`` is the object appended to a document's
``results`` array (DESIGN.md §4).  Times are MailerQ's ``YYYY-MM-DD HH:MM:SS`` in UTC.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

DEFAULT_RETRY_INTERVALS: tuple[int, ...] = (600, 600, 1800, 1800, 3600, 3600, 7200)
DEFAULT_MAX_DELIVERTIME = 86400

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


#: the last second formatted: a busy worker stamps many attempts within the same second
_last_formatted: tuple[int, str] = (-1, "")


def format_time(seconds: float) -> str:
    global _last_formatted
    whole = math.floor(seconds)
    last = _last_formatted  # one read: another thread may replace it meanwhile
    if last[0] != whole:
        last = _last_formatted = (whole, datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime(_TIME_FORMAT))
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


_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


def split_enhanced(text: str) -> tuple[str | None, str]:
    """``"5.1.1 no such user"`` → ("5.1.1", "no such user")."""
    m = _ENHANCED.match(text)
    if m is None:
        return None, text
    return m.group(0), text[m.end():].strip()


@attrs.define
class Attempt:
    """The outcome of one attempt at one message (or at a connection, before any message)."""

    state: str
    result: str  # accepted, error, timeout, lost, invalid
    code: int | None = None
    status: str | None = None
    description: str = ""
    time: float = 0.0
    mta: str | None = None
    local_ip: str | None = None
    remote_ip: str | None = None
    messages: int | None = None
    cipher: dict[str, Any] | None = None
    dsn: bool | None = None
    #: decided by the sender when the code alone cannot say (DNS, TLS policy, hooks)
    permanent: bool | None = None

    @property
    def accepted(self) -> bool:
        return self.result == "accepted"

    @property
    def is_permanent(self) -> bool:
        if self.accepted:
            return False
        if self.permanent is not None:
            return self.permanent
        return self.code is not None and 500 <= self.code < 600

    def record(self) -> dict[str, Any]:
        """The JSON object appended to ``results``; keys that do not apply are left out."""
        out: dict[str, Any] = {"time": format_time(self.time), "state": self.state, "result": self.result}
        if self.code is not None:
            out["code"] = self.code
        if self.status is not None:
            out["status"] = self.status
        if self.description:
            out["description"] = self.description
        if self.mta is not None:
            out["mta"] = self.mta
        if self.local_ip is not None:
            out["from"] = self.local_ip
        if self.remote_ip is not None:
            out["to"] = self.remote_ip
        if self.messages is not None:
            out["messages"] = self.messages
        if self.cipher is not None:
            out["cipher"] = self.cipher
        if self.dsn is not None and self.accepted:
            out["dsn"] = self.dsn
        return out


def from_reply(state: str, code: int, text: str | bytes, **kw: Any) -> Attempt:
    """An attempt from an SMTP reply (multi-line replies joined with spaces)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [split_enhanced(line) for line in text.splitlines() or [""]]
    status = lines[0][0]
    description = " ".join(t for _, t in lines).strip()
    result = "accepted" if 200 <= code < 300 and state == "message" else "error"
    return Attempt(state, result, code, status, description, **kw)


def retry_interval(attempts: int, schedule: Sequence[int]) -> int:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based); the last one repeats."""
    if not schedule:
        schedule = DEFAULT_RETRY_INTERVALS
    return int(schedule[min(max(attempts, 1), len(schedule)) - 1])


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


def target_queue(document: Mapping[str, Any], name: str, defaults: Mapping[str, str]) -> str | None:
    """The queue a result of kind ``name`` goes to: the message's ``queues`` entry when present
    (``null`` = nowhere), else the configured default."""
    queues = document.get("queues")
    if isinstance(queues, Mapping) and name in queues:
        value = queues[name]
        return value if isinstance(value, str) and value else None
    return defaults.get(name, name)


def result_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The copy published to result queues: everything but ``mime`` unless ``keepmime``."""
    out = dict(document)
    if not document.get("keepmime"):
        out.pop("mime", None)
    return out
