"""The AUTH steps of the outbound session table (:mod:`mqtwisted.smtp.outbound`, its rule 5): which
mechanism is used, and the exchange of challenges.  A mixin of :class:`~.outbound.Outbound`, whose
``TABLE`` names these methods; no I/O.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from mqtwisted.smtp.outstate import Await

if TYPE_CHECKING:
    from mqtwisted.smtp.outbound import Row


class AuthSteps:
    """AUTH PLAIN, LOGIN and CRAM-MD5 as the table's steps; the state they use (``policy``,
    ``extensions``, ``auth``, ``fault``) and ``send``/``quit`` are the table's."""

    def authenticate(self) -> None:
        self.state = "auth"
        offered = (self.extensions.get(b"AUTH") or b"").upper().split()
        if self.policy.secret and offered:
            for auth in self.policy.authenticators:
                name = auth.getName().upper()
                if name in offered:
                    self.auth = auth
                    if name == b"PLAIN":
                        self.send(Await.AUTH_PLAIN, self.plain())
                    else:
                        self.send(Await.AUTH_START, b"AUTH " + name)
                    return
        if self.policy.username:
            self.fault = self.facts.attempt("auth", "error", description="server offers no usable AUTH mechanism", permanent=False)
            self.quit()
            return
        self.take_message()

    def plain(self, form: int = 1) -> bytes:
        # Twisted's PLAIN client: form 1 names the user as authorization identity, form 2 leaves
        # it empty; servers disagree on which they accept, so a refused first form tries the second.
        assert self.auth is not None and self.policy.secret is not None
        return b"AUTH PLAIN " + base64.b64encode(self.auth.challengeResponse(self.policy.secret, form))

    def plain_again(self, row: Row, code: int, resp: bytes) -> None:
        self.send(Await.AUTH_PLAIN_AGAIN, self.plain(2))

    def answer_challenge(self, row: Row, code: int, resp: bytes) -> None:
        assert self.auth is not None and self.policy.secret is not None
        try:
            challenge = base64.b64decode(resp)
        except binascii.Error:
            self.send(Await.AUTH_CANCELLED, b"*")
            return
        self.send(Await.AUTH_CHALLENGE, base64.b64encode(self.auth.challengeResponse(self.policy.secret, challenge)))

    def challenge_or_done(self, row: Row, code: int, resp: bytes) -> None:
        if code == 334:
            self.answer_challenge(row, code, resp)
        else:
            self.take_message()

    def malformed_challenge(self, row: Row, code: int, resp: bytes) -> None:
        resp = b"Login failed because the SMTP Server returned a malformed Authentication Challenge"
        self.quit_temporary(row, 501, resp)
