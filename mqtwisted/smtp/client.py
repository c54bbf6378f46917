"""The outbound SMTP connection: Twisted's ESMTPSender driving the table in :mod:`.outbound`.

One :class:`OutboundFactory` makes one connection that sends as many messages as its
:class:`MessageSource` hands it and reports one :class:`Attempt` per message (or one for the
connection when it fails before any message).  It never retries: retrying is the queue's job.
What is sent when, and what each reply means, is decided by :class:`~.outbound.Outbound`; this
module feeds it the server's lines and carries out what it says (writes, TLS, hooks, the source).
See docs/architecture.rst for where this sits in the delivery path.

Fixed against twisted.mail 26.10 (each with a regression test in tests/test_client.py):

* the body is dot-stuffed by line, including the first line and lines that straddle 16 KiB
  chunks, and line endings are normalised to CRLF before sending (no ``\\r\\r\\n``, no bare LF):
  :func:`~.outbody.encode_body`;
* bytes buffered behind the ``220`` reply to ``STARTTLS`` are discarded, not read as the
  reply to the EHLO sent inside TLS (reply injection);
* TLS and AUTH are policy (``security``, credentials), not hard requirements.

Only documented, overridable methods of ESMTPSender are overridden (``connectionMade``,
``lineReceived``, ``connectionLost``, ``timeoutConnection``); Twisted's reply dispatch, which
lives in private attributes, is not used at all.
"""

from __future__ import annotations

import io
import typing
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols.basic import FileSender
from zope.interface import implementer

from mqtwisted.connection import Connection, HookRunner, MessageHandle, NoHooks, Reply
from mqtwisted.replies import PLUGIN_FAILURE
from mqtwisted.results import Attempt
from mqtwisted.smtp import outbound as ob
from mqtwisted.smtp import outevents as ev
from mqtwisted.smtp.outbody import NO_NEEDS, Needs, encode_body
from mqtwisted.smtp.outevents import SECURITY_LEVELS
from mqtwisted.smtp.outstate import Facts
from mqtwisted.smtp.wire import write_now

__all__ = [
    "SECURITY_LEVELS", "CertificateCheck", "EncryptOnly", "MessageSource", "Needs", "OutMessage", "OutboundFactory", "OutboundSender", "PrepareStep",
    "client_tls_options", "encode_body",
]

log = Logger()

#: bodies up to this size are written with their final dot in one go; larger ones are streamed
#: by a producer so the reply timer is reset while they upload.
WRITE_AT_ONCE = 256 * 1024


#: Checks the server's certificate chain (leaf first, ``cryptography`` certificates) after the TLS
#: handshake: None passes, else why not.  Delivery's TLS policy (:mod:`mqtwisted.tlspolicy`)
#: gives it; the protocol knows only this shape.
CertificateCheck = Callable[[list[Any]], "str | None"]


#: A message's last step before MAIL FROM: given the MIME as the hooks left it, the MIME to send or
#: the reply that refuses the message.  Delivery signs here; the protocol knows only this shape.
PrepareStep = Callable[[bytes], "Deferred[bytes | Reply]"]


class OutMessage:
    """One message for one recipient, as the session sends it; ``prepare``: see :data:`PrepareStep`.

    ``needs``: what MAIL FROM asked of every hop (BINARYMIME, SMTPUTF8, REQUIRETLS), kept or the
    message fails.  ``also``: messages for further recipients sent in the same transaction (one
    RCPT each): the same sender, MIME, ``needs`` and DSN ``ret``/``envid``; only their recipient, DSN ``notify``/``orcpt``,
    ``document`` and ``key`` are read.  Each gets its own outcome (``message_done``)."""

    def __init__(
        self,
        envelope: str,
        recipient: str,
        mime: bytes,
        dsn: Mapping[str, Any] | None = None,
        document: dict[str, Any] | None = None,
        key: Any = None,
        prepare: PrepareStep | None = None,
        needs: Needs = NO_NEEDS,
    ) -> None:
        self.envelope = envelope
        self.recipient = recipient
        self.mime = mime
        self.dsn = dsn or {}
        self.document = document if document is not None else {"envelope": envelope, "recipient": recipient}
        self.key = key
        self.prepare = prepare
        self.needs = needs
        self.also: list[OutMessage] = []


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


