"""Parsing of SMTP command lines, paths and ESMTP parameters (RFC 5321, 1870, 3461, 6152, 6531).

Every function returns either the parsed value or the :class:`Reply` that refuses the input, so a
malformed line of any kind becomes an SMTP error and never an exception.
"""

from __future__ import annotations

import re

import attrs

from mqtwisted.connection import Reply
from mqtwisted.document import NOTIFY_KEYWORDS
from mqtwisted.xtext import is_printable_xtext

_VERB = re.compile(r"[A-Za-z]{1,16}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOM_UTF8 = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_QUOTED_UTF8 = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LABEL_UTF8 = r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9-]|[^\x00-\x7f]){0,61}(?:[A-Za-z0-9]|[^\x00-\x7f]))?"
_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]"


def _mailbox(atom: str, quoted: str, label: str) -> re.Pattern[str]:
    local = rf"(?:{atom}(?:\.{atom})*|{quoted})"
    domain = rf"(?:{label}(?:\.{label})*|{_LITERAL})"
    return re.compile(rf"{local}@{domain}\Z")


_MAILBOX = _mailbox(_ATOM, _QUOTED, _LABEL)
_MAILBOX_UTF8 = _mailbox(_ATOM_UTF8, _QUOTED_UTF8, _LABEL_UTF8)
_PATH = re.compile(r"\s*<([^<>]*)>(?:\s+(.*))?\Z|\s*([^<>\s]+)(?:\s+(.*))?\Z", re.S)
_ROUTE = re.compile(r"@[^:,]+(?:,@[^:,]+)*:")
_DIGITS = re.compile(r"[0-9]{1,20}")
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ADDR_TYPE = re.compile(rf"{_ATOM}\Z")  # ORCPT's addr-type (RFC 3461 §4.2), "rfc822" in practice

MAX_ADDRESS = 254

SYNTAX = Reply(501, "Syntax error in parameters or arguments", "5.5.4")


@attrs.frozen
class Command:
    verb: str
    arg: str


@attrs.frozen
class Path:
    """A reverse-path or forward-path with its ESMTP parameters (upper-cased keys)."""

    address: str
    params: dict[str, str | None]


