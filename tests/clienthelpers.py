"""In-memory outbound sessions for the client tests: our sender or plain twisted.mail's, joined
to a scripted server through twisted.test.iosim."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.test import iosim

from mqtwisted.results import Attempt
from mqtwisted.smtp.client import OutboundFactory, OutboundSender, OutMessage
from tests.smtppeers import ScriptedFactory


class ListSource:
    """A MessageSource over a fixed list; records every outcome."""

    def __init__(self, messages: list[OutMessage]) -> None:
        self.pending = list(messages)
        self.done: list[tuple[OutMessage, Attempt]] = []
        self.given_back: list[OutMessage] = []
        self.ended: list[tuple[Any, Attempt | None]] = []

    def next_message(self, session: OutboundSender) -> OutMessage | None:
        return self.pending.pop(0) if self.pending else None

    def has_more(self, session: OutboundSender) -> bool:
        return bool(self.pending)

    def give_back(self, message: OutMessage) -> None:
        self.given_back.append(message)

    def message_done(self, message: OutMessage, attempt: Attempt) -> None:
        self.done.append((message, attempt))

    def session_ended(self, session: Any, fault: Attempt | None) -> None:
        self.ended.append((session, fault))


def msg(mime: bytes = b"Subject: hi\r\n\r\nbody\r\n", rcpt: str = "b@example.com", **kw: Any) -> OutMessage:
    return OutMessage("a@example.org", rcpt, mime, **kw)


def run_ours(server: ScriptedFactory, messages: list[OutMessage], **kw: Any) -> ListSource:
    source = ListSource(messages)
    kw.setdefault("security", "none")
    factory = OutboundFactory(source, helo="client.test", clock=Clock(), **kw)
    client = factory.buildProtocol(None)
    srv = server.buildProtocol(None)
    pump = iosim.connect(srv, iosim.makeFakeServer(srv), client, iosim.makeFakeClient(client))
    pump.flush()
    return source


def run_plain_twisted(server: ScriptedFactory, mime: bytes) -> Deferred:
    """The same delivery through twisted.mail's ESMTPSenderFactory, configured as leniently as it
    allows (no TLS or AUTH required, no retries)."""
    result: Deferred = Deferred()
    factory = smtp.ESMTPSenderFactory(
        b"", None, "a@example.org", ["b@example.com"], io.BytesIO(mime), result,
        retries=0, requireAuthentication=False, requireTransportSecurity=False, heloFallback=True,
    )
    client = factory.buildProtocol(None)
    srv = server.buildProtocol(None)
    pump = iosim.connect(srv, iosim.makeFakeServer(srv), client, iosim.makeFakeClient(client))
    pump.flush()
    result.addErrback(lambda f: None)
    return result


class TLSStringTransport(StringTransport):
    """A StringTransport that accepts startTLS (and records it)."""

    tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context