def tls_cipher(transport: Any) -> dict[str, Any] | None:
    """The negotiated cipher of a TLS transport, as MailerQ's ``cipher`` result field.

    ``getHandle()`` (ISystemHandle) of a TCP transport after ``startTLS`` is the pyOpenSSL
    connection; anything else (a plain socket, a test transport) has no cipher to report.
    """
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    if not hasattr(handle, "get_cipher_name"):
        return None
    name = handle.get_cipher_name()
    if name is None:
        return None
    return {"name": name, "bits": handle.get_cipher_bits(), "version": handle.get_protocol_version_name()}


def peer_chain(transport: Any) -> list[Any]:
    """The certificate chain the server sent, leaf first, as ``cryptography`` certificates."""
    try:
        handle = transport.getHandle()
    except Exception:
        return []
    get = getattr(handle, "get_peer_cert_chain", None)
    return list((get(as_cryptography=True) if get is not None else None) or [])


class OutboundSender(smtp.ESMTPSender):
    """One outbound connection; see the module docstring."""

    factory: OutboundFactory
    # Logging every line costs a copy per line; results carry the replies that matter.
    debug = False
    #: the session's rules and state (set by the factory)
    table: ob.Outbound
    handle: MessageHandle | None = None
    #: what ends the body being streamed (DATA's dot; nothing after BDAT chunks)
    body_end: bytes = b""
    #: reads of the socket so far: the table tells a surplus reply by the read that brought it
    reads: int = 0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.conn = Connection(inbound=False)

    # -- what the delivery code reads ------------------------------------------------------------

    @property
    def parked(self) -> bool:
        return self.table.parked

    @property
    def reported(self) -> int:
        """Messages with an outcome on this connection; 0 means the connection itself failed."""
        return self.table.reported

    def resume(self) -> bool:
        """Wake a parked session to send the source's next message; False when it cannot (it
        is not parked, or is closing), so the caller should find another connection."""
        if not self.table.parked:
            return False
        self.run(ev.Resume())
        return True

    def quit_idle(self) -> None:
        """End a parked session with QUIT (idle limit reached, or shutdown)."""
        self.run(ev.QuitIdle())

    # -- events in -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        # Not ESMTPClient.connectionMade: its reply dispatch is replaced by the table.
        self.setTimeout(self.timeout)
        # SMTP is lock-step: a small write (the end-of-data dot, a command) held back by Nagle
        # until the server's delayed ACK costs ~40 ms per message on loopback.
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        peer, host = self.transport.getPeer(), self.transport.getHost()
        conn = self.conn
        conn.remote_ip = getattr(peer, "host", "")
        conn.remote_port = getattr(peer, "port", 0)
        conn.local_ip = getattr(host, "host", "")
        conn.local_port = getattr(host, "port", 0)
        conn.transport = self.transport
        self.run(ev.Connected(conn.local_ip, conn.remote_ip, tls=ISSLTransport.providedBy(self.transport)))

    def dataReceived(self, data: bytes) -> None:
        self.reads += 1
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        self.run(ev.Line(line, self.reads))

    def timeoutConnection(self) -> None:
        self.run(ev.TimedOut())

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        description = "connection lost"
        if reason is not None and not reason.check(neterror.ConnectionDone):
            description = f"connection lost: {reason.getErrorMessage()}"
        self.run(ev.Lost(description))

    # -- actions out -----------------------------------------------------------------------------

    def run(self, event: ev.Event) -> None:
        """Feed ``event`` to the table and carry out what it says, in order."""
        for action in self.table.handle_event(event):
            _DOERS[type(action)](self, action)

    def do_Send(self, action: ev.Send) -> None:
        write_now(self.transport, action.data)

    def do_SendBody(self, action: ev.SendBody) -> None:
        body = action.data
        self.body_end = action.end
        if len(body) <= WRITE_AT_ONCE:
            # One write with the dot: one segment for a typical message, no producer overhead.
            write_now(self.transport, body + action.end)
            self.run(ev.BodySent())
            return
        d = FileSender().beginFileTransfer(io.BytesIO(body), self.transport, self.uploading)
        d.addCallbacks(self.body_written, self.body_failed)

    def uploading(self, chunk: bytes) -> bytes:
        # Chunks are already encoded; only keep the reply timer from firing on a slow upload.
        self.resetTimeout()
        return chunk

    def body_written(self, _: Any) -> None:
        if not self.table.closing:
            self.transport.write(self.body_end)
            self.run(ev.BodySent())

    def body_failed(self, failure: Any) -> None:
        self.run(ev.BodyFailed(failure.getErrorMessage()))

    def do_StartTLS(self, action: ev.StartTLS) -> None:
        # RFC 3207 §4.2: anything the server sent after its 220 came in plaintext and must not be
        # read as a reply inside TLS; Twisted keeps it and every later reply shifts by one.
        injected = self.clearLineBuffer()
        if injected:
            log.warn("discarded {n} plaintext bytes after 220 to STARTTLS from {peer}", n=len(injected), peer=self.conn.remote_ip)
        try:
            self.transport.startTLS(self.context)
        except Exception as e:
            log.failure("STARTTLS to {peer} failed", peer=self.conn.remote_ip)
            self.run(ev.TLSFailed(f"TLS negotiation failed: {e}"))

    def do_Secured(self, action: ev.Secured) -> None:
        cipher = tls_cipher(self.transport)
        self.table.facts.cipher = cipher
        self.conn.secure = True
        if cipher:
            self.conn.tls_cipher = cipher["name"]
            self.conn.tls_version = cipher["version"]
        check = self.factory.tls_check
        if check is not None:
            try:
                problem = check(peer_chain(self.transport))
            except Exception as e:
                log.failure("checking the certificate of {peer} failed", peer=self.conn.remote_ip)
                problem = f"certificate check failed: {e}"
            self.run(ev.CertificateChecked(problem))

    def do_RunHook(self, action: ev.RunHook) -> None:
        d = self.factory.hooks.run(action.name, self.conn, self.handle)
        d.addErrback(self.hook_failed, action.name)
        d.addCallback(lambda reply: self.run(ev.HookDone(reply)))

    def do_Prepare(self, action: ev.Prepare) -> None:
        d = defer.maybeDeferred(action.message.prepare, action.mime)
        d.addErrback(self.prepare_failed)
        d.addCallback(lambda result: self.run(ev.Prepared(result)))

    def prepare_failed(self, failure: Any) -> Reply:
        # The step should answer with a refusal; if it raises, the message is still not sent.
        log.failure("preparing a message for {peer} failed", failure, peer=self.conn.remote_ip)
        return Reply(451, f"Local error preparing the message: {failure.getErrorMessage()}", "4.3.0")

    def hook_failed(self, failure: Any, name: str) -> Reply:
        log.failure("outbound hook {name} failed", failure, name=name)
        return PLUGIN_FAILURE

    def do_Fetch(self, action: ev.Fetch) -> None:
        factory = self.factory
        message = factory.source.next_message(self)
        if message is None:
            self.run(ev.NothingToSend(park=factory.source_park(self)))
            return
        self.handle = MessageHandle(message.document, outgoing=True)
        self.run(ev.Offered(message, self.handle))

    def do_Report(self, action: ev.Report) -> None:
        self.factory.source.message_done(action.message, action.attempt)

    def do_GiveBack(self, action: ev.GiveBack) -> None:
        self.factory.source.give_back(action.message)

    def do_Timer(self, action: ev.Timer) -> None:
        self.setTimeout(self.factory.timeout if action.on else None)

    def do_Close(self, action: ev.Close) -> None:
        if action.abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def do_Ended(self, action: ev.Ended) -> None:
        try:
            self.factory.hooks.connection_closed(self.conn)
        except Exception:
            log.failure("hook runner connection_closed raised")
        self.factory.session_ended(self, action.fault)