def parse_command(line: bytes) -> Command | Reply:
    """Split a command line (CRLF already removed) into verb and argument."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Reply(500, "Syntax error: command is not valid UTF-8", "5.5.2")
    if _CONTROL.search(text):
        return Reply(500, "Syntax error: control character in command", "5.5.2")
    verb, _, arg = text.partition(" ")
    if not _VERB.match(verb):
        return Reply(500, "Syntax error: command unrecognized", "5.5.2")
    return Command(verb.upper(), arg.strip())


def parse_path(arg: str, keyword: str) -> Path | Reply:
    """Parse ``FROM:<addr> params`` or ``TO:<addr> params``."""
    head, colon, rest = arg.partition(":")
    if not colon or head.strip().upper() != keyword:
        return Reply(501, f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>", "5.5.4")
    m = _PATH.match(rest)
    if m is None:
        return Reply(501, "Syntax error in mailbox address", "5.1.3")
    address = m.group(1) if m.group(1) is not None else m.group(3)
    params_text = m.group(2) if m.group(1) is not None else m.group(4)
    address = _ROUTE.sub("", address, count=1) if address.startswith("@") else address
    params: dict[str, str | None] = {}
    for token in (params_text or "").split():
        key, eq, value = token.partition("=")
        if not _PARAM_KEY.match(key) or (eq and not value):
            return Reply(555, f"Malformed parameter {token[:40]!r}", "5.5.4")
        if key.upper() in params:  # which one would count? (Postfix refuses them too)
            return Reply(501, f"Parameter {key.upper()[:40]} given twice", "5.5.4")
        params[key.upper()] = value if eq else None
    return Path(address, params)


def check_address(address: str, utf8: bool) -> Reply | None:
    """None when ``address`` is a mailbox we accept, else why not."""
    if len(address.encode("utf-8")) > MAX_ADDRESS:
        return Reply(501, "Address too long", "5.1.3")
    if not address.isascii() and not utf8:
        return Reply(553, "Non-ASCII address requires SMTPUTF8", "5.6.7")
    pattern = _MAILBOX_UTF8 if utf8 else _MAILBOX
    if not pattern.match(address):
        return Reply(501, f"Bad address syntax <{address[:80]}>", "5.1.3")
    return None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "REQUIRETLS"}
_RCPT_PARAMS = {"NOTIFY", "ORCPT"}


def check_mail_params(params: dict[str, str | None], maxsize: int, secure: bool = False) -> Reply | None:
    """None when MAIL FROM's parameters are acceptable (``secure``: the session is under TLS)."""
    for key, value in params.items():
        if key not in _MAIL_PARAMS:
            return Reply(555, f"Unsupported parameter {key}", "5.5.4")
        if key == "SIZE":
            if value is None or not _DIGITS.fullmatch(value):  # not isdigit(): "٣" is a digit to it
                return Reply(501, "SIZE must be a number of octets", "5.5.4")
            if maxsize and int(value) > maxsize:
                return Reply(552, f"Message size exceeds fixed limit of {maxsize} bytes", "5.3.4")
        elif key == "BODY" and (value or "").upper() not in ("7BIT", "8BITMIME", "BINARYMIME"):
            return Reply(501, "BODY must be 7BIT, 8BITMIME or BINARYMIME", "5.5.4")
        elif key in ("SMTPUTF8", "REQUIRETLS") and value is not None:
            return Reply(501, f"{key} takes no value", "5.5.4")
        elif key == "REQUIRETLS" and not secure:
            # RFC 8689 §4.1: only offered, and so only accepted, inside TLS.
            return Reply(530, "REQUIRETLS needs a TLS session (STARTTLS first)", "5.7.10")
        elif key == "RET" and (value or "").upper() not in ("FULL", "HDRS"):
            return Reply(501, "RET must be FULL or HDRS", "5.5.4")
        elif key == "AUTH" and (value is None or (value != "<>" and not is_printable_xtext(value))):
            # RFC 4954 §5: the submitter, as xtext, or <>; it is not kept, but a client that
            # sends it wrong deserves to hear so as for any other parameter
            return Reply(501, "AUTH must be <> or an xtext mailbox", "5.5.4")
        elif key == "ENVID" and (not value or len(value) > 100 or not is_printable_xtext(value)):
            return Reply(501, "ENVID must be xtext of printable ASCII, at most 100 characters", "5.5.4")
    return None


_BDAT = re.compile(r"([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE)


def parse_bdat(arg: str) -> tuple[int, bool] | Reply:
    """``BDAT size [LAST]`` (RFC 3030): the chunk's size in octets and whether it is the last."""
    m = _BDAT.fullmatch(arg)
    if m is None:
        return Reply(501, "Syntax: BDAT size [LAST]", "5.5.4")
    return int(m.group(1)), m.group(2) is not None


def check_rcpt_params(params: dict[str, str | None]) -> Reply | None:
    for key, value in params.items():
        if key not in _RCPT_PARAMS:
            return Reply(555, f"Unsupported parameter {key}", "5.5.4")
        if key == "NOTIFY":
            words = (value or "").upper().split(",")
            if not value or not set(words) <= NOTIFY_KEYWORDS or (
                "NEVER" in words and len(words) > 1
            ):
                return Reply(501, "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY", "5.5.4")
        elif key == "ORCPT":
            kind, semi, addr = (value or "").partition(";")
            if not semi or not _ADDR_TYPE.match(kind) or not addr or len(value or "") > 500 or not is_printable_xtext(addr):
                return Reply(501, "ORCPT must be type;xtext of printable ASCII, as rfc822;user@example.com", "5.5.4")
    return None
