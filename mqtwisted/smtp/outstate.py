"""The state of one outbound session, apart from its rules (:mod:`mqtwisted.smtp.outbound`).

What each command on the wire waits for (:class:`Await`), where the connection is
(:class:`Phase`), where the current message is (:class:`Stage`, :class:`Transaction`), and the
facts every result of the connection carries (:class:`Facts`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from mqtwisted.connection import Reply
from mqtwisted.results import Attempt, from_reply


class Await(enum.Enum):
    """What a command sent is waiting for."""

    __hash__ = object.__hash__  # members are singletons; Enum's hash is a Python call per reply

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH_PLAIN = "auth plain"
    AUTH_PLAIN_AGAIN = "auth plain again"
    AUTH_START = "auth start"
    AUTH_CHALLENGE = "auth challenge"
    AUTH_CANCELLED = "auth cancelled"
    RSET = "rset"
    TX_RSET = "pipelined rset"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DOT = "dot"
    #: a BDAT chunk (RFC 3030) that is not the last, and the ``BDAT n LAST`` that ends the message
    BDAT = "bdat"
    BDAT_LAST = "bdat last"
    LONE_DOT = "lone dot"
    QUIT = "quit"


class Phase(enum.Enum):
    """Where the connection is, whatever the message is doing."""

    ACTIVE = "active"
    #: nothing to send; kept open until the source resumes it or asks it to quit
    PARKED = "parked"
    #: leaving on purpose (QUIT sent, or the server is closing): a loss now is no fault
    QUITTING = "quitting"
    #: we asked for the connection to be closed; nothing the server says matters any more
    CLOSING = "closing"
    CLOSED = "closed"


class Stage(enum.Enum):
    """Where the current message is."""

    #: ``mq_smtp_out_data`` runs; nothing of it is on the wire yet
    HOOK = "hook"
    #: the message's prepare step (signing) runs on the final MIME; nothing is on the wire yet
    PREPARE = "prepare"
    #: [RSET] MAIL RCPT DATA (or BDAT) sent, replies outstanding
    ENVELOPE = "envelope"
    #: 354 received (or BDAT chunks going out), body being written
    BODY = "body"
    #: the dot is written and ``mq_smtp_out_sent`` runs
    SENT_HOOK = "sent hook"
    #: the dot is written; the reply to it decides
    SENT = "sent"


def recipients(message: Any) -> list[Any]:
    """The messages one transaction carries: ``message`` and its ``also``, one recipient each."""
    return [message, *getattr(message, "also", ())]


@attrs.define
class Transaction:
    """One message on this connection, from the moment the source hands it over."""

    message: Any
    #: what hooks see; its ``wire_*`` overrides change what is sent
    handle: Any
    #: every recipient's message, ``message`` first, then its ``also`` (those sharing its sender
    #: and body, sent in this transaction with a RCPT each)
    rcpts: list[Any] = attrs.field()
    stage: Stage = Stage.HOOK
    #: the MIME its prepare step returned (None: the MIME as the hooks left it)
    mime: bytes | None = None
    #: the encoded body, until 354
    body: bytes = b""
    #: BDAT commands with their chunks not yet sent (receivers offering CHUNKING)
    chunks: deque[bytes] = attrs.field(factory=deque)
    #: the first refusal, which decides the attempt (pipelined replies keep coming after it)
    error: Attempt | None = None
    hook_reply: Reply | None = None
    held_reply: tuple[int, bytes] | None = None
    #: replies to RCPT so far, and the attempt of each recipient refused, by position
    answered: int = 0
    refusals: dict[int, Attempt] = attrs.field(factory=dict)

    @rcpts.default
    def _rcpts(self) -> list[Any]:
        return recipients(self.message)

    @property
    def on_wire(self) -> bool:
        return self.stage not in (Stage.HOOK, Stage.PREPARE)


@attrs.define
class Facts:
    """What every result of one connection carries, and the results stamped with it."""

    now: Callable[[], float]
    #: the first word of the greeting (MailerQ's ``mta``)
    mta: str | None = None
    local_ip: str = ""
    remote_ip: str = ""
    cipher: dict[str, Any] | None = None
    #: the TLS policy that applied (``none`` … ``verified``, ``mta-sts``, ``dane``)
    tls_policy: str | None = None
    #: messages taken on this connection
    messages: int = 0
    #: the server offered DSN (recorded on accepted attempts)
    dsn: bool = False

    def attempt(self, state: str, result: str, **kw: Any) -> Attempt:
        """An Attempt that is not a server reply (a timeout, a loss, a policy or plugin decision)."""
        return Attempt(state, result, time=self.now(), **self.stamp(), **kw)

    def reply_attempt(
        self, state: str, code: int, resp: bytes, result: str | None = None, permanent: bool | None = None
    ) -> Attempt:
        """An Attempt from the server's reply; ``result`` overrides the one the code implies."""
        a = from_reply(state, code, resp, time=self.now(), permanent=permanent, **self.stamp())
        if result is not None:
            a.result = result
        if a.accepted:
            a.dsn = self.dsn
        return a

    def stamp(self) -> dict[str, Any]:
        return {
            "mta": self.mta,
            "local_ip": self.local_ip or None,
            "remote_ip": self.remote_ip or None,
            "messages": self.messages or None,
            "cipher": self.cipher,
            "tls_policy": self.tls_policy,
        }
