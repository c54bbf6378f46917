"""DATA and BDAT (RFC 3030, with BINARYMIME) of :class:`mqtwisted.smtp.server.SMTPServer`: reading
the message, then handing it to the ``data`` hook, the filters and the ``accept`` callable.

A mixin in a module of its own so that the server's module stays about the session.  Both ways
end in :meth:`MessageCommands._end_of_data`, so a message sent in chunks meets the same limits,
hooks, filters and durability rule (the 250 after it is stored) as one sent with DATA; the reply
to ``BDAT … LAST`` carries the queue ids as DATA's does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from mqtwisted.connection import Reply
from mqtwisted.filtering import Filtered, FilterSession
from mqtwisted.replies import reply_bytes
from mqtwisted.smtp import commands
from mqtwisted.smtp.body import BodyReader
from mqtwisted.smtp.config import BYTES_PER_TIMEOUT_RESET
from mqtwisted.smtp.session import END_OF_DATA, Transition

NEEDS_BDAT = Reply(503, "BODY=BINARYMIME requires BDAT", "5.5.1")


@attrs.define
class Chunk:
    """One announced BDAT chunk: octets still to read, and what to do at its end."""

    size: int
    last: bool
    refusal: Reply | None
    binary: bool
    left: int = attrs.field()

    @left.default
    def _all(self) -> int:
        return self.size


class MessageCommands:
    """DATA and BDAT (a mixin: it uses the server's buffer, replies, hooks and session)."""

    factory: Any
    conn: Any
    session: Any
    filter: FilterSession | None
    _buffer: bytes
    _envelope: Any
    _reader: BodyReader | None
    _reading: Callable[[], None] | None
    _chunk: Chunk | None
    _unreset: int
    outcome: str
    _send: Callable[..., None]
    _write: Callable[[bytes], None]
    _error: Callable[[Reply], None]
    _answer: Callable[[Reply], None]
    _close: Callable[[], None]
    _run: Callable[..., None]
    _wait: Callable[..., None]
    _message_done: Callable[[int], None]
    _reset_transaction: Callable[[], None]
    resetTimeout: Callable[[], None]

    def _feed_body(self) -> None:
        reader = self._reader
        assert reader is not None
        data, self._buffer = self._buffer, b""
        rest = reader.feed(data)
        self._unreset += len(data)
        if self._unreset >= BYTES_PER_TIMEOUT_RESET:
            self._unreset = 0
            self.resetTimeout()
        if rest is None:
            return
        self._buffer = rest
        self._reader = self._reading = None
        self.resetTimeout()
        self._end_of_data(reader)


    def smtp_DATA(self, arg: str, t: Transition) -> None:
        if arg:
            self._error(Reply(501, "Syntax: DATA takes no argument", "5.5.4"))
            return
        if self._binary:
            self._error(NEEDS_BDAT)
            return
        self.session.advance(t)
        self._reader = self._new_reader()
        self._reading = self._feed_body
        self._unreset = 0
        self._send(Reply(354, "End data with <CR><LF>.<CR><LF>"))

    def _new_reader(self) -> BodyReader:
        config = self.factory.config
        return BodyReader(max_size=config.max_size, max_line=config.max_line, spill_dir=config.spill_dir)

    @property
    def _binary(self) -> bool:
        envelope = self._envelope
        return envelope is not None and (envelope.params.get("BODY") or "").upper() == "BINARYMIME"

    # -- BDAT (RFC 3030) -------------------------------------------------------------------------

    def _bdat(self, arg: str, allowed: Transition | Reply) -> None:
        parsed = commands.parse_bdat(arg)
        if isinstance(parsed, Reply):
            # Without the chunk's size its end is unknown: nothing after it can be read as a
            # command, so this one error ends the session.
            self.outcome = "errors"
            self._send(parsed)
            self._close()
            return
        size, last = parsed
        refusal = allowed if isinstance(allowed, Reply) else None
        if refusal is None and self._reader is None:  # the first chunk of the transaction
            self.session.advance(allowed)  # type: ignore[arg-type]
            self._reader = self._new_reader()
        self._chunk = Chunk(size, last, refusal, self._binary)
        self._reading = self._feed_chunk
        self._unreset = 0
        if not size:
            self._chunk_done()

    def _feed_chunk(self) -> None:
        chunk = self._chunk
        assert chunk is not None
        data = self._buffer[: chunk.left]
        self._buffer = self._buffer[len(data) :]
        chunk.left -= len(data)
        if chunk.refusal is None:
            assert self._reader is not None
            self._reader.feed_chunk(data, chunk.binary)
        self._unreset += len(data)
        if self._unreset >= BYTES_PER_TIMEOUT_RESET:
            self._unreset = 0
            self.resetTimeout()
        if not chunk.left:
            self._chunk_done()

    def _chunk_done(self) -> None:
        chunk, self._chunk, self._reading = self._chunk, None, None
        assert chunk is not None
        self.resetTimeout()
        if chunk.refusal is not None:
            self._error(chunk.refusal)
            return
        reader = self._reader
        assert reader is not None
        if chunk.last or reader.too_big:
            # Over the size limit the transaction ends at once: its later chunks are refused.
            self._reader = None
            reader.end_chunks()
            self._end_of_data(reader)
            return
        self._send(Reply(250, f"{chunk.size} octets received", "2.0.0"))

    # -- the end of the message ------------------------------------------------------------------

    def _end_of_data(self, reader: BodyReader) -> None:
        envelope = self._envelope
        assert envelope is not None
        self._reset_transaction()
        self.session.advance(END_OF_DATA)
        refusal = None
        if reader.too_big:
            refusal = Reply(552, f"Message size exceeds fixed limit of {reader.max_size} bytes", "5.3.4")
        elif reader.bare_newline:
            refusal = Reply(550, "Bare CR or LF in message; lines must end with CRLF", "5.6.11")
        elif reader.nul:
            refusal = Reply(550, "NUL character in message", "5.6.0")
        elif reader.long_line:
            refusal = Reply(550, f"Message has a line longer than {reader.max_line} octets", "5.6.0")
        if refusal is not None:
            reader.discard()
            self._message_done(refusal.code)
            self._error(refusal)
            return
        envelope.received = time.time()
        body = reader.body()
        mime = body.read() if self.factory.hooks.defines(END_OF_DATA.hook or "") else None

        def refuse(reply: Reply) -> None:
            reader.discard()
            self._message_done(reply.code)
            self._error(reply)

        def verdict(reply: Reply | None) -> None:
            if reply is not None and reply.refuses:
                refuse(reply)
            elif self.filter is None:
                self._wait(self.factory.accept(self.conn, envelope, body), queued)
            else:
                self._wait(self.filter.message(envelope, body, self.factory.relay.is_local), filtered)

        def filtered(result: Reply | Filtered) -> None:
            if isinstance(result, Reply):
                refuse(result)
            elif result.discard:
                queued([])  # a milter's discard: the client hears 250, nothing is kept
            else:
                self._wait(self.factory.accept(self.conn, result.envelope, result.body), queued)

        def queued(reply: Reply | list[str] | Any) -> None:
            reader.discard()
            if isinstance(reply, Reply):
                self._message_done(reply.code)
                self._answer(reply)
                return
            self._message_done(250)
            ids = list(reply)
            lines = ["Ok, queued as:"] + ids if ids else ["Ok"]
            self._write(reply_bytes(250, lines, "2.0.0"))

        self._run(END_OF_DATA, verdict, mime)
