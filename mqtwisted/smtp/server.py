"""The ESMTP server: bytes in, replies out, hooks asked at each transition of the session table.

Built on :class:`twisted.mail.smtp.ESMTP` (its timeout and TLS plumbing), with Twisted's line
handling replaced, because that is where its defects live (see docs/architecture.rst):

* input is processed strictly in order, one command at a time; while a hook or the queue decides,
  the transport is paused, so pipelined commands wait their turn instead of being answered out of
  order or with 503;
* command lines are bounded; an over-long line gets ``500 5.5.2`` and is skipped, never buffered
  without limit;
* at STARTTLS everything the client pipelined behind it is discarded and the session starts over;
* DATA is read per chunk by :class:`BodyReader`, which leaves DATA only at ``CRLF . CRLF``;
* every malformed input gets an SMTP error reply; the session goes on until too many errors.

What a command may do is decided by :mod:`mqtwisted.smtp.session`, AUTH by :mod:`~mqtwisted.smtp.sasl`;
what happens to an accepted message is the ``accept`` callable's business (the protocol does
not know the queue).  :mod:`mqtwisted.smtp.factory` builds the sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer

from mqtwisted import hooks as hook_names
from mqtwisted.connection import Connection, HookRunner, Reply
from mqtwisted.envelope import Envelope, Recipient
from mqtwisted.filtering import Filters, FilterSession
from mqtwisted.metrics import METRICS
from mqtwisted.oplog import session_ended
from mqtwisted.replies import LOCAL_ERROR, reply_bytes
from mqtwisted.smtp import commands
from mqtwisted.smtp.body import BodyReader
from mqtwisted.smtp.config import (
    AUTH_LINE,
    COMMAND_LINE,
    MAX_PENDING,
    PATH_LINE,
    Accept,
    Authenticator,
    ServerConfig,
)
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.smtp.serverauth import AuthCommands
from mqtwisted.smtp.servermessage import Chunk, MessageCommands
from mqtwisted.smtp.serverproxy import ProxyHeaderSession
from mqtwisted.smtp.session import CONNECT, Session, Transition
from mqtwisted.smtp.wire import write_now

log = Logger()


class SessionHost(Protocol):
    """What a session asks of its factory (:class:`mqtwisted.smtp.factory.SMTPFactory`): the
    settings of the moment (SIGHUP replaces them), the collaborators, and admission."""

    config: ServerConfig
    relay: RelayPolicy
    hooks: HookRunner
    filters: Filters
    accept: Accept
    auth: Authenticator | None

    def admit(self, session: SMTPServer) -> Reply | None:
        """Count the session in, or the 421 that refuses it (connection limits)."""

    def release(self, session: SMTPServer) -> None:
        """The session is gone: count it out."""

    def when_ready(self, greet: Callable[[], None]) -> None:
        """Call ``greet`` once the MTA can store what the session accepts."""

    def storage_full(self) -> Reply | None:
        """The reply that refuses MAIL while there is no room to store mail, else None."""

    def auth_refusal(self, ip: str) -> Reply | None:
        """The reply to every AUTH from ``ip`` while it failed too often, else None."""

    def auth_failed(self, ip: str) -> None:
        """Count a failed AUTH of ``ip``."""


@implementer(interfaces.IHandshakeListener)
class SMTPServer(ProxyHeaderSession, AuthCommands, MessageCommands, smtp.ESMTP):
    """One inbound SMTP session."""

    factory: SessionHost

    def __init__(self, contextFactory: Any = None) -> None:
        smtp.ESMTP.__init__(self, contextFactory=contextFactory)
        self._buffer = b""
        #: bytes may wait in Twisted's buffer (what the last write_now said)
        self._queued = True
        self._waiting = False
        self._paused = False
        self._processing = False
        self._skip_line = False
        self._closing = False
        self._errors = 0
        #: the message being read (DATA, or BDAT across its chunks), and what reads bytes now
        self._reader: BodyReader | None = None
        self._reading: Callable[[], None] | None = None
        self._chunk: Chunk | None = None
        self._unreset = 0
        self._auth = None
        self._envelope: Envelope | None = None
        self.conn = Connection()
        #: the milters of this session (after the plugins at each step), None without --milters
        self.filter: FilterSession | None = None
        self.session = Session()
        # For the one log line per session (mqtwisted.oplog) and /metrics.
        self.outcome = "lost"
        self.accepted = 0
        self.refused = 0
        self.started = 0.0

    # -- connection life cycle -------------------------------------------------------------------

    def connectionMade(self) -> None:
        config = self.factory.config
        self.host = config.hostname.encode("ascii", "replace")
        peer, local = self.transport.getPeer(), self.transport.getHost()
        self.conn = Connection(
            remote_ip=getattr(peer, "host", ""),
            remote_port=getattr(peer, "port", 0),
            local_ip=getattr(local, "host", ""),
            local_port=getattr(local, "port", 0),
            transport=self.transport,
        )
        self.session = Session(
            conn=self.conn,
            tls_available=self.ctx is not None,
            auth_available=self.factory.auth is not None
            or self.factory.hooks.defines(hook_names.IN_AUTHENTICATE),
            auth_plaintext=config.auth_plaintext,
        )
        self.setTimeout(config.timeout)
        self.started = time.monotonic()
        if self.expect_proxy_header:
            self._await_proxy_header()
        else:
            self._admit()

    def _admit(self) -> None:
        refusal = self.factory.admit(self)
        if refusal is not None:
            self.outcome = "refused"
            METRICS.connections_refused += 1
            self._send(refusal)
            self._close()
            return
        self.filter = self.factory.filters.open(self.conn)
        self.factory.when_ready(self._connected)

    def _connected(self) -> None:
        if not self._closing:  # the client may have left while the greeting was held
            self._run(CONNECT, self._filtered(self.filter and self.filter.connect, self._greet))

    def _greet(self, reply: Reply | None) -> None:
        if reply is not None and reply.refuses:
            self.outcome = "rejected"
            METRICS.connections_refused += 1
            self._send(reply)
            self._close()
            return
        self.session.greeted()
        self._send(Reply(220, f"{self.factory.config.hostname} ESMTP mqmta"))

    def handshakeCompleted(self) -> None:
        """TLS is up (after STARTTLS, or at once on the implicit-TLS port)."""
        self.conn.secure = True
        handle = self.transport.getHandle() if hasattr(self.transport, "getHandle") else None
        try:
            self.conn.tls_version = handle.get_protocol_version_name()
            self.conn.tls_cipher = handle.get_cipher_name()
            self.conn.peer_certificate = handle.get_peer_certificate()
        except Exception:
            pass
        if self.factory.hooks.defines(hook_names.IN_SECURE):
            self._run(Transition("<tls>", None, hook_names.IN_SECURE), self._secured)

    def _secured(self, reply: Reply | None) -> None:
        if reply is not None and reply.refuses:
            self._send(reply)
            self._close()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        self._closing = True
        self.session.close()
        if self._reader is not None:
            self._reader.discard()
            self._reader = None
        self.factory.release(self)
        if self.filter is not None:
            self.filter.close()
        hooks = self.factory.hooks
        if hooks.defines(hook_names.IN_CLOSE):
            hooks.run(hook_names.IN_CLOSE, self.conn)
        hooks.connection_closed(self.conn)
        session_ended(self)

    def timeoutConnection(self) -> None:
        if self._waiting:
            # The idle timeout is for a client we wait for; while it waits for us (a hook, the
            # queue) it is not idle, and a slow plugin must not look like a dead client.  (Re-arming
            # here is cheaper than cancelling and re-creating the timer around every wait.)
            self.setTimeout(self.factory.config.timeout)
            return
        self.outcome = "timeout"
        self._send(Reply(421, f"{self.factory.config.hostname} Timeout, closing connection", "4.4.2"))
        self._close()

    def _close(self) -> None:
        self._closing = True
        self.session.close()
        self.transport.loseConnection()

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA, or waiting for a hook or the queue (shutdown waits)."""
        return self._envelope is not None or self._reader is not None or self._waiting

    def shutdown(self, reply: Reply) -> None:
        """The MTA is stopping: say so (421) and close, whatever the session was doing."""
        if self._closing:
            return
        self.outcome = "shutdown"
        self._send(reply)
        self._close()

    def _message_done(self, code: int) -> None:
        METRICS.message(code)
        if code < 400:
            self.accepted += 1
        else:
            self.refused += 1

    # -- input -----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.awaiting_proxy_header:
            rest = self._proxy_header_data(data)
            if not rest:
                return
            data = rest
        self._buffer += data
        if self._waiting:
            # Input waits its turn behind the hook or queue deciding; stop reading only when
            # enough is waiting to matter (pausing on every wait costs two epoll changes).
            if len(self._buffer) > MAX_PENDING and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while not self._waiting and not self._closing and self._buffer:
                if self._reading is not None:
                    self._reading()
                elif not self._next_line():
                    break
        finally:
            self._processing = False

    def _next_line(self) -> bool:
        """Handle one complete line; False when only part of a line is buffered."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if self._skip_line:
                self._buffer = b""
            elif len(self._buffer) > AUTH_LINE:
                # No line may be this long: answer now, and skip the rest up to its LF.
                self._buffer = b""
                self._skip_line = True
                self._too_long()
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        if self._skip_line:
            self._skip_line = False
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > self._line_limit(line):
            self._too_long()
            return True
        self.resetTimeout()
        if self._auth is not None:
            self._auth_step(line)
        else:
            self._command(line)
        return True

    def _line_limit(self, line: bytes) -> int:
        if self._auth is not None:
            return AUTH_LINE
        verb = line[:5].upper()
        if verb.startswith(b"AUTH"):
            return AUTH_LINE
        if verb in (b"MAIL ", b"RCPT "):
            return PATH_LINE
        return COMMAND_LINE

    def _too_long(self) -> None:
        # A 500 ends an AUTH exchange for the client (RFC 4954 §4: any reply but 334 does); if
        # we kept waiting for a continuation, its next command would be read as credentials.
        self._auth = None
        self._error(Reply(500, "Line too long", "5.5.2"))

    # -- replies and errors ----------------------------------------------------------------------

    def _send(self, reply: Reply, lines: list[str] | None = None) -> None:
        self._write(reply_bytes(reply.code, lines or [reply.text], reply.enhanced))

    def _write(self, data: bytes) -> None:
        # Only this method writes to the transport, so what write_now said last time holds.
        self._queued = write_now(self.transport, data, self._queued)

    def _error(self, reply: Reply) -> None:
        self._errors += 1
        if self._errors > self.factory.config.max_errors:
            self.outcome = "errors"
            self._send(Reply(421, "Too many errors, closing connection", "4.7.0"))
            self._close()
            return
        self._send(reply)

    def _answer(self, reply: Reply) -> None:
        if reply.refuses:
            self._error(reply)
        else:
            self._send(reply)

    # -- running hooks in order --------------------------------------------------------------------

    def _run(self, transition: Transition, then: Callable[[Reply | None], None], *args: Any) -> None:
        """Ask the transition's hook (if any plugin defines it), then call ``then`` with its verdict.

        While the hook decides, input is only buffered (and reading paused past MAX_PENDING):
        that is what keeps pipelined replies in order.
        """
        hooks = self.factory.hooks
        if transition.hook is None or not hooks.defines(transition.hook):
            then(None)
            return
        self.conn.response = None
        self._wait(hooks.run(transition.hook, self.conn, *args), then)

    def _filtered(self, step: Callable[[], defer.Deferred] | None,
                  then: Callable[[Reply | None], None]) -> Callable[[Reply | None], None]:
        """``then``, given the milters' verdict on a step the plugins allowed (``step`` asks them;
        None: no milters).  A refusal from either side is the verdict; else the plugins' reply."""
        if step is None:
            return then

        def after_plugins(reply: Reply | None) -> None:
            if reply is not None and reply.refuses:
                then(reply)
            else:
                self._wait(step(), lambda verdict: then(verdict or reply))

        return after_plugins

    def _wait(self, d: defer.Deferred, then: Callable[[Any], None]) -> None:
        self._waiting = True

        def done(result: Any) -> None:
            self._waiting = False
            if self._closing:
                return
            self.resetTimeout()
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            try:
                then(result)
            except Exception:
                log.failure("SMTP session {id} failed", id=self.conn.id)
                self._send(LOCAL_ERROR)
            self._process()

        d.addErrback(self._internal_error)
        d.addCallback(done)

    def _internal_error(self, failure: Any) -> Reply:
        log.failure("SMTP session {id}: internal error", failure, id=self.conn.id)
        return LOCAL_ERROR

    # -- commands --------------------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        parsed = commands.parse_command(line)
        if isinstance(parsed, Reply):
            self._error(parsed)
            return
        allowed = self.session.allow(parsed.verb)
        if parsed.verb == "BDAT":
            self._bdat(parsed.arg, allowed)  # allowed or not, its chunk is read
            return
        if isinstance(allowed, Reply):
            self._error(allowed)
            return
        getattr(self, "smtp_" + parsed.verb)(parsed.arg, allowed)

    def _reset_transaction(self) -> None:
        self._envelope = None
        if self._reader is not None:  # BDAT chunks of a transaction given up (RSET, EHLO)
            self._reader.discard()
            self._reader = None

    def smtp_EHLO(self, arg: str, t: Transition) -> None:
        self._hello(arg, t, esmtp=True)

    def smtp_HELO(self, arg: str, t: Transition) -> None:
        self._hello(arg, t, esmtp=False)

    def _hello(self, arg: str, t: Transition, esmtp: bool) -> None:
        if not arg or " " in arg or len(arg) > 255:
            self._error(Reply(501, "Syntax: EHLO hostname", "5.5.4"))
            return
        helo = self.filter and (lambda: self.filter.helo(arg))  # type: ignore[union-attr]
        self._filtered(helo, lambda reply: self._helo_done(arg, t, esmtp, reply))(None)

    def _helo_done(self, arg: str, t: Transition, esmtp: bool, reply: Reply | None) -> None:
        if reply is not None and reply.refuses:
            self._error(reply)
            return
        self._reset_transaction()
        self.conn.helo = arg
        self.session.advance(t)
        name = self.factory.config.hostname
        if not esmtp:
            self._send(Reply(250, name))
            return
        lines = [f"{name} Hello {arg}"] + self.session.extensions()
        size = self.factory.config.max_size
        lines.insert(2, f"SIZE {size}" if size else "SIZE")
        self._write(reply_bytes(250, lines, None))

    def smtp_NOOP(self, arg: str, t: Transition) -> None:
        self._send(Reply(250, "OK", "2.0.0"))

    def smtp_HELP(self, arg: str, t: Transition) -> None:
        self._send(Reply(214, "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH", "2.0.0"))

    def smtp_VRFY(self, arg: str, t: Transition) -> None:
        if not arg:
            self._error(Reply(501, "Syntax: VRFY address", "5.5.4"))
            return
        self._send(Reply(252, "Cannot VRFY user, but will accept message and attempt delivery", "2.5.0"))

    def smtp_RSET(self, arg: str, t: Transition) -> None:
        self._reset_transaction()
        self.session.advance(t)
        self._send(Reply(250, "Reset OK", "2.0.0"))

    def smtp_QUIT(self, arg: str, t: Transition) -> None:
        self.outcome = "quit"
        self._send(Reply(221, "Bye", "2.0.0"))
        self._close()

    def smtp_STARTTLS(self, arg: str, t: Transition) -> None:
        if arg:
            self._error(Reply(501, "Syntax: STARTTLS takes no argument", "5.5.4"))
            return
        self._send(Reply(220, "Ready to start TLS", "2.0.0"))
        # RFC 3207 §4.2 and CVE-2011-0411: what was pipelined behind STARTTLS is not to be trusted.
        self._buffer = b""
        self._reset_transaction()
        self.conn.helo = None
        self.session.start_tls()
        self.transport.startTLS(self.ctx)
        # The secure hook runs from handshakeCompleted, once the handshake is really done.

    # -- the transaction -------------------------------------------------------------------------

    def smtp_MAIL(self, arg: str, t: Transition) -> None:
        path = commands.parse_path(arg, "FROM")
        if isinstance(path, Reply):
            self._error(path)
            return
        full = self.factory.storage_full()
        if full is not None:
            self._send(full)  # the MTA's trouble, not the client's: no error counted
            return
        refusal = commands.check_mail_params(path.params, self.factory.config.max_size, self.conn.secure)
        if refusal is None and path.address:
            refusal = commands.check_address(path.address, "SMTPUTF8" in path.params)
        if refusal is not None:
            self._error(refusal)
            return
        envelope = Envelope(path.address, path.params)

        def verdict(reply: Reply | None) -> None:
            if reply is not None and reply.refuses:
                self._error(reply)
                return
            self._envelope = envelope
            self.session.advance(t)
            self._send(reply or Reply(250, "Sender OK", "2.1.0"))

        mail = self.filter and (lambda: self.filter.mail(path.address, path.params))  # type: ignore[union-attr]
        self._run(t, self._filtered(mail, verdict), path.address)

    def smtp_RCPT(self, arg: str, t: Transition) -> None:
        envelope = self._envelope
        assert envelope is not None
        path = commands.parse_path(arg, "TO")
        if isinstance(path, Reply):
            self._error(path)
            return
        postmaster = path.address.lower() == "postmaster"
        if postmaster:
            # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted; it is this host's.
            path = commands.Path(f"postmaster@{self.factory.config.hostname}", path.params)
        refusal = commands.check_rcpt_params(path.params) or commands.check_address(
            path.address, "SMTPUTF8" in envelope.params
        )
        if refusal is None and len(envelope.recipients) >= self.factory.config.max_recipients:
            refusal = Reply(452, "Too many recipients", "4.5.3")
        local = postmaster or self.factory.relay.is_local(path.address)
        if refusal is None and not local and not self.factory.relay.may_relay(self.conn):
            refusal = Reply(554, "Relay access denied", "5.7.1")
        if refusal is not None:
            self._error(refusal)
            return

        recipient = Recipient(path.address, path.params, local)

        def verdict(reply: Reply | None) -> None:
            if reply is not None and reply.refuses:
                self._error(reply)
                return
            envelope.recipients.append(recipient)
            self.session.advance(t)
            self._send(reply or Reply(250, "Recipient OK", "2.1.5"))

        rcpt = self.filter and (lambda: self.filter.rcpt(recipient))  # type: ignore[union-attr]
        self._run(t, self._filtered(rcpt, verdict), path.address)
