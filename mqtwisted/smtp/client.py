"""The outbound SMTP session: Twisted's ESMTPSender with its defects fixed (DESIGN.md §5).

One :class:`OutboundFactory` makes one connection that sends as many messages as its
:class:`MessageSource` hands it and reports one :class:`Attempt` per message (or one for the
connection when it fails before any message).  It never retries: retrying is the queue's job.
The envelope is pipelined when the server offers PIPELINING (RFC 2920), ``RSET`` is sent only
after a failed transaction, and a session with nothing to send may park until the source
resumes it (idle connection reuse, ``--max-idle-time``).

Fixed against twisted.mail 26.10:

* the body is dot-stuffed by line, including the first line and lines that straddle 16 KiB
  chunks, and line endings are normalised to CRLF before sending (no ``\\r\\r\\n``, no bare LF);
* bytes buffered behind the ``220`` reply to ``STARTTLS`` are discarded, not read as the
  reply to the EHLO sent inside TLS (reply injection);
* TLS and AUTH are policy (``security``, credentials), not hard requirements.
"""

from __future__ import annotations

import io
import re
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols.basic import FileSender

from mqtwisted.connection import Connection, HookRunner, MessageHandle, NoHooks, Reply
from mqtwisted.results import Attempt, from_reply
from mqtwisted.smtp.wire import write_now

log = Logger()

SECURITY_LEVELS = ("none", "optional", "opportunistic", "required", "verified")

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def encode_body(mime: bytes) -> bytes:
    """The DATA payload for ``mime``: CRLF line endings, leading dots doubled, ending in CRLF.

    Works on whole lines before any chunking, so a ``.`` at the start of the first line or
    of a line that crosses a transport chunk is still doubled (Twisted's transformChunk
    misses both).  The terminating ``.`` line is not included.
    """
    if not mime:
        return b""
    data = mime
    crlf = data.count(b"\r\n")
    # C-speed counts first: mail from our own server is already CRLF-only and rarely has a
    # leading dot, and the regular expressions cost more than the rest of a message's sending.
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        data = _LINE_END.sub(b"\r\n", data)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def xtext(value: str) -> str:
    """RFC 3461 xtext for ORCPT/ENVID values."""
    out = []
    for o in value.encode("utf-8"):
        out.append(chr(o) if 33 <= o <= 126 and o not in b"+=" else "+%02X" % o)
    return "".join(out)


class OutMessage:
    """One message for one recipient, as the session sends it."""

    def __init__(
        self,
        envelope: str,
        recipient: str,
        mime: bytes,
        dsn: Mapping[str, Any] | None = None,
        document: dict[str, Any] | None = None,
        key: Any = None,
    ) -> None:
        self.envelope = envelope
        self.recipient = recipient
        self.mime = mime
        self.dsn = dsn or {}
        self.document = document if document is not None else {"envelope": envelope, "recipient": recipient}
        self.key = key


class MessageSource(Protocol):
    """What a session asks for work and tells outcomes (the delivery scheduler)."""

    def next_message(self, session: OutboundSender) -> OutMessage | None:
        """The next message for this connection, or None when there is none now."""

    def park(self, session: OutboundSender) -> bool:
        """(Optional) Nothing to send: True keeps ``session`` open and idle until the source
        calls its ``resume()`` or ``quit_idle()``; False (or no such method) ends it with QUIT."""

    def give_back(self, message: OutMessage) -> None:
        """``message`` was taken but never attempted (connection ended first)."""

    def message_done(self, message: OutMessage, attempt: Attempt) -> None:
        """One attempt at ``message`` ended (accepted or not)."""

    def session_ended(self, session: OutboundSender, fault: Attempt | None) -> None:
        """The connection is gone; ``fault`` is set when it failed before or between messages."""


def _cipher(transport: Any) -> dict[str, Any] | None:
    handle = None
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    if not hasattr(handle, "get_cipher_name"):
        handle = getattr(transport, "_tlsConnection", None)
    if handle is None or not hasattr(handle, "get_cipher_name"):
        return None
    name = handle.get_cipher_name()
    if name is None:
        return None
    return {"name": name, "bits": handle.get_cipher_bits(), "version": handle.get_protocol_version_name()}


