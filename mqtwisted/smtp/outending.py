"""How the outbound session table (:mod:`mqtwisted.smtp.outbound`) ends a session: with a fault
(from a reply, a protocol error, a TLS requirement not met) or without one, with QUIT or by
closing.  A mixin of :class:`~.outbound.Outbound`, whose ``TABLE`` names these methods; no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqtwisted.smtp import outevents as ev
from mqtwisted.smtp.outstate import Await, Phase

if TYPE_CHECKING:
    from mqtwisted.smtp.outbound import Row


class EndingSteps:
    """The ways a session ends; the state they use (``policy``, ``facts``, ``fault``, ``phase``,
    ``state``, ``tx``, ``awaiting``, ``out``) and ``send``/``report`` are the table's."""

    def tls_refused(self, description: str, status: str = "5.7.10") -> None:
        """TLS as the policy requires it cannot be had: temporary (the host or the policy may
        change), except for REQUIRETLS messages, which are returned with ``status`` once no host
        of the destination did better (RFC 8689 §4.2.1, §5)."""
        strict = self.policy.requiretls
        self.fault = self.facts.attempt("starttls", "error", status=status if strict else None,
                                        permanent=strict, description=description)
        self.quit()

    def close_with_fault(self, row: Row, code: int, resp: bytes) -> None:
        self.fault = self.facts.reply_attempt(row.state, code, resp)
        self.close()

    def close_temporary(self, row: Row, code: int, resp: bytes) -> None:
        self.fault = self.facts.reply_attempt(row.state, code, resp, permanent=False)
        self.close()

    def quit_with_fault(self, row: Row, code: int, resp: bytes) -> None:
        self.fault = self.facts.reply_attempt(row.state, code, resp)
        self.quit()

    def quit_temporary(self, row: Row, code: int, resp: bytes) -> None:
        self.fault = self.facts.reply_attempt(row.state, code, resp, permanent=False)
        self.quit()

    def protocol_error(self, description: str) -> None:
        self.fault = self.facts.attempt(self.state, "invalid", description=description)
        if self.tx is not None and self.tx.on_wire:
            self.report(self.fault)
        self.close()

    def quit(self) -> None:
        self.phase = Phase.QUITTING
        self.state = "quit"
        # Whatever the server still owes us, its next reply ends the session.
        self.awaiting.clear()
        self.send(Await.QUIT, b"QUIT")

    def leave(self, row: Row | None = None, code: int = 0, resp: bytes = b"") -> None:
        """Close without a fault: QUIT was answered, or the server is closing the channel."""
        self.phase = Phase.QUITTING
        self.close()

    def close(self, abort: bool = False) -> None:
        self.phase = Phase.CLOSING
        self.out.append(ev.Close(abort))
