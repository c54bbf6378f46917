"""Between the SMTP server and the queue (Postfix's cleanup): turn an accepted transaction into
one MailerQ document per recipient, let ``mq_smtp_in_message`` see and edit each, and publish them
all durably.  What the server receives back is the list of queue ids, or the reply that refuses.

The ``local`` queue is mqmta's final delivery: a recipient put there whose NOTIFY names SUCCESS
gets its "delivered" report (:mod:`mqtwisted.bounce`) on the ``dsn`` queue in the same publish.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwisted import bounce
from mqtwisted import hooks as hook_names
from mqtwisted.authcheck.header import stamp
from mqtwisted.connection import Connection, HookRunner, MessageHandle, NoHooks, Reply
from mqtwisted.document import IncomingDocument
from mqtwisted.envelope import Body, Envelope
from mqtwisted.message import extract_properties, header_block, incoming_document, message_id
from mqtwisted.queue import Publication, Queue, QueueUnavailable, mime_text
from mqtwisted.replies import LOCAL_ERROR, QUEUE_UNAVAILABLE

log = Logger()

_COPY_CHUNK = 1 << 20


class TrustPolicy(Protocol):
    """Whose x-mq-* headers become properties when ``smtp-extract`` is ``trusted``."""

    def is_trusted(self, ip: str) -> bool:
        """True when a client at ``ip`` may set properties through headers."""


class Verifier(Protocol):
    """Inbound authentication (``--verify-inbound on``, :mod:`mqtwisted.authcheck`)."""

    def verify(self, conn: Connection, envelope: Envelope, body: Body) -> defer.Deferred[Any]:
        """Fires (on the reactor thread, never failing for DNS) with the message's results: an
        object with ``header_field()`` and ``to_json()``."""


class Cleanup:
    """The server's ``accept`` callable.  Pickles: holds configuration and collaborators only.

    With a ``verifier``, each message is checked (off the reactor thread) before its documents
    are made: the ``Authentication-Results`` field it gets is in the one stored body, its
    ``auth`` property in every document, both before ``mq_smtp_in_message`` sees them.
    """

    def __init__(
        self,
        queue: Queue,
        relay: TrustPolicy,
        hostname: str,
        hooks: HookRunner | None = None,
        inbox: str = "outbox",
        local: str = "local",
        extract: str = "trusted",
        refused: str = "refused",
        verifier: Verifier | None = None,
        dsn: str = "dsn",
    ) -> None:
        self.queue = queue
        self.relay = relay
        self.hostname = hostname
        self.hooks: HookRunner = hooks if hooks is not None else NoHooks()
        self.inbox = inbox
        self.local = local
        self.extract = extract
        self.refused = refused
        self.verifier = verifier
        self.dsn = dsn

    def _extracts(self, conn: Connection) -> bool:
        if self.extract == "always":
            return True
        if self.extract == "never":
            return False
        return conn.authenticated or self.relay.is_trusted(conn.remote_ip)

    def __call__(self, conn: Connection, envelope: Envelope, body: Body) -> defer.Deferred:
        try:
            if self.verifier is None:
                return self._accept(conn, envelope, body, None)
            d = self.verifier.verify(conn, envelope, body)
            d.addCallback(lambda results: self._accept(conn, envelope, body, results))
            d.addErrback(self._local_error, conn)
            return d
        except Exception:
            return defer.succeed(self._local_error(Failure(), conn))

    def _local_error(self, failure: Failure, conn: Connection) -> Reply:
        log.failure("cleanup failed for session {id}", failure, id=conn.id)
        return LOCAL_ERROR

    def _accept(self, conn: Connection, envelope: Envelope, body: Body, results: Any) -> defer.Deferred:
        head_source = body.data if body.data is not None else _head_of_file(body.path)
        head = header_block(head_source)
        properties: dict[str, Any] = {}
        rewritten: str | None = None
        start = head_source
        if self._extracts(conn):
            properties, stripped = extract_properties(head_source, head)
            if properties:
                start = stripped
        if results is not None:
            # RFC 8601 §5: fields claiming to be ours were not written by us; ours goes on top.
            start = stamp(start, results.header_field(), self.hostname)
        if start is not head_source and body.data is not None:
            body = Body(data=start, size=len(start))
        elif start is not head_source and body.path is not None:
            body = _rewrite_file(body.path, start, len(head_source))
            rewritten = body.path
        d = self._accept_message(conn, envelope, body, head, properties, results)
        if rewritten is not None:
            d.addBoth(_remove, rewritten)  # the queue has its own copy once publish fired
        return d

    def _accept_message(
        self, conn: Connection, envelope: Envelope, body: Body, head: bytes, properties: dict[str, Any],
        results: Any,
    ) -> defer.Deferred:
        msgid = message_id(head)
        handles = [
            MessageHandle(
                incoming_document(
                    conn,
                    envelope.sender,
                    envelope.params,
                    r.address,
                    r.params,
                    hostname=self.hostname,
                    received=envelope.received,
                    msgid=msgid,
                    properties=properties,
                )
            )
            for r in envelope.recipients
        ]
        if results is not None:
            for handle in handles:
                IncomingDocument.of(handle.document).auth = results.to_json()
        locals_ = [r.local for r in envelope.recipients]
        held = envelope.quarantine is not None
        if held:
            for handle in handles:
                handle.document["quarantine"] = envelope.quarantine
        if not self.hooks.defines(hook_names.IN_MESSAGE):
            return self._publish(handles, locals_, body, head, held=held)
        return defer.ensureDeferred(self._with_hooks(conn, handles, locals_, body, head, held))

    async def _with_hooks(
        self, conn: Connection, handles: list[MessageHandle], locals_: list[bool], body: Body, head: bytes,
        held: bool,
    ) -> Any:
        original = mime_text(body.data) if body.data is not None else None
        for handle, is_local in zip(handles, locals_, strict=True):
            if original is not None:
                handle.document["mime"] = original
            # MQ_local reads it, MQ_setLocal changes it; _publish takes it out of the JSON.
            handle.document["local"] = is_local
            conn.response = None
            reply = await self.hooks.run(hook_names.IN_MESSAGE, conn, handle)
            if reply is not None and reply.refuses:
                return reply
        return await self._publish(handles, locals_, body, head, original, held)

    def _publish(
        self,
        handles: list[MessageHandle],
        locals_: list[bool],
        body: Body,
        head: bytes,
        original: str | None = None,
        held: bool = False,
    ) -> defer.Deferred:
        """``held``: a milter quarantined the message; every copy goes to the ``refused`` queue.
        ``head`` is the message's header section, returned in "delivered" reports."""
        pubs = []
        for handle, is_local in zip(handles, locals_, strict=True):
            local = handle.document.pop("local", is_local)
            doc = handle.document
            own_body: Body | None = body
            if "mime" in doc:
                if doc["mime"] is original:
                    del doc["mime"]  # unchanged by the hooks: keep sharing the one stored body
                else:
                    own_body = None  # a hook replaced it: this recipient's JSON carries its own
            queue = self.refused if held else self.local if local else self.inbox
            pubs.append(Publication(queue, doc, own_body))
            if queue == self.local and not held and bounce.wants_report(doc, "delivered"):
                pubs.append(self._delivered(doc, head))
        d = self.queue.publish(pubs)
        d.addErrback(self._unavailable)
        return d

    def _delivered(self, doc: dict[str, Any], head: bytes) -> Publication:
        """The "delivered" report of ``doc``, put on the local queue now: in the same durable
        publish, so the report exists exactly when the delivery does.  It returns the headers
        of the recipient's own ``mime`` when a hook gave it one, else of the shared body."""
        now = time.time()
        report = bounce.build_report(doc, bounce.delivered(self.local, now), reporting_mta=self.hostname,
                                     now=now, original=None if "mime" in doc else head)
        return Publication(self.dsn, report)

    def _unavailable(self, failure: Any) -> Reply:
        if not failure.check(QueueUnavailable):
            log.failure("publishing to the queue failed", failure)
        else:
            log.warn("queue unavailable: {why}", why=failure.getErrorMessage())
        return QUEUE_UNAVAILABLE


def _rewrite_file(path: str, start: bytes, skip: int) -> Body:
    """A spilled body with its first ``skip`` bytes replaced by ``start``, copied in chunks to a
    new file beside it: a 25 MB message never has to fit in memory to lose its x-mq headers."""
    fd, new = tempfile.mkstemp(prefix="incoming-", suffix=".eml", dir=os.path.dirname(path))
    size = len(start)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            out.write(start)
            src.seek(skip)
            while chunk := src.read(_COPY_CHUNK):
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        _remove(None, new)
        raise
    return Body(path=new, size=size)


def _remove(result: Any, path: str) -> Any:
    with contextlib.suppress(OSError):
        os.unlink(path)
    return result


def _head_of_file(path: str | None) -> bytes:
    if path is None:
        return b""
    with open(path, "rb") as f:
        return f.read(256 * 1024)
