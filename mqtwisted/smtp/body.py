"""The DATA phase, per chunk rather than per line.

Twisted's server calls Python once per line and switches back to command mode on an over-long
line (so the rest of a body runs as commands).  This reader works on whole chunks with C-speed byte
operations, never leaves DATA before the one true end marker ``CRLF . CRLF``, and records, instead
of acting on, everything wrong with the body:

* a bare CR or bare LF anywhere (SMTP smuggling relies on ``LF . CRLF`` being taken as the end
  somewhere downstream): the message is refused at its end, so it is never relayed;
* a NUL byte anywhere: some receivers drop NULs, and ``CRLF NUL . CRLF`` would become an end of
  data there that was none here;
* a line longer than the text-line limit (RFC 5321 §4.5.3.1.6);
* more octets than the size limit: the reader stops keeping them at once.

The wire is dot-unstuffed (RFC 5321 §4.5.2) as it streams.  The trick that makes the first line
like every other: the reader starts with a virtual CRLF in front of the data.
"""

from __future__ import annotations

import os
import re
import tempfile

import attrs

from mqtwisted.envelope import Body

_END = b"\r\n.\r\n"
# Searched with re rather than bytes.find: sre finds a literal prefix by its first byte (a CR, one
# per line), bytes.find by skipping through every byte; 16 against 35 us per 64 KiB of text.
_DOT = re.compile(rb"\r\n\.")
_END_AT = re.compile(re.escape(_END))


@attrs.define(eq=False)
class BodyReader:
    """Feed it the wire after ``354``; it says when the end marker arrived and what came after."""

    max_size: int = 0
    max_line: int = 1000
    spill_size: int = 1 << 20
    spill_dir: str | None = None

    size: int = 0
    bare_newline: bool = False
    nul: bool = False
    long_line: bool = False
    too_big: bool = False
    _carry: bytes = b"\r\n"
    _skip: int = 2  # the virtual CRLF
    _line: int = 0  # length of the unfinished last line
    _parts: list[bytes] = attrs.field(factory=list)
    _file: object = None
    _path: str | None = None

    def feed(self, data: bytes) -> bytes | None:
        """Consume ``data``; return None while the body goes on, or the bytes after the end marker."""
        data = self._carry + data
        # Both the end marker and a stuffed dot start with CRLF "."; most chunks hold neither, and
        # one search for it spares them the search for the marker and the unstuffing pass.
        found = _DOT.search(data)
        dot = -1 if found is None else found.start()
        marker = None if found is None else _END_AT.search(data, dot)
        if marker is not None:
            end = marker.start()
            self._take(data[: end + 2], stuffed=dot < end)
            self._carry = b""
            return data[end + 5 :]
        # Keep back what may be the start of an end marker or of a stuffed dot.
        cut = max(0, len(data) - 4)
        while cut > 0 and data[cut - 1] in b"\r\n":
            cut -= 1
        self._take(data[:cut], stuffed=0 <= dot <= cut - 3)
        self._carry = data[cut:]
        return None

    def _take(self, wire: bytes, stuffed: bool) -> None:
        if not wire:
            return
        # No take ends in CR or LF (see feed), so every CR and LF of ``wire`` is judged here.
        self._check_text(wire)
        text = wire.replace(b"\r\n.", b"\r\n") if stuffed else wire
        if self._skip:
            text = text[self._skip :]
            self._skip = 0
        self._keep(text)

    def feed_chunk(self, data: bytes, binary: bool) -> None:
        """BDAT (RFC 3030): the octets as sent, with no end marker and no dot-stuffing.  A text
        body (not BINARYMIME) is judged as DATA's is: it may be relayed with DATA later."""
        if self._skip:  # no virtual CRLF: chunks are not dot-stuffed lines
            self._carry, self._skip = b"", 0
        if not binary:
            text = self._carry + data
            # A CR at the end of a chunk may have its LF in the next one: judge it then.
            cut = len(text) - 1 if text.endswith(b"\r") else len(text)
            self._check_text(text[:cut])
            self._carry = text[cut:]
        self._keep(data)

    def end_chunks(self) -> None:
        """The last chunk arrived: a CR still held back is a bare one (the virtual CRLF still
        there means no chunk had an octet: an empty message, as DATA's ``.`` at once)."""
        if self._carry and not self._skip:
            self.bare_newline = True
            self._carry = b""

    def _check_text(self, wire: bytes) -> None:
        # One C-speed pass serves every check.  bytes.splitlines breaks at CRLF, at a bare CR and at
        # a bare LF; the pieces add up to the take less two bytes per break exactly when every
        # break was a CRLF, and they are the lines.  (Byte counts for the pairs and a split at LF
        # for the lengths cost three times as much; a split at CRLF half as much again: a search
        # for a two-byte pattern is a slow scan, splitlines one loop.)
        if not wire or (self.bare_newline and self.nul and self.long_line):
            return
        if b"\0" in wire:
            self.nul = True
        lengths = list(map(len, wire.splitlines()))
        ended = wire.endswith((b"\r", b"\n"))
        if ended:
            lengths.append(0)  # the line after the last break, begun and empty
        if sum(lengths) != len(wire) - 2 * (len(lengths) - 1):
            self.bare_newline = True
        if not self.long_line:
            self._check_lines(lengths)

    def _check_lines(self, lengths: list[int]) -> None:
        """``lengths``: of the lines of a take; its first ends the line the previous take left
        unfinished, its last is unfinished.  A line's length counts its CRLF."""
        limit = self.max_line - 2
        if len(lengths) == 1:
            self._line += lengths[0]
        else:
            if self._line + lengths[0] > limit or (len(lengths) > 2 and max(lengths[1:-1]) > limit):
                self.long_line = True
            self._line = lengths[-1]
        if self._line > self.max_line:
            self.long_line = True

    def _keep(self, text: bytes) -> None:
        self.size += len(text)
        if self.too_big:
            return
        if self.max_size and self.size > self.max_size:
            self.too_big = True
            self.discard()
            return
        if self._file is not None:
            self._file.write(text)  # type: ignore[attr-defined]
            return
        self._parts.append(text)
        if self.size > self.spill_size:
            fd, self._path = tempfile.mkstemp(prefix="incoming-", suffix=".eml", dir=self.spill_dir)
            self._file = os.fdopen(fd, "wb")
            self._file.writelines(self._parts)  # type: ignore[attr-defined]
            self._parts = []

    def body(self) -> Body:
        """The received body, in memory or in a spilled file (the queue fsyncs it)."""
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
            return Body(path=self._path, size=self.size)
        data = b"".join(self._parts)
        self._parts = [data]
        return Body(data=data, size=len(data))

    def discard(self) -> None:
        """Forget the body (refused, or stored elsewhere)."""
        self._parts = []
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._path = None
