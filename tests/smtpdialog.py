"""In-memory SMTP dialogs for protocol tests: our server, and bare twisted.mail for comparison.

Both sides are driven through a StringTransport, so a test sends exact bytes (any packet split)
and reads back exact replies, deterministically and without sockets.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from zope.interface import implementer

from mqtwisted.connection import NoHooks, Reply
from mqtwisted.smtp.config import ServerConfig
from mqtwisted.smtp.factory import BehindProxy, SMTPFactory
from mqtwisted.smtp.policy import RelayPolicy

_REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


class PausableTransport(StringTransport):
    def __init__(self, peer: str = "127.0.0.1") -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 25),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )

    def startTLS(self, ctx: Any) -> None:
        self.tls_started = ctx


class Dialog:
    """One session: ``send`` bytes, ``replies`` parsed since the last call."""

    def __init__(self, protocol: Any, transport: PausableTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self._seen = 0
        self.clock: task.Clock | None = None

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self) -> list[tuple[int, list[str]]]:
        out = self.transport.value()[self._seen :]
        self._seen = len(self.transport.value())
        replies: list[tuple[int, list[str]]] = []
        lines: list[str] = []
        for raw in out.split(b"\r\n"):
            if not raw:
                continue
            m = _REPLY.match(raw)
            assert m is not None, f"not an SMTP reply line: {raw!r}"
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                replies.append((int(m.group(1)), lines))
                lines = []
        assert not lines, f"unterminated multi-line reply: {lines}"
        return replies

    def codes(self) -> list[int]:
        return [code for code, _ in self.replies()]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


class Recorder:
    """An ``accept`` callable that keeps what it is given and answers with queue ids."""

    def __init__(self, answer: Any = None) -> None:
        self.messages: list[tuple[Any, Any, bytes]] = []
        self.answer = answer

    def __call__(self, conn: Any, envelope: Any, body: Any) -> defer.Deferred:
        self.messages.append((conn, envelope, body.read()))
        if self.answer is not None:
            return defer.succeed(self.answer)
        return defer.succeed([f"id{len(self.messages)}-{i}" for i in range(len(envelope.recipients))])


def ours(
    peer: str = "127.0.0.1",
    hooks: Any = None,
    accept: Any = None,
    auth: Any = None,
    tls: Any = None,
    relay: RelayPolicy | None = None,
    greet: bool = True,
    proxy: bool = False,
    **config: Any,
) -> tuple[Dialog, Recorder]:
    recorder = accept if accept is not None else Recorder()
    factory = SMTPFactory(
        ServerConfig(hostname="mx.test", **config),
        recorder,
        relay or RelayPolicy(local_domains=frozenset({"local.test"})),
        hooks=hooks or NoHooks(),
        auth=auth,
        tls=tls,
    )
    proto = (BehindProxy(factory) if proxy else factory).buildProtocol(None)
    clock = task.Clock()
    proto.callLater = clock.callLater  # timeouts on a test clock, never on the real reactor
    transport = PausableTransport(peer)
    proto.makeConnection(transport)
    dialog = Dialog(proto, transport)
    dialog.clock = clock
    if greet:
        assert dialog.codes() == [220]
    return dialog, recorder


@implementer(smtp.IMessage)
class _BareMessage:
    def __init__(self, store: list[bytes]) -> None:
        self.lines: list[bytes] = []
        self.store = store

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def _eom(self) -> defer.Deferred:
        self.store.append(b"\r\n".join(self.lines) + b"\r\n")
        return defer.succeed(None)

    eomReceived = _eom

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _BareDelivery:
    def __init__(self, store: list[bytes], slow: list[defer.Deferred] | None = None) -> None:
        self.store = store
        self.slow = slow

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        if self.slow is not None:
            d: defer.Deferred = defer.Deferred()
            self.slow.append(d)
            d.addCallback(lambda _: origin)
            return d
        return origin

    def validateTo(self, user: Any) -> Any:
        return lambda: _BareMessage(self.store)


def bare(
    slow: list[defer.Deferred] | None = None, ctx: Any = None, fail_eom: bool = False
) -> tuple[Dialog, list[bytes]]:
    """twisted.mail's own ESMTP with a delivery that accepts everything (the baseline the defect tests compare with)."""
    store: list[bytes] = []
    proto = smtp.ESMTP(contextFactory=ctx)
    if fail_eom:
        _BareMessage.eomReceived = lambda self: defer.fail(OSError("disk full"))  # type: ignore[method-assign]
    else:
        _BareMessage.eomReceived = _BareMessage._eom  # type: ignore[method-assign]
    proto.delivery = _BareDelivery(store, slow)
    proto.host = b"mx.test"
    transport = PausableTransport()
    proto.makeConnection(transport)
    dialog = Dialog(proto, transport)
    dialog.replies()
    return dialog, store


class SlowHooks:
    """A hook runner whose verdicts arrive later, when the test fires them (in any order)."""

    def __init__(self, hooks: set[str], verdicts: dict[str, Reply | None] | None = None) -> None:
        self.hooks = hooks
        self.pending: list[tuple[str, defer.Deferred]] = []
        self.verdicts = verdicts or {}
        self.calls: list[tuple[str, tuple]] = []

    def connection_closed(self, conn: Any) -> None:
        pass

    def defines(self, hook: str) -> bool:
        return hook in self.hooks

    def run(self, hook: str, conn: Any, *args: Any) -> defer.Deferred:
        self.calls.append((hook, args))
        d: defer.Deferred = defer.Deferred()
        self.pending.append((hook, d))
        return d

    def release_all(self) -> None:
        while self.pending:
            hook, d = self.pending.pop(0)
            d.callback(self.verdicts.get(hook))