class OutboundSender(smtp.ESMTPSender):
    """One outbound connection; see the module docstring."""

    factory: OutboundFactory
    # Logging every line costs a copy per line; results carry the replies that matter.
    debug = False
    # ESMTPClient's __setattr__ only exists to warn about the long-deprecated ``tlsMode``; as a
    # Python-level hook it runs on every attribute store, tens of them per message.
    __setattr__ = object.__setattr__

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.state = "connect"
        self.mta: str | None = None
        self.extensions: dict[bytes, bytes | None] = {}
        self.messages = 0
        self.current: OutMessage | None = None
        self.handle: MessageHandle | None = None
        self.conn = Connection(inbound=False)
        self.fault: Attempt | None = None
        self.cipher: dict[str, Any] | None = None
        self._in_transaction = False
        self._quitting = False
        self._closed = False
        self._final_reply: tuple[int, bytes] | None = None
        self._sent_hook_pending = False
        self._hook_reply: Reply | None = None
        self._body = b""
        self._body_done = False
        self._needs_rset = False
        self._parked = False
        self._unconfirmed = False
        self._leave_after = False
        self._tx_error: Attempt | None = None
        #: commands sent and waiting for their reply, in order (several when pipelining)
        self._waiting: deque[str] = deque()
        #: commands of this transaction not yet sent (servers without PIPELINING)
        self._unsent: deque[tuple[str, bytes]] = deque()
        #: messages with an outcome on this connection; 0 means the connection itself failed
        self.reported = 0

    def _report(self, message: OutMessage, attempt: Attempt) -> None:
        self.reported += 1
        self.factory.source.message_done(message, attempt)

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.state = "intro"
        # SMTP is lock-step: a small write (the end-of-data dot, a command) held back by Nagle
        # until the server's delayed ACK costs ~40 ms per message on loopback.
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.conn.remote_ip = getattr(peer, "host", "")
        self.conn.remote_port = getattr(peer, "port", 0)
        self.conn.local_ip = getattr(host, "host", "")
        self.conn.local_port = getattr(host, "port", 0)
        self.conn.transport = self.transport

    def attempt(self, state: str, result: str, **kw: Any) -> Attempt:
        """An Attempt stamped with this connection's facts."""
        return Attempt(
            state,
            result,
            time=self.factory.clock.seconds(),
            mta=self.mta,
            local_ip=self.conn.local_ip or None,
            remote_ip=self.conn.remote_ip or None,
            messages=self.messages if self.messages else None,
            cipher=self.cipher,
            **kw,
        )

    def _reply_attempt(self, state: str, code: int, resp: bytes, **kw: Any) -> Attempt:
        a = from_reply(state, code, resp, time=self.factory.clock.seconds(), **kw)
        a.mta, a.local_ip, a.remote_ip = self.mta, self.conn.local_ip or None, self.conn.remote_ip or None
        a.messages, a.cipher = self.messages or None, self.cipher
        if a.accepted:
            a.dsn = b"DSN" in self.extensions
        return a

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if self._closed:
            return
        self._closed = True
        message, self.current = self.current, None
        fault = self.fault
        if fault is None and not self._quitting:
            description = "connection lost"
            if reason is not None and not reason.check(neterror.ConnectionDone):
                description = f"connection lost: {reason.getErrorMessage()}"
            fault = self.attempt(self.state, "lost", description=description)
        if message is not None:
            if self._in_transaction and not self._unconfirmed:
                self._report(message, fault or self.attempt(self.state, "lost", description="connection lost"))
            else:
                self.factory.source.give_back(message)
        try:
            self.factory.hooks.connection_closed(self.conn)
        except Exception:
            log.failure("hook runner connection_closed raised")
        self.factory.session_ended(self, fault)

    def timeoutConnection(self) -> None:
        self.fault = self.attempt(self.state, "timeout", description="no reply from server in time")
        self.transport.abortConnection()

    def sendError(self, exc: Exception) -> None:
        # Twisted's version errbacks the factory's Deferred and may retry; ours records the
        # fault for the current state and closes, and the scheduler decides what comes next.
        code = getattr(exc, "code", -1)
        resp = getattr(exc, "resp", b"") or b""
        if isinstance(exc, smtp.SMTPTimeoutError):
            self.fault = self.attempt(self.state, "timeout", description="no reply from server in time")
        elif isinstance(exc, smtp.SMTPProtocolError) or code is None or code < 0:
            self.fault = self.attempt(self.state, "invalid", description=_text(resp or str(exc)))
        elif isinstance(exc, smtp.TLSRequiredError):
            self.fault = self.attempt("starttls", "error", description="server does not offer STARTTLS", permanent=False)
        else:
            self.fault = self._reply_attempt(self.state, code, resp if isinstance(resp, bytes) else str(resp).encode())
            if self.state == "auth":
                # Bad smarthost credentials are the operator's to fix: retry, do not bounce.
                self.fault.permanent = False
        if self.current is not None and self._in_transaction:
            message, self.current = self.current, None
            self._in_transaction = False
            self._report(message, self.fault)
        if isinstance(exc, smtp.SMTPClientError) and not exc.isFatal and not self.transport.disconnecting:
            self._quit()
        else:
            self.transport.loseConnection()

    def _quit(self) -> None:
        self._quitting = True
        self.state = "quit"
        self._disconnectFromServer()

    # -- EHLO, STARTTLS, AUTH ------------------------------------------------------------------

    def esmtpState_ehlo(self, code: int, resp: bytes) -> None:
        if self.mta is None:
            # MailerQ's "mta": the name the server greets with.
            words = resp.split(None, 1)
            self.mta = words[0].decode("ascii", "replace") if words else ""
        if self.state != "starttls":
            self.state = "ehlo"
        super().esmtpState_ehlo(code, resp)

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        self.extensions = {}
        for line in resp.splitlines()[1:]:
            word, _, rest = line.partition(b" ")
            self.extensions[word.upper()] = rest or None
        if self._tlsMode:
            self.cipher = _cipher(self.transport)
            self.conn.secure = True
            if self.cipher:
                self.conn.tls_cipher = self.cipher["name"]
                self.conn.tls_version = self.cipher["version"]
        super().esmtpState_serverConfig(code, resp)

    def esmtpEHLORequired(self, code: int = -1, resp: bytes | None = None) -> None:
        # EHLO refused and HELO not allowed (TLS/AUTH required): report the EHLO reply itself.
        self.fault = self._reply_attempt("ehlo", code, resp or b"")
        if self.fault.code is None or self.fault.code < 400:
            self.fault.result = "invalid"
        self.transport.loseConnection()

    def smtpState_helo(self, code: int, resp: bytes) -> None:
        self.state = "helo"
        super().smtpState_helo(code, resp)
        # Twisted leaves the EHLO fallback as the failure handler: a refused HELO would loop.
        self._failresponse = self._helo_failed

    def _helo_failed(self, code: int, resp: bytes) -> None:
        self.fault = self._reply_attempt("helo", code, resp)
        self._quit()

    def tryTLS(self, code: int, resp: bytes, items: dict[bytes, Any]) -> None:
        if not self._tlsMode and self.factory.security in ("required", "verified") and b"STARTTLS" not in items:
            self.fault = self.attempt("starttls", "error", description="server does not offer STARTTLS and security is " + self.factory.security, permanent=False)
            self._quit()
            return
        if b"STARTTLS" in items and self.context is not None and not self._tlsMode:
            self.state = "starttls"
        super().tryTLS(code, resp, items)

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        # RFC 3207 §4.2: anything the server sent after its 220 came in plaintext and must not be
        # read as a reply inside TLS; Twisted keeps it and every later reply shifts by one.
        injected = self.clearLineBuffer()
        if injected:
            log.warn("discarded {n} plaintext bytes after 220 to STARTTLS from {peer}", n=len(injected), peer=self.conn.remote_ip)
        super().esmtpState_starttls(code, resp)

    def esmtpTLSFailed(self, code: int = -1, resp: bytes | None = None) -> None:
        self.fault = self._reply_attempt("starttls", code if code > 0 else 451, resp or b"TLS negotiation failed")
        self.fault.permanent = False
        self.transport.loseConnection()

    def authenticate(self, code: int, resp: bytes, items: dict[bytes, Any]) -> None:
        self.state = "auth"
        super().authenticate(code, resp, items)

    def esmtpAUTHRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        self.fault = self.attempt("auth", "error", description="server offers no usable AUTH mechanism", permanent=False)
        self._quit()

    # -- the message loop ----------------------------------------------------------------------
    #
    # Per message: [RSET] MAIL RCPT DATA, then the body and the final dot.  With PIPELINING
    # (RFC 2920) the commands go out in one write and their replies are matched in order, so a
    # message costs two round trips instead of five; without it they go one by one.  RSET is
    # sent only after a transaction that did not end with a reply to the dot: a completed
    # transaction already resets the server (RFC 5321 §4.1.1.4), and every extra command is a
    # round trip or a parse on both sides.
    #
    # When the source has nothing for us the session parks (state "idle") instead of quitting:
    # the source may wake it with :meth:`resume` when a message for this destination arrives,
    # or end it with :meth:`quit_idle` (the scheduler's max-idle-time).  Reconnecting for every
    # message of a trickle is what made delivery slow.

    def smtpState_from(self, code: int, resp: bytes) -> None:
        # Reached once, after EHLO/TLS/AUTH: take the first message.
        self._next_message()

    def _next_message(self) -> None:
        if self._closed or self._quitting:
            return
        message = None
        if self.messages < self.factory.max_messages:
            message = self.factory.source.next_message(self)
        if message is None:
            if self.messages < self.factory.max_messages and self.factory.source_park(self):
                self._park()
            else:
                self._quit()
            return
        self.current = message
        self.messages += 1
        self.handle = MessageHandle(message.document, outgoing=True)
        # Nothing is owed by the server until our next command; anything it sends meanwhile
        # (while a plugin runs) is unexpected and ends the session.
        self._okresponse = self._failresponse = self._command_reply
        hooks = self.factory.hooks
        if hooks.defines("mq_smtp_out_data"):
            # Run before MAIL FROM so MQ_setEnvelope/MQ_setRecipient can still change the wire;
            # the reply timeout is off meanwhile: the server owes us nothing while a plugin works.
            self.setTimeout(None)
            d = hooks.run("mq_smtp_out_data", self.conn, self.handle)
            d.addCallback(self._out_data_done, message)
            d.addErrback(self._hook_failed, message)
        else:
            self._send_mail_from(message)

    # -- parking -------------------------------------------------------------------------------

    @property
    def parked(self) -> bool:
        return self._parked

    def _park(self) -> None:
        self._parked = True
        self.state = "idle"
        # The server owes no reply while we are idle; the scheduler owns the idle limit.
        self.setTimeout(None)
        self._okresponse = self._failresponse = self._reply_while_idle

    def _reply_while_idle(self, code: int, resp: bytes) -> None:
        # Typically "421 idle timeout" before the server closes: leave quietly, no fault.
        self._parked = False
        self._quitting = True
        self.transport.loseConnection()

    def resume(self) -> bool:
        """Wake a parked session to send the source's next message; False when it cannot (it
        is not parked, or is closing), so the caller should find another connection."""
        if not self._parked or self._closed or self._quitting:
            return False
        self._parked = False
        # Until the server answers again this connection is not known to be alive: a message
        # lost to a connection the server closed while we idled is given back, not failed.
        self._unconfirmed = True
        self.setTimeout(self.factory.timeout)
        self._next_message()
        return True

    def quit_idle(self) -> None:
        """End a parked session with QUIT (idle limit reached, or shutdown)."""
        if self._parked and not self._closed:
            self._parked = False
            self.setTimeout(self.factory.timeout)
            self._quit()

    # -- one transaction -----------------------------------------------------------------------

    def _out_data_done(self, reply: Reply | None, message: OutMessage) -> None:
        if self._closed or self.current is not message:
            return
        self.setTimeout(self.factory.timeout)
        if reply is not None and reply.refuses:
            self._refused_by_hook("data", reply, message)
            return
        self._send_mail_from(message)

    def _hook_failed(self, failure: Any, message: OutMessage) -> None:
        log.failure("outbound hook failed", failure)
        self._out_data_done(Reply(451, "plugin failure", "4.3.0"), message)

    def _refused_by_hook(self, state: str, reply: Reply, message: OutMessage) -> None:
        attempt = self.attempt(state, "error", code=reply.code, status=reply.enhanced, description=reply.text)
        self.current = None
        self._in_transaction = False
        self._report(message, attempt)
        self._after_message()

    def _wire(self, message: OutMessage) -> tuple[str, str, bytes]:
        h = self.handle
        envelope = h.wire_envelope if h is not None and h.wire_envelope is not None else message.envelope
        recipient = h.wire_recipient if h is not None and h.wire_recipient is not None else message.recipient
        mime = h.wire_mime if h is not None and h.wire_mime is not None else message.mime
        return envelope, recipient, mime

    def _mail_line(self, message: OutMessage, envelope: str) -> bytes:
        params = []
        if b"SIZE" in self.extensions:
            params.append(b"SIZE=%d" % len(self._body))
        if b"8BITMIME" in self.extensions and not self._body.isascii():
            params.append(b"BODY=8BITMIME")
        if b"SMTPUTF8" in self.extensions and not (envelope + message.recipient).isascii():
            params.append(b"SMTPUTF8")
        if b"DSN" in self.extensions and message.dsn:
            ret = str(message.dsn.get("ret") or "").upper()
            if ret in ("FULL", "HDRS"):
                params.append(b"RET=" + ret.encode())
            if message.dsn.get("envid"):
                params.append(b"ENVID=" + xtext(str(message.dsn["envid"])).encode())
        return b" ".join([b"MAIL FROM:<" + envelope.encode("utf-8") + b">", *params])

    def _rcpt_line(self, message: OutMessage, recipient: str) -> bytes:
        params = []
        if b"DSN" in self.extensions and message.dsn:
            notify = message.dsn.get("notify")
            if isinstance(notify, (list, tuple)):
                notify = ",".join(notify)
            if notify:
                params.append(b"NOTIFY=" + str(notify).upper().replace(" ", "").encode())
            if message.dsn.get("orcpt"):
                orcpt = str(message.dsn["orcpt"])
                if ";" not in orcpt:
                    orcpt = "rfc822;" + orcpt
                addr_type, _, addr = orcpt.partition(";")
                params.append(b"ORCPT=" + (addr_type + ";" + xtext(addr)).encode())
        return b" ".join([b"RCPT TO:<" + recipient.encode("utf-8") + b">", *params])

    def _send_mail_from(self, message: OutMessage) -> None:
        envelope, recipient, mime = self._wire(message)
        self._body = encode_body(mime)
        commands: list[tuple[str, bytes]] = []
        if self._needs_rset:
            commands.append(("rset", b"RSET"))
        commands += [
            ("mailfrom", self._mail_line(message, envelope)),
            ("rcptto", self._rcpt_line(message, recipient)),
            ("data", b"DATA"),
        ]
        self._needs_rset = False
        self._in_transaction = True
        self._tx_error = None
        self._expected = range(0, 1000)
        self._okresponse = self._failresponse = self._command_reply
        if b"PIPELINING" in self.extensions:
            # The whole envelope in one write, so one segment (RFC 2920).
            for state, _ in commands:
                self._waiting.append(state)
            self.state = commands[0][0]
            self._write(b"".join(line + b"\r\n" for _, line in commands))
        else:
            self._unsent.extend(commands)
            self._send_one()

    def _send_one(self) -> None:
        state, line = self._unsent.popleft()
        self.state = state
        self._waiting.append(state)
        self._write(line + b"\r\n")

    def _write(self, data: bytes) -> None:
        write_now(self.transport, data)

    def _command_reply(self, code: int, resp: bytes) -> None:
        """The reply to the oldest command of the transaction still waiting for one."""
        self._unconfirmed = False
        if not self._waiting:
            self._unexpected_reply(code, resp)
            return
        state = self._waiting.popleft()
        if state == "abort":
            # The reply to the lone dot that ended a DATA we had to accept: ignored.
            self._tx_done()
            return
        self.state = state
        if code == 421:
            # The server is closing the channel: no RSET, no further messages here.
            self._tx_error = self._tx_error or self._reply_attempt(state, code, resp)
            self._unsent.clear()
            self._fail_transaction()
            self._quitting = True
            self.transport.loseConnection()
            return
        ok = code == 354 if state == "data" else 200 <= code < 300
        if not ok and self._tx_error is None:
            attempt = self._reply_attempt(state, code, resp)
            if state == "rset":
                # Not the message's fault: try it again elsewhere, and leave this connection.
                attempt.permanent = False
                self._leave_after = True
            self._tx_error = attempt
            self._unsent.clear()
        if state == "data" and code == 354 and self._tx_error is not None:
            # Pipelined: MAIL or RCPT failed but the server still wants the data.  End it with
            # an empty message; RFC 2920 §3.1 lets a client send just the dot here.
            self._waiting.append("abort")
            self.sendLine(b".")
            return
        if self._tx_error is None and state == "data":
            self._send_body()
            return
        if self._unsent:
            self._send_one()
            return
        if not self._waiting:
            self._tx_done()

    def _tx_done(self) -> None:
        if self._tx_error is not None:
            self._fail_transaction()
            if self._leave_after:
                self._quit()
            else:
                self._after_message()

    def _fail_transaction(self) -> None:
        message, self.current = self.current, None
        self._in_transaction = False
        self._needs_rset = True
        error, self._tx_error = self._tx_error, None
        self._body = b""
        if message is not None and error is not None:
            self._report(message, error)

    def _unexpected_reply(self, code: int, resp: bytes) -> None:
        self.fault = self._reply_attempt(self.state, code, resp)
        self.fault.result = "invalid"
        self.fault.permanent = False
        self.transport.loseConnection()

    def _send_body(self) -> None:
        self.state = "message"
        # Any reply before our final dot is a protocol error; it and the final reply are
        # collected by _message_reply.
        self._okresponse = self._failresponse = self._message_reply
        body, self._body = self._body, b""
        self._body_done = False
        if len(body) <= _WRITE_AT_ONCE:
            # One write with the dot: one segment for a typical message, no producer overhead.
            self._write(body + b".\r\n")
            self._body_sent(None, dot_sent=True)
            return
        d = FileSender().beginFileTransfer(io.BytesIO(body), self.transport, self._progress)
        d.addCallbacks(self._body_sent, self._body_failed)

    def _progress(self, chunk: bytes) -> bytes:
        # Chunks are already encoded; only keep the idle timer from firing on a slow upload.
        self.resetTimeout()
        return chunk

    def _body_sent(self, _: Any, dot_sent: bool = False) -> None:
        if self._closed:
            return
        self._body_done = True
        if not dot_sent:
            self.transport.write(b".\r\n")
        message = self.current
        if message is not None and self.factory.hooks.defines("mq_smtp_out_sent"):
            self._sent_hook_pending = True
            d = self.factory.hooks.run("mq_smtp_out_sent", self.conn, self.handle)
            d.addErrback(lambda f: (log.failure("mq_smtp_out_sent failed", f), Reply(451, "plugin failure", "4.3.0"))[1])
            d.addCallback(self._out_sent_done, message)

    def _body_failed(self, failure: Any) -> None:
        if not self._closed:
            self.fault = self.attempt("message", "lost", description=failure.getErrorMessage())
            self.transport.loseConnection()

    def _out_sent_done(self, reply: Reply | None, message: OutMessage) -> None:
        self._sent_hook_pending = False
        self._hook_reply = reply
        if self._final_reply is not None and not self._closed:
            code, resp = self._final_reply
            self._final_reply = None
            self._finish_message(code, resp)

    def _message_reply(self, code: int, resp: bytes) -> None:
        if not self._body_done:
            # The server answered in the middle of the body: the session cannot be resynchronised.
            message, self.current = self.current, None
            self._in_transaction = False
            self.fault = self._reply_attempt("message", code, resp)
            if message is not None:
                self._report(message, self.fault)
            self.transport.loseConnection()
            return
        if self._sent_hook_pending:
            # The reply to the body overtook the plugin; hold it until the plugin is done.
            self._final_reply = (code, resp)
            return
        self._finish_message(code, resp)

    def _finish_message(self, code: int, resp: bytes) -> None:
        message, self.current = self.current, None
        self._in_transaction = False
        reply, self._hook_reply = self._hook_reply, None
        if message is None:
            return
        if reply is not None and reply.refuses:
            attempt = self.attempt("message", "error", code=reply.code, status=reply.enhanced, description=reply.text)
        else:
            attempt = self._reply_attempt("message", code, resp)
        if code == 421:
            self._report(message, attempt)
            self._quitting = True
            self.transport.loseConnection()
            return
        self._report(message, attempt)
        self._after_message()

    def _after_message(self) -> None:
        if self._closed or self._quitting:
            return
        if self.messages >= self.factory.max_messages:
            self._quit()
            return
        if self._needs_rset and b"PIPELINING" not in self.extensions:
            # Lock-step server: reset now, so a parked session is clean when woken.
            self._needs_rset = False
            self.state = "rset"
            self._expected = [250]
            self._okresponse = lambda code, resp: self._next_message()
            self._failresponse = self._rset_failed
            self.sendLine(b"RSET")
            return
        self._next_message()

    def _rset_failed(self, code: int, resp: bytes) -> None:
        self.fault = self._reply_attempt("rset", code, resp)
        self.fault.permanent = False
        self._quit()


