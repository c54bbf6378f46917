"""The narrow interface through which the SMTP server asks external filters (milters) for their
verdicts, without importing them: :class:`Filters` opens one :class:`FilterSession` per SMTP
connection, and the server asks it at CONNECT, HELO, MAIL, RCPT and the end of DATA, each time
after the plugins allowed the step (docs/plugins.rst: "Milters and plugins").

:mod:`mqtwisted.milter` implements it; :class:`NoFilters` is what runs without ``--milters``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from mqtwisted.connection import Connection, Reply
from mqtwisted.envelope import Body, Envelope, Recipient


@attrs.frozen
class Filtered:
    """A message the filters let through: its envelope and body as they left them (the envelope's
    ``quarantine`` set when one quarantined it), or ``discard``: answer 250 and keep nothing."""

    envelope: Envelope
    body: Body
    discard: bool = False


class FilterSession(Protocol):
    """The filters of one SMTP connection.  Every method fires with a verdict; none errbacks."""

    def connect(self) -> Deferred[Reply | None]: ...

    def helo(self, name: str) -> Deferred[Reply | None]: ...

    def mail(self, sender: str, params: dict[str, str | None]) -> Deferred[Reply | None]: ...

    def rcpt(self, recipient: Recipient) -> Deferred[Reply | None]:
        """A refusal refuses this recipient only."""

    def message(self, envelope: Envelope, body: Body, is_local: Callable[[str], bool]) -> Deferred[Reply | Filtered]:
        """The end of DATA: a refusal, or the message to queue (``is_local`` places an added recipient)."""

    def close(self) -> None: ...


class Filters(Protocol):
    def open(self, conn: Connection) -> FilterSession | None:
        """The filters for a new connection, or None when there are none."""


class NoFilters:
    def open(self, conn: Connection) -> FilterSession | None:
        return None
