"""A message as milters see and change it: a list of header fields and a body, without I/O.

Header values travel as sendmail and Postfix send them: what follows the colon, with folded
lines joined by a bare ``\\n``, and without its leading space unless the milter asked for
SMFIP_HDR_LEADSPC.  Values a milter hands back get CRLF line ends again, so the queued MIME
stays valid SMTP.  Header indexes follow libmilter: ``ChangeHeader`` counts the fields of one
name from 1 (past the last one, it adds a field), ``InsertHeader`` counts all fields from 0.
"""

from __future__ import annotations

import re

import attrs

from mqtwisted.milter import protocol as mp

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.S)
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return _BARE_LF.sub(b"\r\n", text.encode("utf-8", "surrogateescape"))


@attrs.define
class Message:
    """``headers``: (name, raw value after the colon, CRLF folding kept); ``body``: after the blank line."""

    headers: list[tuple[str, str]]
    body: bytes
    #: the bytes it was parsed from, until something changes it
    original: bytes | None = None

    def to_bytes(self) -> bytes:
        if self.original is not None:
            return self.original
        head = b"".join(name.encode("utf-8", "surrogateescape") + b":" + _raw(value) + b"\r\n"
                        for name, value in self.headers)
        return head + b"\r\n" + self.body

    def changed(self) -> None:
        self.original = None


def parse(mime: bytes) -> Message:
    """Header fields up to the blank line (or the first line that is not a field, which starts the
    body, as Postfix has it); the rest is the body."""
    headers: list[tuple[str, str]] = []
    pos = 0
    body_at = len(mime)
    while pos < len(mime):
        end = mime.find(b"\r\n", pos)
        line_end = len(mime) if end < 0 else end + 2
        line = mime[pos : len(mime) if end < 0 else end]
        if line == b"":
            body_at = line_end
            break
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + "\r\n" + _text(line))
        else:
            m = _FIELD.fullmatch(line)
            if m is None:
                body_at = pos
                break
            headers.append((_text(m.group(1)), _text(m.group(2))))
        pos = line_end
    return Message(headers, mime[body_at:], original=mime)


def milter_value(raw: str, leading_space: bool) -> str:
    """A header value as a milter gets it."""
    value = raw.replace("\r\n", "\n")
    return value if leading_space else value[1:] if value.startswith(" ") else value


def _stored(value: str, leading_space: bool) -> str:
    return value if leading_space else " " + value


def apply_header_edit(msg: Message, edit: mp.AddHeader | mp.InsertHeader | mp.ChangeHeader,
                      leading_space: bool) -> None:
    msg.changed()
    if isinstance(edit, mp.AddHeader):
        msg.headers.append((edit.name, _stored(edit.value, leading_space)))
    elif isinstance(edit, mp.InsertHeader):
        at = min(edit.index, len(msg.headers))
        msg.headers.insert(at, (edit.name, _stored(edit.value, leading_space)))
    else:
        same = [i for i, (name, _) in enumerate(msg.headers) if name.lower() == edit.name.lower()]
        nth = max(edit.index, 1)
        if nth <= len(same):
            if edit.value:
                msg.headers[same[nth - 1]] = (msg.headers[same[nth - 1]][0], _stored(edit.value, leading_space))
            else:
                del msg.headers[same[nth - 1]]
        elif edit.value:
            msg.headers.append((edit.name, _stored(edit.value, leading_space)))


def replace_body(msg: Message, body: bytes) -> None:
    """The new body from SMFIR_REPLBODY, with CRLF line ends whatever the milter sent."""
    msg.changed()
    msg.body = _BARE_LF.sub(b"\r\n", body)


def chunks(body: bytes) -> list[bytes]:
    return [body[i : i + mp.CHUNK] for i in range(0, len(body), mp.CHUNK)]
