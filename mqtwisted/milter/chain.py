"""The milters of ``--milters``, asked in order at each step of an SMTP session.

One :class:`ChainSession` per SMTP connection holds one connection per milter (opened, and the
options negotiated, when the client connects).  At each step the milters are asked one after
another; the first refusal is the verdict and later milters are not asked.  The message itself
(DATA, headers, end of headers, body chunks, end of message) goes to each milter in turn, and
each one's changes are made before the next one sees the message, as Postfix does.

What a milter answers (libmilter's meaning):

* continue: ask the next one; accept: this milter is done with the connection (at CONNECT or
  HELO) or the message (later); reject, tempfail or a reply code refuse the command (at RCPT that
  recipient only; at CONNECT the connection); discard: the message is answered 250 and dropped
  (at CONNECT or HELO, where there is no message, it is nonsense); skip: no more body chunks for
  it (only after a body chunk, and only when SMFIP_SKIP was agreed).
* At the end of the message, before its answer: header edits, change of sender, recipients added
  or deleted, a new body, quarantine (the message goes to the ``refused`` queue with the reason).

A milter that cannot be reached, closes, says nothing for ``milter-timeout`` seconds, or sends
what the protocol does not allow (a modification it did not negotiate included) is dropped for
the rest of the session, and its verdict on each MAIL, RCPT and end of DATA from then on is
``milter-default-action``: ``tempfail`` (451 4.7.1), ``reject`` (550 5.7.1) or ``accept`` (as if
it were not configured).  The session itself goes on.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from mqtwisted.connection import Connection, Reply
from mqtwisted.envelope import Body, Envelope, Recipient
from mqtwisted.filtering import Filtered
from mqtwisted.milter import edits, macros
from mqtwisted.milter import protocol as mp
from mqtwisted.milter.client import MilterConnection, MilterFailed, connect
from mqtwisted.reactors import LazyReactor

log = Logger()

DEFAULT_ACTIONS = ("tempfail", "accept", "reject")
TEMPFAIL = Reply(451, "Service unavailable - try again later", "4.7.1")
REJECT = Reply(550, "Command rejected", "5.7.1")
CONNECT_TEMPFAIL = Reply(421, "Service unavailable - try again later", "4.7.1")
CONNECT_REJECT = Reply(554, "Access denied", "5.7.1")

#: Which action a modification needs to have been negotiated.
_A = mp.Action
NEEDS: dict[type, int] = {
    mp.AddHeader: _A.ADDHDRS.value, mp.InsertHeader: _A.ADDHDRS.value, mp.ChangeHeader: _A.CHGHDRS.value,
    mp.ChangeFrom: _A.CHGFROM.value, mp.AddRecipient: _A.ADDRCPT.value | _A.ADDRCPT_PAR.value,
    mp.DeleteRecipient: _A.DELRCPT.value, mp.ReplaceBody: _A.CHGBODY.value, mp.Quarantine: _A.QUARANTINE.value,
}

_ids = itertools.count(1)


class MilterChain:
    """The milters every inbound session asks (:class:`mqtwisted.filtering.Filters`).  Pickles:
    configuration only."""

    reactor = LazyReactor()

    def __init__(self, specs: list[str], timeout: float, default: str, hostname: str,
                 reactor: Any = None) -> None:
        self.specs = list(specs)
        self.timeout = timeout
        self.default = default
        self.hostname = hostname
        self._reactor = reactor

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reactor": None}

    def open(self, conn: Connection) -> ChainSession | None:
        return ChainSession(self, conn) if self.specs else None

    def default_reply(self) -> Reply | None:
        return {"tempfail": TEMPFAIL, "reject": REJECT}.get(self.default)


@attrs.define(eq=False)
class Link:
    """One milter within one session."""

    spec: str
    conn: MilterConnection | None = None
    neg: mp.OptNeg | None = None
    #: the negotiated steps and actions as plain ints (asked at every command)
    steps: int = 0
    actions: int = 0
    leading_space: bool = False
    failed: bool = False
    #: accepted the connection: asked nothing more
    done: bool = False
    #: accepted, refused or discarded the current message: asked nothing more about it
    done_message: bool = False
    #: was told of a MAIL whose message it has not seen the end of (an ABORT is owed)
    in_message: bool = False

    def negotiated(self, neg: mp.OptNeg) -> None:
        self.neg, self.steps, self.actions = neg, int(neg.steps), int(neg.actions)
        self.leading_space = bool(self.steps & mp.Step.HDR_LEADSPC.value)

    def wants(self, cmd: bytes) -> bool:
        flag = mp.NOT_WANTED.get(cmd)
        return flag is None or not self.steps & flag


class _Stop(Exception):
    """A milter's final verdict on the message in progress."""

    def __init__(self, reply: Reply | None) -> None:
        self.reply = reply  # None: discard


