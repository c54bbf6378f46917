"""What one outbound message looks like on the wire: the DATA or BDAT payload, the MAIL/RCPT lines,
and whether the receiver can take the message at all.

Pure functions of the message and the server's EHLO keywords; the transaction rules that decide
when they are sent are in :mod:`mqtwisted.smtp.outbound`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from mqtwisted.smtp.outstate import Await
from mqtwisted.xtext import xtext_encode

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)

#: BDAT chunk size: a chunk is one command and one reply, and a large one keeps a pipelined
#: message to a few of each (RFC 3030 leaves the size to the client)
CHUNK_SIZE = 256 * 1024


@attrs.frozen
class Needs:
    """What the sender asked of every hop in MAIL FROM (kept in the document): the message goes
    to a receiver that can keep it, or fails; it is never converted or sent without it."""

    #: BODY=BINARYMIME (RFC 3030): BDAT only, to a receiver offering CHUNKING and BINARYMIME
    binarymime: bool = False
    #: SMTPUTF8 (RFC 6531 §3.2): to a receiver offering SMTPUTF8
    smtputf8: bool = False
    #: REQUIRETLS (RFC 8689 §4.2.1): over TLS with a verified certificate to a receiver offering it
    requiretls: bool = False


NO_NEEDS = Needs()


@attrs.frozen
class Unmet:
    """Why a receiver cannot take a message: an enhanced status and the reason, permanent."""

    status: str
    description: str


def unmet(needs: Needs, addresses: str, extensions: Mapping[bytes, Any], verified_tls: bool) -> Unmet | None:
    """Whether the receiver (its EHLO ``extensions``; ``verified_tls``: the session is under TLS
    whose certificate the policy verified) can take a message with ``needs`` to ``addresses``
    (the envelope sender and recipients, joined); None when it can."""
    if needs.binarymime and not (b"CHUNKING" in extensions and b"BINARYMIME" in extensions):
        return Unmet("5.6.3", "the message is BODY=BINARYMIME and the receiver does not offer CHUNKING and "
                              "BINARYMIME (binary content is not converted)")
    if (needs.smtputf8 or not addresses.isascii()) and b"SMTPUTF8" not in extensions:
        return Unmet("5.6.7", "the message needs SMTPUTF8 and the receiver does not offer it")
    if needs.requiretls and not (verified_tls and b"REQUIRETLS" in extensions):
        # A connection made for REQUIRETLS never gets this far without both (the table ends it
        # first, so that the destination's other hosts are tried): this one was not made for it.
        return Unmet("5.7.10", "REQUIRETLS: not over TLS verified for REQUIRETLS to a receiver offering it")
    return None


def normalise_lines(data: bytes) -> bytes:
    """CRLF line endings (bare CR and LF become CRLF)."""
    crlf = data.count(b"\r\n")
    # C-speed counts first: mail from our own server is already CRLF-only, and the regular
    # expression costs more than the rest of a message's sending.
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        return _LINE_END.sub(b"\r\n", data)
    return data


def bdat_payload(mime: bytes, binary: bool) -> bytes:
    """What BDAT sends of ``mime`` (RFC 3030): no dot-stuffing and no end marker; a text message
    gets CRLF line endings, binary content goes exactly as it is."""
    return mime if binary else normalise_lines(mime)


def bdat_chunks(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    """``data`` (a :func:`bdat_payload`) as BDAT commands with their chunks, the last one ``LAST``."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    last = len(pieces) - 1
    return [b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == last else b"") + p for i, p in enumerate(pieces)]


