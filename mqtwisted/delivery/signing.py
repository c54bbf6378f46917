"""Delivery's last step before MAIL FROM, each outgoing message's ``prepare`` step
(:data:`mqtwisted.smtp.client.PrepareStep`): MailerQ's ``headers`` edits, then the milters of
``--milters-out`` (:mod:`mqtwisted.milter.outbound`), then the DKIM signatures (and ARC seal) of
its ``dkim`` property or, without one, of the ``--dkim-keys`` file's keys for its ``From:`` domain.
An ARC seal carries the results inbound verification recorded in the ``auth`` property
(``--verify-inbound``), else the message's own field of this host.

The outbound client runs the step on the MIME the ``mq_smtp_out_data`` hook left, so the edits
apply to a MIME a plugin replaced too, and every header edit is covered by the signature.
Signing is CPU-bound: it runs in a thread (Twisted's pool, or the runner a test injects), with
one :class:`~mqtwisted.signing.Signer` per process so that the copies of a message for many
recipients are signed once.  A message that cannot be signed is refused with a temporary ``451``:
it is never sent unsigned.  See docs/architecture.rst for where this sits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from mqtwisted.connection import Reply
from mqtwisted.delivery.headers import edit_headers
from mqtwisted.document import IncomingDocument, OutgoingDocument, usable
from mqtwisted.milter.outbound import OutboundMilters
from mqtwisted.signing import KeyTable, Signer, SigningError, load_keys_file, signing_requests
from mqtwisted.smtp.client import PrepareStep

log = Logger()

#: The largest message whose cached signatures are looked up on the reactor thread (hashing
#: 64 KiB takes about 0.1 ms; a larger message goes to the thread, cached or not).
INLINE_HASH_LIMIT = 64 * 1024

#: Runs ``f(*args)`` off the reactor thread: Deferred of its result.
ThreadRunner = Callable[..., "Deferred[Any]"]


def load_keys(path: str | None) -> KeyTable | None:
    """The keys file of ``--dkim-keys``, or None; ConfigError (file, line, key) when unusable."""
    return load_keys_file(path) if path else None


def relayed(doc: OutgoingDocument) -> bool:
    """Whether the message was handed to us by another server (ARC seals only such mail).

    Decided from ``connection``, the SMTP session it came in on: a document without one was put
    in the queue by an application, an authenticated user is a submission, and a client on
    loopback is a local submission (an application on this machine) - all three originate here.
    Any other session is a server relaying mail through us.
    """
    connection = usable(lambda: IncomingDocument.of(doc.json).connection, None)
    if connection is None or connection.user:
        return False
    try:
        return not ipaddress.ip_address(connection.remote_ip or "").is_loopback
    except ValueError:
        return True


def inbound_results(doc: OutgoingDocument, host_name: str) -> str | None:
    """The ``Authentication-Results`` value this MTA wrote when the message arrived
    (``--verify-inbound``: the ``auth`` property's ``header``), the input of an ARC seal; None
    when there is none, or when a host of another name wrote it (a seal may carry only its own)."""
    auth = usable(lambda: doc.auth, None)
    header = auth.get("header") if auth is not None else None
    if not isinstance(header, str) or auth.get("authserv-id") != host_name:
        return None
    return header if header.split(";", 1)[0].strip() == host_name else None


def sign(signer: Signer, mime: bytes, dkim_property: Any, keys: KeyTable | None, relayed: bool,
         results: str | None = None) -> bytes:
    """In a thread: ``mime`` with its signatures prepended (``mime`` itself when nothing signs it);
    ``results``: this hop's inbound results for an ARC seal (:func:`inbound_results`)."""
    return signer.sign(mime, signing_requests(dkim_property, mime, keys, relayed=relayed), results)


def refusal(failure: Any) -> Reply:
    """The reply that stops a message that could not be signed: temporary, with the reason."""
    if not failure.check(SigningError):
        log.failure("signing a message failed unexpectedly", failure)
    return Reply(451, f"Not sent: the message could not be signed: {failure.getErrorMessage()}", "4.3.0")


@attrs.define(eq=False)
class Signing:
    """What delivery signs with in this process: the one :class:`Signer`, the keys file's table
    (replaced on SIGHUP) and the thread runner."""

    signer: Signer
    run_in_thread: ThreadRunner
    keys: KeyTable | None = None
    milters: OutboundMilters | None = None

    def cached(self, mime: bytes, dkim_property: Any, keys: KeyTable | None, relayed: bool,
               results: str | None) -> bytes | None:
        """``mime`` signed from the signer's cache (another copy of it was signed before), or None:
        asked on the reactor thread, where it saves each later copy of a campaign's message the
        trip to a thread and back.  Only for a message small enough to hash at once and signed
        with the keys file's keys: a ``dkim`` property's key may not have been read yet, which
        takes milliseconds, so such a message always goes to the thread."""
        if len(mime) > INLINE_HASH_LIMIT or dkim_property is not None or keys is None:
            return None
        return self.signer.signed_if_cached(mime, keys.for_message(mime, relayed=relayed), results)

    def step(self, doc: OutgoingDocument) -> PrepareStep | None:
        """The prepare step of ``doc`` (checked, its ``dkim`` property too), or None when it has
        no header edits, no milter sees it and nothing can sign it."""
        edits, dkim_property, keys, milters = doc.headers, doc.dkim, self.keys, self.milters
        signs = dkim_property is not None or keys is not None
        if edits is None and not signs and milters is None:
            return None
        from_elsewhere = signs and relayed(doc)
        results = inbound_results(doc, self.signer.host_name) if signs else None

        def signed(mime: bytes | Reply) -> Deferred[bytes | Reply]:
            if not signs or isinstance(mime, Reply):
                return succeed(mime)
            from_cache = self.cached(mime, dkim_property, keys, from_elsewhere, results)
            if from_cache is not None:
                return succeed(from_cache)
            d = self.run_in_thread(sign, self.signer, mime, dkim_property, keys, from_elsewhere, results)
            d.addErrback(refusal)
            return d

        def prepare(mime: bytes) -> Deferred[bytes | Reply]:
            if edits is not None:
                mime = edit_headers(mime, edits)
            if milters is None:
                return signed(mime)
            return milters.run(mime, doc.sender, doc.recipient or "").addCallback(signed)

        return prepare