class ChainSession:
    """The milters of one SMTP connection (:class:`mqtwisted.filtering.FilterSession`)."""

    def __init__(self, chain: MilterChain, conn: Connection) -> None:
        self.chain = chain
        self.conn = conn
        self.links = [Link(spec) for spec in chain.specs]
        self.known: dict[str, str | None] = {}
        self.discard = False
        self.closed = False

    # -- the steps -------------------------------------------------------------------------------

    def connect(self) -> defer.Deferred[Reply | None]:
        return defer.ensureDeferred(self._connect())

    def helo(self, name: str) -> defer.Deferred[Reply | None]:
        self.known.update(macros.connection_macros(self.conn, self.chain.hostname))
        return defer.ensureDeferred(self._step(mp.HELO, mp.encode_helo(name), message=False))

    def mail(self, sender: str, params: dict[str, str | None]) -> defer.Deferred[Reply | None]:
        for link in self.links:
            if link.in_message and not link.failed and link.conn is not None:
                link.conn.send(mp.encode_simple(mp.ABORT))
            link.in_message = link.done_message = False
        self.discard = False
        self.known.update(macros.connection_macros(self.conn, self.chain.hostname))
        self.known["i"] = f"{os.getpid():X}{self.conn.id:X}{next(_ids):05X}"
        self.known.update(macros.address_macros("mail", sender, False))
        return defer.ensureDeferred(
            self._step(mp.MAIL, mp.encode_mail(sender, mp.esmtp_args(params)), message=True, starts=True))

    def rcpt(self, recipient: Recipient) -> defer.Deferred[Reply | None]:
        self.known.update(macros.address_macros("rcpt", recipient.address, recipient.local))
        data = mp.encode_rcpt(recipient.address, mp.esmtp_args(recipient.params))
        return defer.ensureDeferred(self._step(mp.RCPT, data, message=True))

    def message(self, envelope: Envelope, body: Body,
                is_local: Callable[[str], bool]) -> defer.Deferred[Reply | Filtered]:
        return defer.ensureDeferred(self._message(envelope, body, is_local))

    def close(self) -> None:
        self.closed = True
        for link in self.links:
            if link.conn is not None:
                link.conn.quit()

    # -- asking one milter -----------------------------------------------------------------------

    def _fail(self, link: Link, why: Any) -> None:
        if not link.failed and not self.closed:  # a client gone mid-step is no milter's fault
            log.warn("milter {spec}: {why}; default action {action} for the rest of session {id}",
                     spec=link.spec, why=str(why), action=self.chain.default, id=self.conn.id)
        link.failed = True
        if link.conn is not None and not link.conn.lost:
            link.conn.transport.abortConnection()

    async def _ask(self, link: Link, cmd: bytes, data: bytes, final_only: bool = True) -> list[mp.Response]:
        """Tell ``link`` the macros of ``cmd`` and ``cmd``; its answers (a lone Continue when it
        waived its reply).  MilterFailed when it cannot be used any more."""
        assert link.conn is not None and link.neg is not None
        values = macros.for_stage(cmd, self.known, link.neg.macros.get(cmd))
        if values:
            link.conn.send(mp.encode_macros(cmd, values))
        waived = mp.NO_REPLY.get(cmd)
        if waived is not None and link.steps & waived:
            link.conn.send(data)
            return [mp.Continue()]
        answers = await link.conn.ask(data)
        if final_only and len(answers) > 1:
            raise MilterFailed(f"modification {type(answers[0]).__name__} before the end of the message")
        final = answers[-1]
        if isinstance(final, mp.Skip) and not (cmd == mp.BODY and link.steps & mp.Step.SKIP.value):
            raise MilterFailed("skip outside the body")
        if isinstance(final, mp.Discard) and cmd in (mp.CONNECT, mp.HELO):
            raise MilterFailed("discard outside a message")
        return answers

    def _verdict(self, link: Link, final: mp.Final, cmd: bytes) -> Reply | None | bool:
        """What ``final`` means for the step: a Reply refuses, False discards, None goes on."""
        at_connect = cmd == mp.CONNECT
        if isinstance(final, mp.Accept):
            if cmd in (mp.CONNECT, mp.HELO):
                link.done = True
            else:
                link.done_message = True
            return None
        if isinstance(final, (mp.Continue, mp.Skip)):
            return None
        if isinstance(final, mp.Discard):
            return False
        if isinstance(final, mp.Reject):
            return CONNECT_REJECT if at_connect else REJECT
        if isinstance(final, (mp.Tempfail, mp.ConnFail)):
            return CONNECT_TEMPFAIL if at_connect else TEMPFAIL
        assert isinstance(final, mp.ReplyCode)
        return Reply(final.code, "\n".join(final.lines) or "Command rejected", final.enhanced)

    # -- connect and the envelope steps ----------------------------------------------------------

    async def _connect(self) -> Reply | None:
        self.known.update(macros.connection_macros(self.conn, self.chain.hostname))
        opened = await defer.DeferredList(
            [connect(self.chain.reactor, link.spec, self.chain.timeout) for link in self.links],
            consumeErrors=True)
        for link, (ok, result) in zip(self.links, opened, strict=True):
            if not ok:
                self._fail(link, result.value)
            elif self.closed:
                result.quit()
            else:
                link.conn = result
        for link in self.links:
            if link.conn is None or link.failed:
                continue
            try:
                link.negotiated(await link.conn.negotiate(mp.encode_optneg()))
            except (MilterFailed, mp.MilterProtocolError) as e:
                self._fail(link, e)
        ip = self.conn.remote_ip
        family = mp.FAMILY_INET6 if ":" in ip else mp.FAMILY_INET if ip else mp.FAMILY_UNKNOWN
        data = mp.encode_connect(self.known["{client_name}"] or "unknown", family, self.conn.remote_port, ip)
        return await self._step(mp.CONNECT, data, message=False)

    async def _step(self, cmd: bytes, data: bytes, message: bool, starts: bool = False) -> Reply | None:
        for link in self.links:
            if link.failed:
                if message:
                    reply = self.chain.default_reply()
                    if reply is not None:
                        return reply
                continue
            if link.done or (message and link.done_message) or link.neg is None or not link.wants(cmd):
                if starts and link.neg is not None and not link.done:
                    link.in_message = True  # it will see the end (or an ABORT) of this message
                continue
            try:
                answers = await self._ask(link, cmd, data)
            except (MilterFailed, mp.MilterProtocolError) as e:
                self._fail(link, e)
                if message and self.chain.default_reply() is not None:
                    return self.chain.default_reply()
                continue
            verdict = self._verdict(link, answers[-1], cmd)
            if starts:
                link.in_message = verdict is None
            if verdict is False:
                self.discard = True
                for other in self.links:
                    other.done_message = True
                return None
            if verdict is not None:
                return verdict
        return None

    # -- the message -----------------------------------------------------------------------------

    async def _message(self, envelope: Envelope, body: Body, is_local: Callable[[str], bool]) -> Reply | Filtered:
        msg = edits.parse(body.read())
        state = _Envelope(envelope.sender, dict(envelope.params), list(envelope.recipients))
        try:
            for link in self.links:
                if link.failed:
                    reply = self.chain.default_reply()
                    if reply is not None:
                        raise _Stop(reply)
                    continue
                if self.discard:
                    raise _Stop(None)
                if link.done or link.done_message or link.neg is None:
                    continue
                try:
                    await self._content(link, msg, state, is_local)
                except (MilterFailed, mp.MilterProtocolError) as e:
                    self._fail(link, e)
                    reply = self.chain.default_reply()
                    if reply is not None:
                        raise _Stop(reply) from None
        except _Stop as stop:
            if stop.reply is not None:
                return stop.reply
            return Filtered(envelope, body, discard=True)
        if self.discard or not state.recipients:
            return Filtered(envelope, body, discard=True)
        if msg.original is None:
            data = msg.to_bytes()
            body = Body(data=data, size=len(data))
        return Filtered(Envelope(state.sender, state.params, state.recipients, envelope.received,
                                 quarantine=state.quarantine or envelope.quarantine), body)

    async def _content(self, link: Link, msg: edits.Message, state: _Envelope,
                       is_local: Callable[[str], bool]) -> None:
        """One milter's pass over the message: DATA, headers, EOH, body, end of message."""

        async def step(cmd: bytes, data: bytes) -> bool:
            """True to go on with this milter; raises _Stop on its final verdict."""
            if not link.wants(cmd):
                return True
            answers = await self._ask(link, cmd, data)
            verdict = self._verdict(link, answers[-1], cmd)
            if verdict is False:
                self.discard = True
                raise _Stop(None)
            if verdict is not None:
                link.done_message = True
                raise _Stop(verdict)
            return not link.done_message and not isinstance(answers[-1], mp.Skip)

        if not await step(mp.DATA, mp.encode_simple(mp.DATA)):
            return
        for name, raw in list(msg.headers):
            if not await step(mp.HEADER, mp.encode_header(name, edits.milter_value(raw, link.leading_space))):
                return
        if not await step(mp.EOH, mp.encode_simple(mp.EOH)):
            return
        if link.wants(mp.BODY):
            for chunk in edits.chunks(msg.body):
                if not await step(mp.BODY, mp.encode_body(chunk)):
                    if link.done_message:
                        return
                    break
        values = macros.for_stage(mp.BODYEOB, self.known, link.neg.macros.get(mp.BODYEOB) if link.neg else None)
        assert link.conn is not None
        if values:
            link.conn.send(mp.encode_macros(mp.BODYEOB, values))
        answers = await link.conn.ask(mp.encode_simple(mp.BODYEOB))
        link.in_message = False
        *changes, final = answers
        if isinstance(final, mp.Skip):
            raise MilterFailed("skip at the end of the message")
        verdict = self._verdict(link, final, mp.BODYEOB)  # type: ignore[arg-type]
        link.done_message = True
        if verdict is False:
            self.discard = True
            raise _Stop(None)
        if verdict is not None:
            raise _Stop(verdict)
        self._apply(link, changes, msg, state, is_local)

    def _apply(self, link: Link, changes: list[mp.Response], msg: edits.Message, state: _Envelope,
               is_local: Callable[[str], bool]) -> None:
        assert link.neg is not None
        for change in changes:
            need = NEEDS.get(type(change))
            if need is None or not link.actions & need:
                raise MilterFailed(f"{type(change).__name__} without having negotiated it")
        new_body: list[bytes] = []
        for change in changes:
            if isinstance(change, (mp.AddHeader, mp.InsertHeader, mp.ChangeHeader)):
                edits.apply_header_edit(msg, change, link.leading_space)
            elif isinstance(change, mp.ReplaceBody):
                new_body.append(change.chunk)
            elif isinstance(change, mp.Quarantine):
                state.quarantine = change.reason or "quarantined by a milter"
            elif isinstance(change, mp.ChangeFrom):
                state.sender, state.params = change.address, _params(change.args)
            elif isinstance(change, mp.AddRecipient):
                if not any(r.address.lower() == change.address.lower() for r in state.recipients):
                    state.recipients.append(Recipient(change.address, _params(change.args), is_local(change.address)))
            elif isinstance(change, mp.DeleteRecipient):
                state.recipients = [r for r in state.recipients if r.address.lower() != change.address.lower()]
        if new_body:
            edits.replace_body(msg, b"".join(new_body))
        log.debug("milter {spec}: {n} change(s)", spec=link.spec, n=len(changes))


@attrs.define
class _Envelope:
    sender: str
    params: dict[str, str | None]
    recipients: list[Recipient]
    quarantine: str | None = None


def _params(args: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        out[key.upper()] = value if eq else None
    return out
