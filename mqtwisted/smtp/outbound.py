"""The outbound SMTP session as one transition table.  No I/O here: events in, actions out.

Rules (everything that decides what the client sends next, and what a reply means, is in this file):

1. Replies are matched to commands in the order the commands were sent; :data:`TABLE` says, for
   each command awaiting its reply, which codes are success and what success or failure does.
   A reply nothing is waiting for ends the session (``invalid``, temporary), except while parked,
   where it is taken as the server closing an idle connection and ends the session quietly; so
   does a reply that came in the same read as a command it would answer (it predates it).
   A line that is not a reply (no three-digit code) ends the session at once (``invalid``).
2. The greeting must be 220; any other ends the connection without QUIT (the server refused us).
   The first word of the greeting is the ``mta`` of every result.
3. EHLO first.  A refused EHLO falls back to HELO unless TLS is required or we must authenticate
   (both need ESMTP); then the EHLO reply itself is the fault.  A refused HELO ends with QUIT
   (it is never retried: Twisted's fallback would loop).
4. STARTTLS, per security level: ``none`` never; ``optional``/``opportunistic`` when offered;
   ``required``/``verified`` when offered, and the session ends (temporary, state ``starttls``)
   when it is not.  A refused STARTTLS ends the connection (temporary).  After its 220 every byte
   the server sent behind the 220 is discarded (it came in plaintext: reply injection) and EHLO
   is sent again inside TLS.  A failed handshake shows up as the connection lost in ``starttls``.
   A policy that checks certificates (``verified``, MTA-STS, DANE) has the adapter check the
   chain before AUTH or MAIL; a refusal ends the session with QUIT (temporary, ``starttls``).
   On a connection for REQUIRETLS messages a missing STARTTLS or a refused certificate is
   final instead (``5.7.10``, RFC 8689 §4.2.1), and so is a server not offering REQUIRETLS
   inside TLS (``5.7.30``): the messages are returned, never sent in clear or without it.
5. AUTH only when a user name is configured (a smarthost), with the first mechanism of ours the
   server offers (CRAM-MD5, LOGIN, PLAIN); a refused PLAIN is tried once more with an empty
   authorization identity.  No usable mechanism, a refusal or a malformed challenge ends the
   session with QUIT, temporary: bad smarthost credentials are the operator's to fix.
6. Per message: the ``mq_smtp_out_data`` hook, then the message's ``prepare`` step if it has one
   (signing: the MIME to send), either may refuse (state ``data``; no reply timer meanwhile), then
   ``[RSET] MAIL RCPT DATA``, in one write with PIPELINING (RFC 2920), one at a time without.
   A message that needs what the server lacks (``outbody.unmet``: BINARYMIME without CHUNKING
   and BINARYMIME ``5.6.3``, SMTPUTF8 ``5.6.7``, REQUIRETLS on a connection not made for it
   ``5.7.10``) fails for good before MAIL: never converted or mangled.
   A message may bring others for the same transaction (its ``also``: same sender and body,
   another recipient each): one RCPT per recipient, each with its own DSN parameters.
   A refused MAIL, DATA or pipelined RSET decides the attempt of every recipient, and without
   PIPELINING nothing more is sent after it; a refused RCPT decides its own recipient's alone,
   and the transaction goes on while another is accepted (every one refused: no DATA).
   A 354 after a pipelined refusal is answered by a lone dot (RFC 2920 §3.1), its reply ignored.
   A refused pipelined RSET is not the message's fault: temporary, and the session ends.
7. After 354 the body goes out with its dot; a reply before the dot is written cannot be matched
   and ends the session.  The reply to the dot decides the attempt; the ``mq_smtp_out_sent`` hook
   runs once the dot is written, and a refusal from it replaces the server's verdict.
   A server offering CHUNKING gets BDAT instead of DATA (RFC 3030, no dot-stuffing): the chunks
   pipelined right behind the envelope, or each after the previous reply without PIPELINING; a
   chunk's reply counts as a transaction command's, the reply to ``BDAT n LAST`` as the dot's
   (after a refusal of MAIL, RCPT or a chunk, that first refusal decides).
8. A 421 to any transaction command or to the dot: the message fails and the connection is
   closed without RSET or QUIT (the server is closing the channel).
9. RSET is sent only after a transaction that did not end with a reply to the dot (a completed
   one resets the server, RFC 5321 §4.1.1.4): pipelined in front of the next MAIL, or at once
   without PIPELINING so that a parked session is clean when it wakes.  A refused lock-step RSET
   ends the session with QUIT (temporary).
10. After each message: at ``max_messages`` QUIT; else the next message; with none the session
   parks when the source wants it (reply timer off; ``Resume`` or ``QuitIdle`` wake it), or QUITs.
   Until the server answers after a resume, a message lost with the connection is given back,
   not failed (the server may have closed the idle connection as we reused it).
11. No reply in time: the fault is ``timeout`` in the current state and the connection is
   aborted.  A lost connection fails the message in transaction, gives back one not yet sent,
   and ends the session exactly once.

The table knows neither Twisted nor the queue; :mod:`mqtwisted.smtp.client` is its adapter.
"""

