"""The SMTP server session as one transition table.  No I/O here: the server asks, the table answers.

Rules (everything that decides whether a command may run, and where it leads, is in this file):

1. A session moves through ``CONNECTING → GREETED → READY → MAIL → RCPT → DATA → READY …``.
   ``CONNECTING`` lasts while ``mq_smtp_in_connect`` decides; no command is read before the greeting.
2. Every command line gets exactly one reply, in order.  A command the table does not allow in the
   current state gets ``503 5.5.1`` and leaves the state unchanged.
3. HELO/EHLO is required before MAIL; EHLO/HELO again (or RSET) drops the transaction but keeps
   TLS and authentication.
4. STARTTLS is allowed once, outside a transaction, when a certificate is configured.  When its 220
   is sent the session is reset as if new (RFC 3207 §4.2): HELO, sender, recipients and anything the
   client pipelined behind STARTTLS are forgotten, and a fresh EHLO is required.
5. AUTH is allowed once, outside a transaction, only over TLS unless plaintext AUTH is explicitly
   allowed, and only when something can check credentials.
6. A transition that carries a hook runs that plugin hook before the reply; the hook's reply (if
   any) replaces the default one, and a refusal leaves the state where it was.
7. DATA or BDAT is allowed once at least one recipient was accepted.  The end of DATA (or the
   ``BDAT … LAST`` chunk) runs ``data`` and then ``message`` (per recipient) and returns to READY
   whatever the outcome.
8. A transaction sends its message with DATA or with BDAT chunks, never both (RFC 3030 §3):
   after a first BDAT only BDAT, RSET, EHLO/HELO, NOOP and QUIT are allowed.  A refused BDAT's
   octets are still read (the server reads every chunk it was announced), then refused.

The table does not know which side of the wire it is on, nor what a queue is.
"""

from __future__ import annotations

import enum

import attrs

from mqtwisted import hooks
from mqtwisted.connection import Connection, Reply


class State(enum.Enum):
    CONNECTING = "connecting"
    GREETED = "greeted"
    READY = "ready"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BDAT = "bdat"  # between chunks: one BDAT was taken, its LAST not yet
    CLOSED = "closed"


@attrs.frozen
class Transition:
    """What a command does from one state: where it leads on success and which hook decides."""

    verb: str
    to: State | None  # None: stay where you are
    hook: str | None = None


_S = State

#: state -> verb -> transition.  Commands allowed in every state are added below.
TABLE: dict[State, dict[str, Transition]] = {
    _S.GREETED: {
        "STARTTLS": Transition("STARTTLS", _S.GREETED, hooks.IN_SECURE),
    },
    _S.READY: {
        "STARTTLS": Transition("STARTTLS", _S.GREETED, hooks.IN_SECURE),
        "AUTH": Transition("AUTH", _S.READY, hooks.IN_AUTHENTICATE),
        "MAIL": Transition("MAIL", _S.MAIL, hooks.IN_MAILFROM),
    },
    _S.MAIL: {
        "RCPT": Transition("RCPT", _S.RCPT, hooks.IN_RCPTTO),
    },
    _S.RCPT: {
        "RCPT": Transition("RCPT", _S.RCPT, hooks.IN_RCPTTO),
        "DATA": Transition("DATA", _S.DATA),
        "BDAT": Transition("BDAT", _S.BDAT),
    },
    _S.BDAT: {
        "BDAT": Transition("BDAT", _S.BDAT),
    },
}
for _state, _row in TABLE.items():
    # EHLO/HELO and RSET end any transaction; before the first EHLO there is none to end.
    _reset = None if _state is _S.GREETED else _S.READY
    _row.update(
        EHLO=Transition("EHLO", _S.READY),
        HELO=Transition("HELO", _S.READY),
        NOOP=Transition("NOOP", None),
        HELP=Transition("HELP", None),
        VRFY=Transition("VRFY", None),
        RSET=Transition("RSET", _reset),
        QUIT=Transition("QUIT", _S.CLOSED),
    )

#: Transitions that are not commands.
CONNECT = Transition("<connect>", _S.GREETED, hooks.IN_CONNECT)
END_OF_DATA = Transition("<end of data>", _S.READY, hooks.IN_DATA)

