"""What the SMTP server knows about one connection, and the narrow interface through which it asks
the plugin layer for verdicts.

The server owns a :class:`Connection` and hands it to :class:`HookRunner.run`; plugins reach it only
through ``mqtwisted.api`` functions.  Neither side imports the other.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

_ids = itertools.count(1)


@attrs.frozen
class Reply:
    """An SMTP reply chosen by policy or by a plugin."""

    code: int
    text: str
    enhanced: str | None = None

    @property
    def refuses(self) -> bool:
        return self.code >= 400


@attrs.define(eq=False)
class Connection:
    """One inbound or outbound SMTP connection as plugins see it."""

    remote_ip: str = ""
    remote_port: int = 0
    local_ip: str = ""
    local_port: int = 0
    id: int = attrs.field(factory=lambda: next(_ids))
    inbound: bool = True
    helo: str | None = None
    user: str | None = None
    authenticated: bool = False
    #: the SASL mechanism the client authenticated with (``PLAIN``, ``LOGIN``)
    auth_mechanism: str | None = None
    secure: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    peer_certificate: Any = None
    #: MQ_setResponse's reply for the command being processed; the server clears it per step.
    response: Reply | None = None
    #: per-plugin MQ_connectionData, keyed by plugin name
    data: dict[str, Any] = attrs.field(factory=dict)
    #: the context this connection is pinned to (set by the plugin layer on first use)
    context: Any = None
    #: the live transport (for MQ_fileDescriptor / MQ_send); never pickled, never in JSON
    transport: Any = attrs.field(default=None, repr=False)


@attrs.define(eq=False)
class MessageHandle:
    """A message as hooks see it: ``mq_smtp_in_message`` (incoming) or the ``mq_smtp_out_*`` hooks.

    On incoming messages the MQ_set* functions edit ``document`` (the JSON that is queued).  On
    outgoing ones they set the ``wire_*`` overrides and change only what is sent (MailerQ's rule).
    """

    document: dict[str, Any]
    outgoing: bool = False
    wire_envelope: str | None = None
    wire_recipient: str | None = None
    wire_mime: bytes | None = None


class HookRunner(Protocol):
    """The plugin layer as the SMTP server and the delivery client see it."""

    def defines(self, hook: str) -> bool:
        """True when any loaded plugin defines ``hook``; when False the caller skips it at no cost."""

    def run(self, hook: str, conn: Connection, *args: Any) -> Deferred[Reply | None]:
        """Run ``hook`` through every plugin in order with take-control semantics.

        Fires with ``conn.response`` (a refusal or an override) or None to go on.  A plugin that
        raises fires ``Reply(451, ..., "4.3.0")``; one that times out ``Reply(451, ..., "4.4.7")``.
        Never errbacks.
        """

    def connection_closed(self, conn: Connection) -> None:
        """``conn`` is gone (after its close hook was asked for): release what it held."""


class NoHooks:
    """The hook runner used when no plugin directory is configured."""

    def defines(self, hook: str) -> bool:
        return False

    def run(self, hook: str, conn: Connection, *args: Any) -> Deferred[Reply | None]:
        from twisted.internet.defer import succeed

        return succeed(None)

    def connection_closed(self, conn: Connection) -> None:
        pass