def encode_body(mime: bytes) -> bytes:
    """The DATA payload for ``mime``: CRLF line endings, leading dots doubled, ending in CRLF.

    Works on whole lines before any chunking, so a ``.`` at the start of the first line or
    of a line that crosses a transport chunk is still doubled (Twisted's transformChunk
    misses both).  The terminating ``.`` line is not included.
    """
    if not mime:
        return b""
    data = normalise_lines(mime)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def wire(message: Any, handle: Any) -> tuple[str, str, bytes]:
    """Envelope, recipient and MIME as sent: a hook's ``wire_*`` override, else the message's."""
    h = handle
    envelope = h.wire_envelope if h is not None and h.wire_envelope is not None else message.envelope
    recipient = h.wire_recipient if h is not None and h.wire_recipient is not None else message.recipient
    mime = h.wire_mime if h is not None and h.wire_mime is not None else message.mime
    return envelope, recipient, mime


def mail_line(
    envelope: str, recipient: str, body: bytes, dsn: Mapping[str, Any], extensions: Mapping[bytes, Any],
    needs: Needs = NO_NEEDS,
) -> bytes:
    """``MAIL FROM`` with the parameters the server advertised and the message needs (``body``:
    the DATA or BDAT payload)."""
    params = []
    if b"SIZE" in extensions:
        params.append(b"SIZE=%d" % len(body))
    if needs.binarymime:
        params.append(b"BODY=BINARYMIME")
    elif b"8BITMIME" in extensions and not body.isascii():
        params.append(b"BODY=8BITMIME")
    if b"SMTPUTF8" in extensions and (needs.smtputf8 or not (envelope + recipient).isascii()):
        params.append(b"SMTPUTF8")
    if needs.requiretls:
        params.append(b"REQUIRETLS")
    if b"DSN" in extensions and dsn:
        ret = str(dsn.get("ret") or "").upper()
        if ret in ("FULL", "HDRS"):
            params.append(b"RET=" + ret.encode())
        if dsn.get("envid"):
            params.append(b"ENVID=" + xtext_encode(str(dsn["envid"])).encode())
    return b" ".join([b"MAIL FROM:<" + envelope.encode("utf-8") + b">", *params])


def rcpt_line(recipient: str, dsn: Mapping[str, Any], extensions: Mapping[bytes, Any]) -> bytes:
    """``RCPT TO`` with the DSN parameters when the server advertised DSN (RFC 3461)."""
    params = []
    if b"DSN" in extensions and dsn:
        notify = dsn.get("notify")
        if isinstance(notify, (list, tuple)):
            notify = ",".join(notify)
        if notify:
            params.append(b"NOTIFY=" + str(notify).upper().replace(" ", "").encode())
        if dsn.get("orcpt"):
            orcpt = str(dsn["orcpt"])
            if ";" not in orcpt:
                orcpt = "rfc822;" + orcpt
            addr_type, _, addr = orcpt.partition(";")
            params.append(b"ORCPT=" + (addr_type + ";" + xtext_encode(addr)).encode())
    return b" ".join([b"RCPT TO:<" + recipient.encode("utf-8") + b">", *params])


def transaction_wire(
    envelope: str, rcpts: list[tuple[str, Mapping[str, Any]]], mime: bytes, needs: Needs,
    extensions: Mapping[bytes, Any],
) -> tuple[bytes, list[bytes], list[tuple[Await, bytes]]]:
    """One transaction's payload, its BDAT chunks (none: DATA) and commands up to the body, for
    ``rcpts`` (address and DSN request each; the first one's gives MAIL's RET and ENVID).  BDAT
    when the receiver offers CHUNKING (RFC 3030), else DATA with the dot-stuffed body."""
    addresses = "".join(r for r, _ in rcpts)
    if b"CHUNKING" in extensions:
        body = bdat_payload(mime, needs.binarymime)
        chunks = bdat_chunks(body)
    else:
        body, chunks = encode_body(mime), []
    commands = [(Await.MAIL, mail_line(envelope, addresses, body, rcpts[0][1], extensions, needs))]
    commands += [(Await.RCPT, rcpt_line(r, d, extensions)) for r, d in rcpts]
    if not chunks:
        commands.append((Await.DATA, b"DATA"))
    return body, chunks, commands
