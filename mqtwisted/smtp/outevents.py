"""What goes in and out of the outbound session table (:mod:`mqtwisted.smtp.outbound`).

The policy is fixed for a connection; events are what happened on the connection or at the
source; actions are what the adapter (:mod:`mqtwisted.smtp.client`) must do next.  Plain data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from mqtwisted.connection import Reply
from mqtwisted.results import Attempt

SECURITY_LEVELS = ("none", "optional", "opportunistic", "required", "verified")
#: security levels that refuse to send in plaintext
TLS_REQUIRED = ("required", "verified")


class Authenticator(Protocol):
    """A SASL client mechanism (``twisted.mail.interfaces.IClientAuthentication``)."""

    def getName(self) -> bytes: ...

    def challengeResponse(self, secret: bytes, chal: Any) -> bytes: ...


@attrs.define
class Policy:
    """What the session may and must do, fixed for one connection."""

    helo: bytes
    security: str = "opportunistic"
    #: a TLS client context exists (``security`` is not ``none``)
    tls_available: bool = False
    username: bytes = b""
    secret: bytes | None = None
    #: our SASL mechanisms, most secure first
    authenticators: Sequence[Authenticator] = ()
    max_messages: int = 100
    #: whether some plugin defines this hook now (plugins may be reloaded while connected)
    defines: Callable[[str], bool] = lambda name: False
    #: the TLS policy's name as results record it (``mta-sts``, ``dane``; default: ``security``)
    tls_policy: str = ""
    #: the policy makes TLS mandatory whatever ``security`` says (MTA-STS enforce, DANE)
    tls_mandatory: bool = False
    #: the adapter checks the certificate chain after the handshake (reports CertificateChecked)
    checks_certificate: bool = False
    #: the connection carries REQUIRETLS messages (RFC 8689): TLS is mandatory and the certificate
    #: check strict; a receiver that refuses either fails them for good (5.7.10)
    requiretls: bool = False

    @property
    def requires_tls(self) -> bool:
        return self.security in TLS_REQUIRED or self.tls_mandatory

    @property
    def tls_name(self) -> str:
        return self.tls_policy or self.security


# -- events --------------------------------------------------------------------------------------


@attrs.frozen
class Connected:
    """TCP is up (``tls``: already encrypted, e.g. an implicit-TLS port)."""

    local_ip: str = ""
    remote_ip: str = ""
    tls: bool = False


@attrs.frozen
class Line:
    """One line from the server, without its line ending; ``read``: which read of the socket
    brought it (None when the source does not count reads, as in-memory tests)."""

    data: bytes
    read: int | None = None


@attrs.frozen
class Offered:
    """The source's next message, and the handle hooks see and may rewrite the wire through."""

    message: Any
    handle: Any


@attrs.frozen
class NothingToSend:
    park: bool


@attrs.frozen
class HookDone:
    reply: Reply | None


@attrs.frozen
class Prepared:
    """The message's last step before MAIL FROM is done: ``result`` is the MIME to send, or the
    reply that refuses the message (nothing of it is sent)."""

    result: bytes | Reply


@attrs.frozen
class BodySent:
    pass


@attrs.frozen
class BodyFailed:
    description: str


@attrs.frozen
class TLSFailed:
    description: str


@attrs.frozen
class CertificateChecked:
    """The policy's verdict on the server's certificate chain: None passes, else why not."""

    problem: str | None


@attrs.frozen
class TimedOut:
    pass


@attrs.frozen
class Resume:
    pass


@attrs.frozen
class QuitIdle:
    pass


@attrs.frozen
class Lost:
    description: str


Event = (
    Connected | Line | Offered | NothingToSend | HookDone | Prepared | BodySent | BodyFailed | TLSFailed
    | CertificateChecked | TimedOut | Resume | QuitIdle | Lost
)

# -- actions -------------------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Write these bytes (one or several command lines)."""

    data: bytes


@attrs.frozen
class SendBody:
    """Write this encoded body and ``end`` (DATA's final dot; BDAT has none), then report
    :class:`BodySent`."""

    data: bytes
    end: bytes = b".\r\n"


@attrs.frozen
class StartTLS:
    """Drop whatever the server sent behind its 220, then start TLS on the transport."""


@attrs.frozen
class Secured:
    """TLS is up and the server answered inside it: read the cipher into the facts and, when the
    policy checks certificates, report :class:`CertificateChecked`."""


@attrs.frozen
class RunHook:
    """Run this outbound hook and report :class:`HookDone`."""

    name: str


@attrs.frozen
class Prepare:
    """Run ``message.prepare(mime)`` (the message's own last step, e.g. signing) on the MIME as the
    hooks left it; report :class:`Prepared`."""

    message: Any
    mime: bytes


@attrs.frozen
class Fetch:
    """Ask the source for the next message; report :class:`Offered` or :class:`NothingToSend`."""


@attrs.frozen
class Report:
    message: Any
    attempt: Attempt


@attrs.frozen
class GiveBack:
    message: Any


@attrs.frozen
class Timer:
    """Run the reply timer (``on``) or stop it (the server owes us nothing meanwhile)."""

    on: bool


@attrs.frozen
class Close:
    """Close the connection; ``abort``: without waiting to flush (the server is not answering)."""

    abort: bool = False


@attrs.frozen
class Ended:
    """The session is over; ``fault`` is set when it failed before or between messages."""

    fault: Attempt | None


Action = (
    Send | SendBody | StartTLS | Secured | RunHook | Prepare | Fetch | Report | GiveBack | Timer | Close | Ended
)