from __future__ import annotations

import typing
from collections import deque
from collections.abc import Container

import attrs

from mqtwisted.connection import Reply
from mqtwisted.hooks import OUT_DATA, OUT_SENT
from mqtwisted.results import Attempt
from mqtwisted.smtp import outevents as ev
from mqtwisted.smtp.outauth import AuthSteps
from mqtwisted.smtp.outbody import NO_NEEDS, transaction_wire, unmet, wire
from mqtwisted.smtp.outending import EndingSteps
from mqtwisted.smtp.outstate import Await, Facts, Phase, Stage, Transaction, recipients

# -- the table -----------------------------------------------------------------------------------


@attrs.frozen
class Row:
    """One awaited reply: the state it is reported in, which codes succeed, what each outcome does."""

    state: str
    ok: Container[int]
    on_ok: str
    on_fail: str


_2XX = range(200, 300)
_ENDING = (Phase.CLOSING, Phase.CLOSED)
#: every code a reply line can carry (``int`` of three characters)
_ANY = range(-99, 1000)
_A = Await

#: awaited reply -> what it means.  ``on_ok``/``on_fail`` name methods of :class:`Outbound`.
TABLE: dict[Await, Row] = {
    _A.GREETING: Row("intro", (220,), "send_ehlo", "close_with_fault"),
    _A.EHLO: Row("ehlo", _2XX, "negotiate", "helo_or_fault"),
    _A.HELO: Row("helo", _2XX, "take_message", "quit_with_fault"),
    _A.STARTTLS: Row("starttls", (220,), "start_tls", "close_temporary"),
    _A.AUTH_PLAIN: Row("auth", (235,), "take_message", "plain_again"),
    _A.AUTH_PLAIN_AGAIN: Row("auth", (235,), "take_message", "quit_temporary"),
    _A.AUTH_START: Row("auth", (334,), "answer_challenge", "quit_temporary"),
    _A.AUTH_CHALLENGE: Row("auth", (235, 334), "challenge_or_done", "quit_temporary"),
    _A.AUTH_CANCELLED: Row("auth", _ANY, "malformed_challenge", "malformed_challenge"),
    _A.RSET: Row("rset", (250,), "take_message", "quit_temporary"),
    _A.TX_RSET: Row("rset", _2XX, "transaction_reply", "transaction_reply"),
    _A.MAIL: Row("mailfrom", _2XX, "transaction_reply", "transaction_reply"),
    _A.RCPT: Row("rcptto", _2XX, "recipient_reply", "recipient_reply"),
    _A.DATA: Row("data", (354,), "transaction_reply", "transaction_reply"),
    _A.LONE_DOT: Row("data", _ANY, "lone_dot_reply", "lone_dot_reply"),
    _A.DOT: Row("message", _ANY, "final_reply", "final_reply"),
    _A.BDAT: Row("message", (250,), "transaction_reply", "transaction_reply"),
    _A.BDAT_LAST: Row("message", _ANY, "final_reply", "final_reply"),
    _A.QUIT: Row("quit", _ANY, "leave", "leave"),
}


