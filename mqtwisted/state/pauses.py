"""Pauses: deliveries matching one hold back, without an attempt, until the pause is removed or
expires.

A pause names a sending side (a sending IP or a pool name), a recipient domain and a tag; each
one left out matches anything.  :class:`PauseList` is the interface operators' tools call
(``mqmta pause``, a REST API); it writes through a blocking
:class:`~mqtwisted.state.backend.Backend`.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from mqtwisted.state.backend import Backend


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _field(name: str, value: str | None, lower: bool = True) -> str | None:
    """A pause's ``name`` as given (None: any).  Given empty, it would match anything and pause
    every delivery, which no one naming a domain means; with a control character (or a blank
    in an address, a pool name or a domain) it would match nothing: both are refused."""
    if value is None:
        return None
    text = value.strip()
    if lower:
        text = text.lower().rstrip(".")
    if not text:
        raise ValueError(f"{name}: empty (leave it out to match any {name})")
    if _CONTROL.search(text) or (lower and " " in text):
        raise ValueError(f"{name}: a blank or a control character in {value!r}")
    return text


def _source(value: str | None) -> str | None:
    """A sending IP in the form delivery compares (``2001:DB8:0::1`` is ``2001:db8::1``, as the
    shaping file's addresses are), or a pool name."""
    text = _field("source", value)
    try:
        return str(ipaddress.ip_address(text.strip("[]"))) if text is not None else None
    except ValueError:
        return text


@attrs.frozen
class Pause:
    """One pause.  ``source``: a sending IP or a pool name; ``domain``: the recipient's domain;
    ``tag``: one of the message's ``tags``; ``until``: when it ends (None: when removed)."""

    id: str
    source: str | None = None
    domain: str | None = None
    tag: str | None = None
    until: float | None = None
    reason: str = ""
    created: float = 0.0

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now

    def matches(self, address: str | None, pool: str | None, domain: str, tags: Iterable[str]) -> bool:
        """Does this pause hold a message sent from ``address`` (in ``pool``) to ``domain``?"""
        if self.source is not None and self.source not in (address, (pool or "").lower()):
            return False
        if self.domain is not None and self.domain != domain.lower().rstrip("."):
            return False
        return self.tag is None or self.tag in tags

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pause:
        return cls(**{f.name: data.get(f.name, f.default) for f in attrs.fields(cls)})


def paused_by(pauses: Sequence[Pause], now: float, address: str | None, pool: str | None, domain: str,
              tags: Iterable[str]) -> Pause | None:
    """The pause in force that holds this message (the one ending last), or None."""
    tags = tuple(tags)
    found = [p for p in pauses if p.active(now) and p.matches(address, pool, domain, tags)]
    if not found:
        return None
    return max(found, key=lambda p: float("inf") if p.until is None else p.until)


class PauseList:
    """Pauses in a backend: add, list, remove."""

    def __init__(self, backend: Backend, clock: Any = time.time) -> None:
        self.backend = backend
        self.clock = clock

    def add(self, source: str | None = None, domain: str | None = None, tag: str | None = None,
            duration: float | None = None, reason: str = "") -> Pause:
        """Pause what matches (each of ``source``, ``domain``, ``tag`` None: anything) for
        ``duration`` seconds (None: until removed)."""
        if duration is not None and duration <= 0:
            raise ValueError(f"duration: must be positive, got {duration!r}")
        now = self.clock()
        pause = Pause(uuid.uuid4().hex[:8], _source(source), _field("domain", domain),
                      _field("tag", tag, lower=False),
                      None if duration is None else now + duration, reason, now)
        self.backend.put_pause(pause)
        return pause

    def list(self) -> list[Pause]:
        """The pauses in force (expired ones are dropped), oldest first."""
        now = self.clock()
        pauses = self.backend.pauses()
        for p in pauses:
            if not p.active(now):
                self.backend.remove_pause(p.id)
        return sorted((p for p in pauses if p.active(now)), key=lambda p: p.created)

    def remove(self, pause_id: str) -> bool:
        """End a pause now; False when there is none with that id."""
        return self.backend.remove_pause(pause_id)
