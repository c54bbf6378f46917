"""The suppression list: recipients (an address, or every address of a domain) that are never
sent to.  A suppressed recipient fails at once, without a connection, with the reply its entry
gives (``550 5.7.1`` by default), and bounces like any permanent failure.

:class:`SuppressionList` is the interface operators' tools call (``mqmta suppress``, a REST
API); :func:`match` is what delivery asks, on a snapshot of the list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from mqtwisted.state.backend import Backend

DEFAULT_CODE = 550
DEFAULT_ENHANCED = "5.7.1"
DEFAULT_TEXT = "Recipient is on the suppression list"
# \Z, not $: "5.7.1\n" would pass, and the status goes into delivery reports' fields.
_ENHANCED = re.compile(r"5\.[0-9]{1,3}\.[0-9]{1,3}\Z")


def normalize(pattern: str) -> str:
    """``User@Example.COM`` -> ``user@example.com`` (local parts compare without case, as every
    large mailbox provider treats them); ``@example.com`` or ``example.com`` -> the
    domain (the whole domain is suppressed).  ValueError for anything else."""
    text = pattern.strip()
    if text.startswith("@"):
        text = text[1:]
    local, at, domain = text.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not domain or " " in text or (at and not local) or "." not in domain and domain != "localhost":
        raise ValueError(f"expected an address (user@example.com) or a domain (example.com), got {pattern!r}")
    return f"{local.lower()}@{domain}" if at else domain


@attrs.frozen
class Suppression:
    """One entry: ``pattern`` is an address or a domain; ``code``, ``enhanced`` and ``text``
    are the reply recorded for a recipient it matches."""

    pattern: str
    code: int = DEFAULT_CODE
    enhanced: str = DEFAULT_ENHANCED
    text: str = DEFAULT_TEXT
    until: float | None = None
    created: float = 0.0

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Suppression:
        return cls(**{f.name: data.get(f.name, f.default) for f in attrs.fields(cls)})


def match(entries: Mapping[str, Suppression], address: str, now: float) -> Suppression | None:
    """The entry that suppresses ``address`` (its own before its domain's), or None."""
    local, _, domain = address.lower().rpartition("@")
    domain = domain.rstrip(".")
    for key in (f"{local}@{domain}", domain) if local else (domain,):
        entry = entries.get(key)
        if entry is not None and entry.active(now):
            return entry
    return None


class SuppressionList:
    """Suppressions in a backend: add, list, remove, match."""

    def __init__(self, backend: Backend, clock: Any = time.time) -> None:
        self.backend = backend
        self.clock = clock

    def add(self, pattern: str, code: int = DEFAULT_CODE, enhanced: str = DEFAULT_ENHANCED,
            text: str = DEFAULT_TEXT, duration: float | None = None) -> Suppression:
        """Suppress an address or a domain (replacing an entry for the same one)."""
        if isinstance(code, float) and code.is_integer():
            code = int(code)  # JSON's 550.0 (valid as an integer there) is the reply code 550
        if not isinstance(code, int) or isinstance(code, bool) or not 500 <= code <= 599:
            raise ValueError(f"code: a suppressed recipient fails for good, so 5xx; got {code!r}")
        if not _ENHANCED.match(enhanced):
            raise ValueError(f"enhanced: expected a 5.x.y status code like 5.7.1, got {enhanced!r}")
        if duration is not None and duration <= 0:
            raise ValueError(f"duration: must be positive, got {duration!r}")
        now = self.clock()
        entry = Suppression(normalize(pattern), code, enhanced, " ".join(text.split()) or DEFAULT_TEXT,
                            None if duration is None else now + duration, now)
        self.backend.put_suppression(entry)
        return entry

    def list(self) -> list[Suppression]:
        now = self.clock()
        return sorted((s for s in self.backend.suppressions() if s.active(now)), key=lambda s: s.pattern)

    def remove(self, pattern: str) -> bool:
        """False when ``pattern`` is not on the list."""
        return self.backend.remove_suppression(normalize(pattern))

    def match(self, address: str) -> Suppression | None:
        return match({s.pattern: s for s in self.backend.suppressions()}, address, self.clock())
