"""``--milters-out``: milters each message passes on its way out, in the delivery's prepare step
(:mod:`mqtwisted.delivery.signing`), e.g. OpenDKIM signing in ``Mode s``.

Each message gets a session of its own through the same :class:`~mqtwisted.milter.chain.MilterChain`
as inbound mail, presented as submitted by this host (connect from ``127.0.0.1``, HELO with our
name, MAIL and RCPT with the message's envelope), so that a signing milter treats it as internal
mail.  What comes back is the MIME to send, with the milters' header and body changes, or the
reply that stops the attempt: a reject fails it for good, a tempfail (or a failing milter under
the default ``tempfail``) defers it; a discard or quarantine fails it with the milter's reason.
Envelope changes are not applied on the way out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mqtwisted.connection import Connection, Reply
from mqtwisted.envelope import Body, Envelope, Recipient
from mqtwisted.milter.chain import MilterChain


class OutboundMilters:
    """The milters of ``--milters-out``.  Pickles: configuration only."""

    def __init__(self, specs: list[str], timeout: float, default: str, hostname: str,
                 reactor: Any = None) -> None:
        self.chain = MilterChain(specs, timeout, default, hostname, reactor)

    def run(self, mime: bytes, sender: str, recipient: str) -> defer.Deferred[bytes | Reply]:
        return defer.ensureDeferred(self._run(mime, sender, recipient))

    async def _run(self, mime: bytes, sender: str, recipient: str) -> bytes | Reply:
        conn = Connection(remote_ip="127.0.0.1", local_ip="127.0.0.1", helo=self.chain.hostname)
        session = self.chain.open(conn)
        if session is None:
            return mime
        try:
            for step in (session.connect, lambda: session.helo(self.chain.hostname),
                         lambda: session.mail(sender, {}),
                         lambda: session.rcpt(Recipient(recipient, {}, False))):
                reply = await step()
                if reply is not None and reply.refuses:
                    return reply
            envelope = Envelope(sender, {}, [Recipient(recipient, {}, False)])
            result = await session.message(envelope, Body(data=mime, size=len(mime)), lambda address: False)
        finally:
            session.close()
        if isinstance(result, Reply):
            return result
        if result.discard:
            return Reply(550, "Not sent: a milter discarded the message", "5.7.1")
        if result.envelope.quarantine is not None:
            return Reply(550, f"Not sent: a milter quarantined the message: {result.envelope.quarantine}", "5.7.1")
        return result.body.read()
