"""What one accepted SMTP transaction is, in terms both the protocol and the queue understand.

The server builds an :class:`Envelope` and a :class:`Body`; cleanup turns them into one MailerQ
document per recipient; the queue stores the body once for all of them.  Living here, below both,
these types let the protocol code (``mqtwisted.smtp``) and the queue (``mqtwisted.queue``) share them
without importing each other.  See docs/architecture.rst for the data path.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Recipient:
    """One accepted ``RCPT TO``: the address, its ESMTP parameters, and whether it is delivered
    locally (the ``local`` queue) rather than relayed."""

    address: str
    params: dict[str, str | None]
    local: bool


@attrs.define
class Envelope:
    """One SMTP transaction, as handed to ``accept`` when its DATA ended."""

    sender: str
    params: dict[str, str | None]
    recipients: list[Recipient] = attrs.field(factory=list)
    received: float = 0.0
    #: why a milter quarantined the message: it is queued in the ``refused`` queue, not delivered
    quarantine: str | None = None


@attrs.define(eq=False)
class Body:
    """A message body shared by the documents of one message: in memory, or in a file already
    written (and fsync'd by the backend before the documents that point at it commit)."""

    data: bytes | None = None
    path: str | None = None
    size: int = 0

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError("Body has neither data nor path")
        with open(self.path, "rb") as f:
            return f.read()
