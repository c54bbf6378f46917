"""The server's side of SMTP AUTH (RFC 4954) with the PLAIN and LOGIN mechanisms, one client line
at a time.  No I/O here: the server feeds lines and sends what :func:`respond` says.

Rules:

1. Only PLAIN and LOGIN are offered (over TLS, or in the clear when explicitly allowed: the
   session table decides that); any other mechanism gets ``504 5.5.4``.
2. A line ``*`` cancels the exchange (``501 5.0.0``); ``=`` is an empty response; anything else
   must be strict base64 (``501 5.5.2``), and decode to UTF-8.
3. PLAIN takes ``authzid NUL login NUL password`` in one response; LOGIN asks for the user name,
   then for the password.
"""

from __future__ import annotations

import base64
import binascii

import attrs

from mqtwisted.connection import Reply
from mqtwisted.smtp.session import Transition

MECHANISMS = ("PLAIN", "LOGIN")
#: the first 334 prompt of each mechanism (base64 "Username:" for LOGIN)
FIRST_PROMPT = {"PLAIN": "", "LOGIN": "VXNlcm5hbWU6"}
_PASSWORD_PROMPT = "UGFzc3dvcmQ6"  # base64 "Password:"

UNKNOWN_MECHANISM = Reply(504, "Unrecognized authentication type", "5.5.4")
CANCELLED = Reply(501, "Authentication cancelled", "5.0.0")
BAD_BASE64 = Reply(501, "Invalid base64 data", "5.5.2")


@attrs.define
class AuthExchange:
    """One AUTH exchange: the mechanism, the session transition it completes, what was said."""

    mech: str
    transition: Transition
    login: str = ""
    password: str = ""
    step: int = 0

    def take(self, data: bytes) -> str | Reply | None:
        """Consume one decoded response; the next base64 prompt, a refusal, or None when complete."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Reply(501, "Credentials are not valid UTF-8", "5.5.2")
        if self.mech == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3 or not parts[1]:
                return Reply(501, "Malformed PLAIN response", "5.5.2")
            _authzid, self.login, self.password = parts
            return None
        self.step += 1
        if self.step == 1:
            self.login = text
            return _PASSWORD_PROMPT
        self.password = text
        return None


def start(arg: str, transition: Transition) -> tuple[AuthExchange, bytes] | Reply:
    """``AUTH mechanism [initial-response]``: the exchange and its initial response (may be
    empty: then send ``FIRST_PROMPT[mech]``), or the refusal."""
    mech, _, initial = arg.partition(" ")
    mech = mech.upper()
    if mech not in MECHANISMS:
        return UNKNOWN_MECHANISM
    return AuthExchange(mech, transition), initial.encode("ascii", "replace")


def respond(exchange: AuthExchange, line: bytes) -> str | Reply | None:
    """One client line of the exchange: the next prompt, a refusal (the exchange is over), or
    None when the credentials are complete (``exchange.login``, ``exchange.password``)."""
    line = line.strip()
    if line == b"*":
        return CANCELLED
    try:
        decoded = base64.b64decode(line, validate=True) if line != b"=" else b""
    except (binascii.Error, ValueError):
        return BAD_BASE64
    return exchange.take(decoded)