#: action type -> the sender's ``do_`` method, looked up once
_DOERS = {cls: getattr(OutboundSender, "do_" + cls.__name__) for cls in typing.get_args(ev.Action)}


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
        tls_check: CertificateCheck | None = None,
        tls_policy: str = "",
        tls_mandatory: bool = False,
        requiretls: bool = False,
    ) -> None:
        if security not in SECURITY_LEVELS:
            raise ValueError(f"unknown security level {security!r}")
        self.done: Deferred[Attempt | None] = Deferred()
        contextFactory = None
        if security != "none" or tls_mandatory:
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
            # The table decides HELO fallback, TLS and AUTH; these only keep Twisted's own
            # defaults (require both) from describing a protocol that is never used.
            heloFallback=security not in ev.TLS_REQUIRED and not tls_mandatory and not username,
            requireAuthentication=bool(username),
            requireTransportSecurity=security in ev.TLS_REQUIRED or tls_mandatory,
            # None: Twisted would otherwise build a verifying context of its own.
            hostname=None,
        )
        self.domain = helo.encode("idna") if not helo.isascii() else helo.encode()
        self.source = source
        self.security = security
        #: checks the chain after the handshake (:data:`CertificateCheck`); the policy's name
        self.tls_check = tls_check
        self.tls_policy = tls_policy or security
        self.tls_mandatory = tls_mandatory
        #: carries REQUIRETLS messages (:class:`~.outevents.Policy`'s ``requiretls``)
        self.requiretls = requiretls
        self.max_messages = max(1, max_messages)
        self.hooks: HookRunner = hooks if hooks is not None else NoHooks()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.ended = False

    def buildProtocol(self, addr: Any) -> OutboundSender:
        p: OutboundSender = super().buildProtocol(addr)
        policy = ev.Policy(
            helo=self.domain,
            security=self.security,
            tls_available=p.context is not None,
            username=p.username,
            secret=p.secret,
            authenticators=tuple(p.authenticators),
            max_messages=self.max_messages,
            defines=self.hooks.defines,
            tls_policy=self.tls_policy,
            tls_mandatory=self.tls_mandatory,
            checks_certificate=self.tls_check is not None,
            requiretls=self.requiretls,
        )
        p.table = ob.Outbound(policy, Facts(self.clock.seconds, tls_policy=self.tls_policy))
        return p

    def source_park(self, session: OutboundSender) -> bool:
        """Ask the source whether ``session`` should wait for more work instead of quitting."""
        park = getattr(self.source, "park", None)
        return False if park is None else bool(park(session))

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        result = "timeout" if reason.check(neterror.TimeoutError) else "error"
        attempt = Attempt("connect", result, description=reason.getErrorMessage(), time=self.clock.seconds())
        self.end(None, attempt)

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        # The protocol reports through session_ended; nothing to retry here.
        pass

    def session_ended(self, session: OutboundSender, fault: Attempt | None) -> None:
        self.end(session, fault)

    def end(self, session: OutboundSender | None, fault: Attempt | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.source.session_ended(session, fault)  # type: ignore[arg-type]
        self.done.callback(fault)


@implementer(IOpenSSLClientConnectionCreator)
class EncryptOnly:
    """TLS that encrypts and names the server (SNI), leaving authentication to a
    :data:`CertificateCheck` after the handshake.  ``options``: a shared ``CertificateOptions``
    (one OpenSSL context for every connection)."""

    def __init__(self, options: Any, server_name: str | None) -> None:
        self.options = options
        self.server_name = server_name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        name = self.server_name
        if name and not isIPAddress(name) and not isIPv6Address(name):
            connection.set_tlsext_host_name(name.encode("idna"))
        return connection


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