#: Verbs we know and do not offer: 502, not 500.
UNOFFERED_VERBS = frozenset({"ETRN", "TURN", "EXPN"})
KNOWN_VERBS = frozenset(v for row in TABLE.values() for v in row) | UNOFFERED_VERBS

BAD_SEQUENCE = Reply(503, "Bad sequence of commands", "5.5.1")
NEED_HELO = Reply(503, "Send EHLO or HELO first", "5.5.1")
NESTED_MAIL = Reply(503, "Sender already given", "5.5.1")
NEED_MAIL = Reply(503, "Need MAIL before RCPT", "5.5.1")
NEED_RCPT = Reply(503, "Need RCPT before DATA (no valid recipients)", "5.5.1")
NO_TLS = Reply(454, "TLS not available", "4.7.0")
ALREADY_TLS = Reply(503, "Already using TLS", "5.5.1")
AUTH_NEEDS_TLS = Reply(538, "Encryption required for requested authentication mechanism", "5.7.11")
NO_AUTH = Reply(502, "Authentication not enabled", "5.5.1")
ALREADY_AUTH = Reply(503, "Already authenticated", "5.5.1")
NOT_IMPLEMENTED = Reply(502, "Command not implemented", "5.5.1")
UNKNOWN = Reply(500, "Command unrecognized", "5.5.2")


@attrs.define
class Session:
    """The state of one server session and the rules for moving it."""

    tls_available: bool = False
    auth_available: bool = False
    auth_plaintext: bool = False
    state: State = State.CONNECTING
    #: TLS and authentication are facts of the connection (plugins see and set them there);
    #: the table reads them from it rather than keeping copies that could disagree.
    conn: Connection = attrs.field(factory=Connection, repr=False)

    @property
    def secure(self) -> bool:
        return self.conn.secure

    @property
    def authenticated(self) -> bool:
        return self.conn.authenticated

    def allow(self, verb: str) -> Transition | Reply:
        """The transition ``verb`` makes from here, or the reply that refuses it."""
        if self.state in (State.CONNECTING, State.DATA, State.CLOSED):
            return BAD_SEQUENCE
        transition = TABLE[self.state].get(verb)
        if transition is None:
            return self._why_not(verb)
        if verb == "STARTTLS":
            if self.secure:
                return ALREADY_TLS
            if not self.tls_available:
                return NO_TLS
        elif verb == "AUTH":
            if self.authenticated:
                return ALREADY_AUTH
            if not self.auth_available:
                return NO_AUTH
            if not (self.secure or self.auth_plaintext):
                return AUTH_NEEDS_TLS
        return transition

    def _why_not(self, verb: str) -> Reply:
        if verb not in KNOWN_VERBS:
            return UNKNOWN
        if verb in UNOFFERED_VERBS:
            return NOT_IMPLEMENTED
        if self.state is State.GREETED and verb in ("MAIL", "RCPT", "DATA", "BDAT", "AUTH"):
            return NEED_HELO
        if verb == "MAIL":
            return NESTED_MAIL
        if verb == "RCPT":
            return NEED_MAIL
        if verb in ("DATA", "BDAT"):
            return NEED_RCPT if self.state is State.MAIL else BAD_SEQUENCE
        return BAD_SEQUENCE

    def advance(self, transition: Transition) -> None:
        """Apply a transition that succeeded."""
        if transition.to is not None:
            self.state = transition.to

    def greeted(self) -> None:
        self.state = State.GREETED

    def start_tls(self) -> None:
        """RFC 3207 §4.2: after the 220 to STARTTLS the client starts over, knowing nothing.
        From the 220 on nothing is read but the TLS handshake, so the session counts as secure."""
        self.conn.secure = True
        self.state = State.GREETED

    def close(self) -> None:
        self.state = State.CLOSED

    def extensions(self) -> list[str]:
        """The EHLO keywords this session advertises now."""
        ext = ["PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "CHUNKING", "BINARYMIME"]
        if self.tls_available and not self.secure:
            ext.append("STARTTLS")
        if self.secure:
            ext.append("REQUIRETLS")  # RFC 8689 §2: advertised only once TLS is up
        if self.auth_available and not self.authenticated and (self.secure or self.auth_plaintext):
            ext.append("AUTH PLAIN LOGIN")
        return ext