@attrs.define
class Outbound(AuthSteps, EndingSteps):
    """The state of one outbound session and the rules for moving it."""

    policy: ev.Policy
    facts: Facts
    phase: Phase = Phase.ACTIVE
    #: MailerQ's name for where the session is, as results report it
    state: str = "connect"
    tx: Transaction | None = None
    #: what each command on the wire waits for, oldest first
    awaiting: deque[Await] = attrs.field(factory=deque)
    #: the read whose line is handled; the read commands were last written in, and replies owed before
    read: int | None = None
    send_read: int | None = None
    owed_before_send: int = 0
    #: transaction commands not yet sent (servers without PIPELINING send one at a time)
    unsent: deque[tuple[Await, bytes]] = attrs.field(factory=deque)
    #: a transaction ended without a reply to its dot: the server needs RSET before the next
    needs_rset: bool = False
    #: resumed from idle and no reply since: a message lost with the connection goes back
    unconfirmed: bool = False
    tls: bool = False
    extensions: dict[bytes, bytes | None] = attrs.field(factory=dict)
    auth: ev.Authenticator | None = None
    reply_lines: list[bytes] = attrs.field(factory=list)
    #: messages with an outcome on this connection; 0 means the connection itself failed
    reported: int = 0
    fault: Attempt | None = None
    out: list[ev.Action] = attrs.field(factory=list)

    # -- the one entry point -------------------------------------------------------------------

    def handle_event(self, event: ev.Event) -> list[ev.Action]:
        """Apply ``event``; the actions to carry out, in order."""
        self.out = []
        if self.phase in _ENDING and not isinstance(event, ev.Lost):
            # Nothing the server says matters any more; a message handed over meanwhile goes back.
            if isinstance(event, ev.Offered):
                self.out += [ev.GiveBack(m) for m in recipients(event.message)]
            return self.out
        _HANDLERS[type(event)](self, event)
        return self.out

    @property
    def parked(self) -> bool:
        return self.phase is Phase.PARKED

    @property
    def closing(self) -> bool:
        return self.phase in _ENDING

    # -- events ----------------------------------------------------------------------------------

    def on_Connected(self, event: ev.Connected) -> None:
        self.facts.local_ip, self.facts.remote_ip, self.tls = event.local_ip, event.remote_ip, event.tls
        self.state = "intro"
        self.expect(Await.GREETING)

    def on_Line(self, event: ev.Line) -> None:
        self.read = event.read
        try:
            self.line(event.data)
        finally:
            self.read = None

    def line(self, line: bytes) -> None:
        # Twisted's SMTPClient reads replies this way; the client fuzzer's oracle does too.
        try:
            code = int(line[:3])
        except ValueError:
            self.protocol_error(f"Invalid response from SMTP server: {line!r}")
            return
        if line[:1] == b"0":
            return  # RFC 821's informational replies: nothing to act on
        self.reply_lines.append(line[4:])
        if line[3:4] == b"-":
            return
        resp, self.reply_lines = b"\n".join(self.reply_lines), []
        self.reply(code, resp)

    def reply(self, code: int, resp: bytes) -> None:
        self.unconfirmed = False
        if self.read is not None and self.read == self.send_read:
            # Lines of the read during which commands were written predate them: one more than
            # was owed before is a surplus reply, else taken for the next command's (BDAT's 250).
            if not self.owed_before_send:
                self.fault = self.facts.reply_attempt(self.state, code, resp, result="invalid", permanent=False)
                self.fault.description = f"reply before its command was sent: {self.fault.description}"
                self.close()
                return
            self.owed_before_send -= 1
        if self.awaiting:
            row = TABLE[self.awaiting.popleft()]
            getattr(self, row.on_ok if code in row.ok else row.on_fail)(row, code, resp)
        elif self.phase is Phase.PARKED:
            # Typically "421 idle timeout" before the server closes: leave quietly, no fault.
            self.leave()
        else:
            self.fault = self.facts.reply_attempt(self.state, code, resp, result="invalid", permanent=False)
            self.close()

    def on_Offered(self, event: ev.Offered) -> None:
        self.tx = Transaction(event.message, event.handle)
        self.facts.messages += 1
        if self.policy.defines(OUT_DATA):
            # Before MAIL FROM, so the hook can still change the wire.
            self.out += [ev.Timer(False), ev.RunHook(OUT_DATA)]
        else:
            self.prepare(timer_off=False)

    def on_NothingToSend(self, event: ev.NothingToSend) -> None:
        if event.park:
            self.phase = Phase.PARKED
            self.state = "idle"
            self.out.append(ev.Timer(False))
        else:
            self.quit()

    def on_HookDone(self, event: ev.HookDone) -> None:
        tx, reply = self.tx, event.reply
        if tx is None:
            return
        if tx.stage is Stage.HOOK:
            if reply is not None and reply.refuses:
                self.out.append(ev.Timer(True))
                self.refuse_before_mail(reply)
            else:
                self.prepare(timer_off=True)
        elif tx.stage is Stage.SENT_HOOK:
            tx.stage, tx.hook_reply = Stage.SENT, reply
            if tx.held_reply is not None:
                self.finish_message(*tx.held_reply)

    def on_Prepared(self, event: ev.Prepared) -> None:
        tx = self.tx
        if tx is None or tx.stage is not Stage.PREPARE:
            return
        self.out.append(ev.Timer(True))
        if isinstance(event.result, bytes):
            tx.mime = event.result
            self.begin_transaction()
        else:
            self.refuse_before_mail(event.result)

    def on_BodySent(self, event: ev.BodySent) -> None:
        tx = self.tx
        if tx is None or tx.stage is not Stage.BODY:
            return
        if self.policy.defines(OUT_SENT):
            tx.stage = Stage.SENT_HOOK
            self.out.append(ev.RunHook(OUT_SENT))
        else:
            tx.stage = Stage.SENT

    def on_BodyFailed(self, event: ev.BodyFailed) -> None:
        self.fault = self.facts.attempt("message", "lost", description=event.description)
        self.close()

    def on_TLSFailed(self, event: ev.TLSFailed) -> None:
        self.fault = self.facts.reply_attempt("starttls", 451, event.description.encode(), permanent=False)
        self.close()

    def on_TimedOut(self, event: ev.TimedOut) -> None:
        self.fault = self.facts.attempt(self.state, "timeout", description="no reply from server in time")
        self.close(abort=True)

    def on_Resume(self, event: ev.Resume) -> None:
        if self.phase is Phase.PARKED:
            self.phase = Phase.ACTIVE
            self.unconfirmed = True
            self.out.append(ev.Timer(True))
            self.take_message()

    def on_QuitIdle(self, event: ev.QuitIdle) -> None:
        if self.phase is Phase.PARKED:
            self.out.append(ev.Timer(True))
            self.quit()

    def on_Lost(self, event: ev.Lost) -> None:
        if self.phase is Phase.CLOSED:
            return
        quiet = self.phase in (Phase.QUITTING, Phase.CLOSING)
        self.phase = Phase.CLOSED
        tx, self.tx = self.tx, None
        fault = self.fault
        if fault is None and not quiet:
            fault = self.facts.attempt(self.state, "lost", description=event.description)
        if tx is not None:
            if tx.on_wire and not self.unconfirmed:
                self.tx = tx
                self.report(fault or self.facts.attempt(self.state, "lost", description="connection lost"))
            else:
                self.out += [ev.GiveBack(m) for m in tx.rcpts]
        self.out.append(ev.Ended(fault))

    # -- greeting, EHLO, STARTTLS, AUTH ----------------------------------------------------------

    def expect(self, *awaited: Await) -> None:
        """Commands being written wait for these replies (see :meth:`reply`)."""
        if self.read is not None and self.read != self.send_read:
            self.send_read, self.owed_before_send = self.read, len(self.awaiting)
        self.awaiting.extend(awaited)

    def send(self, awaited: Await, line: bytes) -> None:
        self.expect(awaited)
        self.out.append(ev.Send(line + b"\r\n"))

    def send_ehlo(self, row: Row, code: int, resp: bytes) -> None:
        if self.facts.mta is None:
            words = resp.split(None, 1)
            self.facts.mta = words[0].decode("ascii", "replace") if words else ""
        self.state = "ehlo"
        self.send(Await.EHLO, b"EHLO " + self.policy.helo)

    def negotiate(self, row: Row, code: int, resp: bytes) -> None:
        self.extensions = {}
        for line in resp.splitlines()[1:]:
            word, _, rest = line.partition(b" ")
            self.extensions[word.upper()] = rest or None
        self.facts.dsn = b"DSN" in self.extensions
        if self.tls:
            # The adapter reads the cipher and, when the policy checks certificates, reports
            # CertificateChecked before anything more is sent.
            self.out.append(ev.Secured())
            if not self.policy.checks_certificate:
                self.authenticate()
            return
        offered = b"STARTTLS" in self.extensions
        if self.policy.requires_tls and not offered:
            self.tls_refused(f"server does not offer STARTTLS and the TLS policy ({self.policy.tls_name}) requires it")
        elif offered and self.policy.tls_available:
            self.state = "starttls"
            self.send(Await.STARTTLS, b"STARTTLS")
        else:
            self.authenticate()

    def on_CertificateChecked(self, event: ev.CertificateChecked) -> None:
        if event.problem is not None:
            self.tls_refused(event.problem)
        elif self.policy.requiretls and b"REQUIRETLS" not in self.extensions:
            self.tls_refused("REQUIRETLS support required: the receiver does not offer REQUIRETLS", "5.7.30")
        else:
            self.authenticate()

    def helo_or_fault(self, row: Row, code: int, resp: bytes) -> None:
        if self.policy.requires_tls or self.policy.username:
            # EHLO refused and HELO not allowed (TLS/AUTH need ESMTP): the EHLO reply is the fault.
            self.fault = self.facts.reply_attempt("ehlo", code, resp, result="invalid" if code < 400 else None)
            self.close()
            return
        self.state = "helo"
        self.send(Await.HELO, b"HELO " + self.policy.helo)

    def start_tls(self, row: Row, code: int, resp: bytes) -> None:
        self.tls = True
        self.out.append(ev.StartTLS())
        self.send(Await.EHLO, b"EHLO " + self.policy.helo)

    # -- the message loop ------------------------------------------------------------------------

    def take_message(self, row: Row | None = None, code: int = 0, resp: bytes = b"") -> None:
        if self.phase is not Phase.ACTIVE:
            return
        if self.facts.messages < self.policy.max_messages:
            self.out.append(ev.Fetch())
        else:
            self.quit()

    def prepare(self, timer_off: bool) -> None:
        """The message's prepare step, if it has one, on the MIME the hooks left; else MAIL FROM."""
        tx = self.tx
        assert tx is not None
        if getattr(tx.message, "prepare", None) is None:
            if timer_off:
                self.out.append(ev.Timer(True))
            self.begin_transaction()
            return
        tx.stage = Stage.PREPARE
        if not timer_off:
            self.out.append(ev.Timer(False))
        self.out.append(ev.Prepare(tx.message, wire(tx.message, tx.handle)[2]))

    def refuse_before_mail(self, reply: Reply) -> None:
        self.report(self.facts.attempt("data", "error", code=reply.code, status=reply.enhanced, description=reply.text))
        self.after_message()

    def begin_transaction(self) -> None:
        tx = self.tx
        assert tx is not None
        envelope, recipient, mime = wire(tx.message, tx.handle)
        if tx.mime is not None:
            mime = tx.mime
        dsn, needs = tx.message.dsn, getattr(tx.message, "needs", NO_NEEDS)
        rcpts = [(recipient, dsn), *((m.recipient, m.dsn) for m in tx.rcpts[1:])]
        addresses = "".join(r for r, _ in rcpts)
        verified = self.tls and self.policy.requiretls and self.policy.checks_certificate
        problem = unmet(needs, envelope + addresses, self.extensions, verified)
        if problem is not None:
            # Never sent without what it needs (converted, mangled, in plaintext): returned.
            self.report(self.facts.attempt("mailfrom", "error", status=problem.status, permanent=True,
                                           description=problem.description))
            self.after_message()
            return
        tx.body, chunks, commands = transaction_wire(envelope, rcpts, mime, needs, self.extensions)
        tx.chunks.extend(chunks)
        if self.needs_rset:
            commands.insert(0, (Await.TX_RSET, b"RSET"))
        self.needs_rset = False
        tx.stage = Stage.ENVELOPE
        if b"PIPELINING" in self.extensions:
            # The whole envelope in one write, so one segment (RFC 2920), BDAT chunks in the same.
            self.expect(*(awaited for awaited, _ in commands))
            self.state = TABLE[commands[0][0]].state
            envelope_lines = b"".join(line + b"\r\n" for _, line in commands)
            if chunks:
                self.send_chunks(pipelined=True, before=envelope_lines)
            else:
                self.out.append(ev.Send(envelope_lines))
        else:
            self.unsent.extend(commands)
            self.send_next()

    def send_chunks(self, pipelined: bool, before: bytes = b"") -> None:
        """BDAT: every chunk at once (pipelined, behind the commands ``before``), else the next
        one.  Writing the last ends the body."""
        tx = self.tx
        assert tx is not None
        n = len(tx.chunks) if pipelined else 1
        data = before + b"".join(tx.chunks.popleft() for _ in range(n))
        self.expect(*[Await.BDAT] * n)
        tx.stage, tx.body = Stage.BODY, b""
        if not pipelined:
            self.state = "message"
        if tx.chunks:
            self.out.append(ev.Send(data))
        else:
            self.awaiting[-1] = Await.BDAT_LAST
            self.out.append(ev.SendBody(data, end=b""))

    def send_next(self) -> None:
        awaited, line = self.unsent.popleft()
        self.state = TABLE[awaited].state
        self.send(awaited, line)

    def transaction_reply(self, row: Row, code: int, resp: bytes) -> None:
        """The reply to the oldest transaction command still waiting for one."""
        tx = self.tx
        self.state = row.state
        if tx is None:  # the transaction already failed (a protocol error): nothing to decide
            return
        if code == 421:
            tx.error = tx.error or self.facts.reply_attempt(row.state, code, resp)
            self.fail_transaction()
            self.leave()
            return
        if code not in row.ok and tx.error is None:
            # A refused pipelined RSET is not the message's fault: try it elsewhere.
            tx.error = self.facts.reply_attempt(row.state, code, resp, permanent=False if row.state == "rset" else None)
            self.unsent.clear()
        if row.state == "data" and code == 354:
            if tx.error is not None:
                # Pipelined: MAIL or RCPT failed but the server still wants the data.
                self.send(Await.LONE_DOT, b".")
                return
            self.state = "message"
            tx.stage = Stage.BODY
            self.expect(Await.DOT)
            body, tx.body = tx.body, b""
            self.out.append(ev.SendBody(body))
        elif self.unsent:
            self.send_next()
        elif not self.awaiting:
            self.transaction_done()

    def recipient_reply(self, row: Row, code: int, resp: bytes) -> None:
        """A refused RCPT is that recipient's outcome alone; the transaction fails when every
        recipient is refused (then each is reported with its own refusal)."""
        tx = self.tx
        if tx is None or code == 421 or tx.error is not None:
            self.transaction_reply(row, code, resp)
            return
        if code not in row.ok:
            tx.refusals[tx.answered] = self.facts.reply_attempt(row.state, code, resp)
        tx.answered += 1
        if tx.answered < len(tx.rcpts) or len(tx.refusals) < tx.answered:
            code = 250  # another recipient is or may yet be accepted: the transaction goes on
        # else this is the last refusal of all, which fails the transaction as it is (each
        # recipient is still reported with its own)
        self.transaction_reply(row, code, resp)

    def lone_dot_reply(self, row: Row, code: int, resp: bytes) -> None:
        self.transaction_done()

    def transaction_done(self) -> None:
        tx = self.tx
        if tx is None:
            return
        if tx.error is None:
            if tx.chunks:  # lock-step BDAT: the envelope or the last chunk was accepted
                self.send_chunks(pipelined=False)
            return
        leave = tx.error.state == "rset"
        self.fail_transaction()
        if leave:
            self.quit()
        else:
            self.after_message()

    def fail_transaction(self) -> None:
        assert self.tx is not None and self.tx.error is not None
        self.needs_rset = True
        self.unsent.clear()
        self.report(self.tx.error)

    def final_reply(self, row: Row, code: int, resp: bytes) -> None:
        tx = self.tx
        if tx is None:
            return
        if tx.stage is Stage.BODY:
            # The server answered in the middle of the body: the session cannot be resynchronised.
            self.fault = self.facts.reply_attempt("message", code, resp)
            self.report(self.fault)
            self.close()
        elif tx.stage is Stage.SENT_HOOK:
            # The reply overtook the plugin; hold it until the plugin is done.
            tx.held_reply = (code, resp)
        else:
            self.finish_message(code, resp)

    def finish_message(self, code: int, resp: bytes) -> None:
        assert self.tx is not None
        if self.tx.error is not None:
            # Pipelined BDAT goes out whatever MAIL, RCPT or a chunk got: the first refusal decides.
            self.transaction_done()
            return
        reply = self.tx.hook_reply
        if reply is not None and reply.refuses:
            attempt = self.facts.attempt("message", "error", code=reply.code, status=reply.enhanced, description=reply.text)
        else:
            attempt = self.facts.reply_attempt("message", code, resp)
        self.report(attempt)
        if code == 421:
            self.leave()
        else:
            self.after_message()

    def after_message(self) -> None:
        if self.phase is not Phase.ACTIVE:
            return
        if self.facts.messages >= self.policy.max_messages:
            self.quit()
        elif self.needs_rset and b"PIPELINING" not in self.extensions:
            # Lock-step server: reset now, so a parked session is clean when woken.
            self.needs_rset = False
            self.state = "rset"
            self.send(Await.RSET, b"RSET")
        else:
            self.take_message()

    def report(self, attempt: Attempt) -> None:
        """Every recipient's outcome: its own refusal, else ``attempt`` (the first; a copy each after)."""
        assert self.tx is not None
        tx, self.tx = self.tx, None
        self.reported += len(tx.rcpts)
        for i, message in enumerate(tx.rcpts):
            own = tx.refusals.get(i)
            if own is None:
                own, attempt = attempt, attrs.evolve(attempt) if i + 1 < len(tx.rcpts) else attempt
            self.out.append(ev.Report(message, own))


#: event type -> its ``on_`` method, looked up once (an event per reply line adds up)
_HANDLERS = {cls: getattr(Outbound, "on_" + cls.__name__) for cls in typing.get_args(ev.Event)}
