"""Delivery attempts as MailerQ records them, and the policy that turns them into outcomes.

One :class:`Attempt` per try; ``Attempt.as_record()`` is the
:class:`~mqtwisted.document.AttemptRecord` appended to a document's ``results`` array.  Times are
MailerQ's ``YYYY-MM-DD HH:MM:SS`` in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from mqtwisted.document import AttemptRecord

DEFAULT_RETRY_INTERVALS: tuple[int, ...] = (600, 600, 1800, 1800, 3600, 3600, 7200)
DEFAULT_MAX_DELIVERTIME = 86400


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
    #: the TLS policy that applied (mqtwisted.tlspolicy: none, opportunistic, required, verified,
    #: mta-sts, mta-sts-testing, dane)
    tls_policy: str | None = None
    #: decided by the sender when the code alone cannot say (DNS, TLS policy, hooks)
    permanent: bool | None = None
    #: the server's reply as it came, one ``"code text"`` per line (traffic shaping's rules
    #: match lines); empty when the attempt is not a server reply.  Not part of the record.
    reply: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False)
    #: what kind of failure this is (:mod:`mqtwisted.classify`); set by delivery when recorded
    classification: str | None = attrs.field(default=None, eq=False)

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

    def as_record(self) -> AttemptRecord:
        """The record appended to ``results``; the DSN flag only on an accepted message."""
        return AttemptRecord(
            self.time, self.state, self.result, self.code, self.status, self.description,
            self.mta, self.local_ip, self.remote_ip, self.messages, self.cipher,
            self.dsn if self.accepted else None,
            classification=None if self.accepted else self.classification, tls_policy=self.tls_policy,
        )

    def record(self) -> dict[str, Any]:
        """The JSON object appended to ``results``; keys that do not apply are left out."""
        return self.as_record().to_json()


def reply_lines(code: int, text: str | bytes) -> tuple[str, ...]:
    """``"code text"`` for each line of a reply whose lines (code stripped) are ``text``: the form
    automation rules are matched against."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return tuple(f"{code} {line}".rstrip() for line in text.splitlines() or [""])


def from_reply(state: str, code: int, text: str | bytes, **kw: Any) -> Attempt:
    """An attempt from an SMTP reply (multi-line replies joined with spaces)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [split_enhanced(line) for line in text.splitlines() or [""]]
    status = lines[0][0]
    description = " ".join(t for _, t in lines).strip()
    result = "accepted" if 200 <= code < 300 and state == "message" else "error"
    return Attempt(state, result, code, status, description, reply=reply_lines(code, text), **kw)


def retry_interval(attempts: int, schedule: Sequence[int]) -> int:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based); the last one repeats."""
    if not schedule:
        schedule = DEFAULT_RETRY_INTERVALS
    return int(schedule[min(max(attempts, 1), len(schedule)) - 1])