#: bodies up to this size are written with their final dot in one go; larger ones are streamed
#: by a producer so the reply timer is reset while they upload.
_WRITE_AT_ONCE = 256 * 1024


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class OutboundFactory(smtp.ESMTPSenderFactory):
    """Builds the one :class:`OutboundSender` of one connection attempt."""

    protocol = OutboundSender

    def __init__(
        self,
        source: MessageSource,
        *,
        helo: str,
        security: str = "opportunistic",
        tls_hostname: str | None = None,
        tls_options: Any = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 300,
        max_messages: int = 100,
        hooks: HookRunner | None = None,
        clock: Any = None,
    ) -> None:
        if security not in SECURITY_LEVELS:
            raise ValueError(f"unknown security level {security!r}")
        self.done: Deferred[Attempt | None] = Deferred()
        contextFactory = None
        if security != "none":
            contextFactory = tls_options if tls_options is not None else client_tls_options(security, tls_hostname)
        super().__init__(
            (username or "").encode(),
            (password or "").encode() if username else None,
            "",
            [],
            None,
            Deferred(),
            retries=0,
            timeout=timeout,
            contextFactory=contextFactory,
            heloFallback=security not in ("required", "verified") and not username,
            requireAuthentication=bool(username),
            requireTransportSecurity=security in ("required", "verified"),
            # None: Twisted would otherwise build a verifying context of its own.
            hostname=None,
        )
        self.domain = helo.encode("idna") if not helo.isascii() else helo.encode()
        self.source = source
        self.security = security
        self.max_messages = max(1, max_messages)
        self.hooks: HookRunner = hooks if hooks is not None else NoHooks()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self._ended = False

    def source_park(self, session: OutboundSender) -> bool:
        """Ask the source whether ``session`` should wait for more work instead of quitting."""
        park = getattr(self.source, "park", None)
        return False if park is None else bool(park(session))

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        result = "timeout" if reason.check(neterror.TimeoutError) else "error"
        attempt = Attempt("connect", result, description=reason.getErrorMessage(), time=self.clock.seconds())
        self._end(None, attempt)

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        # The protocol reports through session_ended; nothing to retry here.
        pass

    def session_ended(self, session: OutboundSender, fault: Attempt | None) -> None:
        self._end(session, fault)

    def _end(self, session: OutboundSender | None, fault: Attempt | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.source.session_ended(session, fault)  # type: ignore[arg-type]
        self.done.callback(fault)


def client_tls_options(security: str, hostname: str | None, trust_root: Any = None) -> Any:
    """TLS client options for a security level: ``verified`` checks the certificate chain and the
    host name (service_identity); the other levels encrypt without authenticating, which is what
    opportunistic SMTP TLS does (RFC 7435)."""
    from twisted.internet import ssl

    if security == "verified":
        if not hostname:
            raise ValueError("verified TLS needs a host name")
        return ssl.optionsForClientTLS(hostname, trustRoot=trust_root)
    return ssl.CertificateOptions(verify=False)
