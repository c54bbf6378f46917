"""The MQ_* functions and constants plugins use: ``from mqtwisted import api as mq``.

Names follow MailerQ's C plugin API; see ``docs/plugins.rst``.  This is the only module a plugin
needs to import.  Everything here may be called from any thread unless noted.

Per-plugin data (``MQ_connectionData``, ``MQ_contextData``) and ``MQ_log`` know which plugin is
calling because the plugin layer records it around every hook, timer and watcher callback.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel

from mqtwisted.connection import Connection, MessageHandle, Reply
from mqtwisted.contexts import (
    MQ_READ,
    MQ_WRITE,
    MQ_Context,
    Timer,
    Watcher,
    current_plugin,
    on_reactor,
)
from mqtwisted.document import IncomingDocument

__all__ = [
    "MQ_API_VERSION", "MQ_CRIT", "MQ_WARN", "MQ_INFO", "MQ_READ", "MQ_WRITE",
    "MQ_Context", "MQ_Connection", "MQ_Message", "MQ_Timer", "MQ_Watcher",
    "MQ_continue", "MQ_complete", "MQ_retry", "MQ_setResponse", "MQ_response",
    "MQ_fileDescriptor", "MQ_send", "MQ_authenticated", "MQ_setAuthenticated", "MQ_secure",
    "MQ_connectionData", "MQ_setConnectionData", "MQ_contextData", "MQ_setContextData",
    "MQ_contextId", "MQ_startTimer", "MQ_stopTimer", "MQ_resetTimer", "MQ_ioWatch", "MQ_ioUnwatch",
    "MQ_json", "MQ_envelope", "MQ_setEnvelope", "MQ_recipient", "MQ_setRecipient",
    "MQ_mime", "MQ_setMime", "MQ_local", "MQ_setLocal", "MQ_email", "MQ_log",
    "MQ_connectionId", "MQ_inbound", "MQ_remoteAddress", "MQ_remoteIp", "MQ_localAddress",
    "MQ_localIp", "MQ_helo", "MQ_user", "MQ_tlsVersion", "MQ_tlsCipher", "MQ_peerCertificate",
    "reactor_hook",
]  # fmt: skip

#: What ``mq_version()`` must return.
MQ_API_VERSION = 1

#: ``MQ_log`` priorities (MailerQ's), mapped onto twisted.logger levels.
MQ_CRIT = 2
MQ_WARN = 1
MQ_INFO = 0

# The objects plugins receive, under MailerQ's names.
MQ_Connection = Connection
MQ_Message = MessageHandle
MQ_Timer = Timer
MQ_Watcher = Watcher

_LEVELS = {MQ_CRIT: LogLevel.critical, MQ_WARN: LogLevel.warn, MQ_INFO: LogLevel.info}
_loggers: dict[str, Logger] = {}


def _plugin() -> str:
    return current_plugin.get()


# -- control ---------------------------------------------------------------------------------------


def _control(conn: Connection, kind: str) -> None:
    ctx = conn.context
    if ctx is None or ctx.runner is None:
        raise RuntimeError(f"MQ_{kind}: connection {conn.id} is not running any hook")
    ctx.runner.control(conn, kind)


def MQ_continue(conn: Connection) -> None:
    """Hand control back; the next plugin (or normal processing) goes on."""
    _control(conn, "continue")


def MQ_complete(conn: Connection) -> None:
    """Hand control back and skip the remaining plugins for this step."""
    _control(conn, "complete")


def MQ_retry(conn: Connection) -> None:
    """Hand control back and run this step again, from the first plugin."""
    _control(conn, "retry")


def MQ_setResponse(conn: Connection, code: int, text: str, enhanced: str | None = None) -> None:
    """The reply to the command being processed; 4xx/5xx refuses it (connect: greet and close)."""
    conn.response = Reply(int(code), str(text), enhanced)


def MQ_response(conn: Connection) -> Reply | None:
    """The reply an earlier plugin set for this step with ``MQ_setResponse``, if any."""
    return conn.response


def reactor_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a plain (non-async) hook that returns a Deferred: call it on the reactor thread.

    ``async def`` hooks need no marking.  An unmarked hook that returns a Deferred works too, but
    its first call happens in the worker thread.
    """
    fn.mq_on_reactor = True  # type: ignore[attr-defined]
    return fn


# -- connection ------------------------------------------------------------------------------------


def MQ_fileDescriptor(conn: Connection) -> int:
    """The socket's file descriptor, or -1 (closed, or not a socket)."""
    transport = conn.transport
    if transport is None:
        return -1
    try:
        handle = transport.getHandle()
        return int(handle.fileno())
    except Exception:
        try:
            return int(transport.fileno())
        except Exception:
            return -1


def MQ_send(conn: Connection, data: bytes | str) -> None:
    """Write raw bytes to the peer (thread-safe: the write happens on the reactor)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    transport = conn.transport
    if transport is None:
        raise RuntimeError(f"MQ_send: connection {conn.id} has no transport")
    ctx = conn.context
    if ctx is not None:
        on_reactor(ctx.reactor, transport.write, data)
    else:
        from twisted.internet import reactor

        on_reactor(reactor, transport.write, data)


def MQ_authenticated(conn: Connection) -> bool:
    return bool(conn.authenticated)


def MQ_setAuthenticated(conn: Connection, authenticated: bool) -> None:
    """The verdict of ``mq_smtp_in_authenticate`` (overrides the built-in checker's)."""
    conn.authenticated = bool(authenticated)


def MQ_secure(conn: Connection) -> bool:
    return bool(conn.secure)


def MQ_connectionData(conn: Connection) -> Any:
    """This plugin's data for ``conn`` (None until set)."""
    return conn.data.get(_plugin())


def MQ_setConnectionData(conn: Connection, data: Any) -> None:
    conn.data[_plugin()] = data


# -- accessors MailerQ lacks -----------------------------------------------------------------------


def MQ_connectionId(conn: Connection) -> int:
    return conn.id


def MQ_inbound(conn: Connection) -> bool:
    return conn.inbound


def MQ_remoteAddress(conn: Connection) -> tuple[str, int]:
    return conn.remote_ip, conn.remote_port


def MQ_remoteIp(conn: Connection) -> str:
    return conn.remote_ip


def MQ_localAddress(conn: Connection) -> tuple[str, int]:
    return conn.local_ip, conn.local_port


def MQ_localIp(conn: Connection) -> str:
    return conn.local_ip


def MQ_helo(conn: Connection) -> str | None:
    return conn.helo


def MQ_user(conn: Connection) -> str | None:
    """The authenticated login, or None."""
    return conn.user if conn.authenticated else None


def MQ_tlsVersion(conn: Connection) -> str | None:
    return conn.tls_version


def MQ_tlsCipher(conn: Connection) -> str | None:
    return conn.tls_cipher


def MQ_peerCertificate(conn: Connection) -> Any:
    """The client's certificate (an OpenSSL X509) when it presented one, else None."""
    return conn.peer_certificate


# -- context ---------------------------------------------------------------------------------------


def MQ_contextData(ctx: MQ_Context) -> Any:
    """This plugin's data for this context (None until set)."""
    return ctx.data.get(_plugin())


def MQ_setContextData(ctx: MQ_Context, data: Any) -> None:
    ctx.data[_plugin()] = data


def MQ_contextId(ctx: MQ_Context) -> int:
    """0 .. threads-1."""
    return ctx.index


def MQ_startTimer(
    ctx: MQ_Context, timeout: float, callback: Callable[..., Any], *args: Any
) -> Timer:
    """After ``timeout`` seconds, run ``callback(*args)`` in ``ctx``'s worker thread."""
    return Timer(ctx, float(timeout), callback, args)


def MQ_stopTimer(timer: Timer) -> None:
    timer.stop()


def MQ_resetTimer(timer: Timer, timeout: float) -> None:
    """Restart the countdown from now with ``timeout`` seconds."""
    timer.reset(float(timeout))


def MQ_ioWatch(
    ctx: MQ_Context, fd: int, events: int, callback: Callable[..., Any], *args: Any
) -> Watcher:
    """Run ``callback(fd, event, *args)`` in ``ctx``'s worker thread whenever ``fd`` is ready.

    ``events`` is ``MQ_READ``, ``MQ_WRITE`` or both or'ed.  The descriptor is not watched while its
    callback is queued or running, so the callback should consume what made it ready.
    """
    return Watcher(ctx, int(fd), int(events), callback, args)


def MQ_ioUnwatch(watcher: Watcher) -> None:
    watcher.unwatch()


# -- messages --------------------------------------------------------------------------------------
# On incoming messages (mq_smtp_in_message) the setters edit the JSON that is queued; on outgoing
# ones (mq_smtp_out_*) they change only what goes on the wire for this attempt (MailerQ's rule).


def _document(message: MessageHandle) -> IncomingDocument:
    # Outgoing documents share these properties; only the incoming view also has ``local``.
    return IncomingDocument.of(message.document)


def MQ_json(message: MessageHandle) -> dict[str, Any]:
    """The message's JSON document, a mutable dict: edits are what gets queued."""
    return message.document


def MQ_envelope(message: MessageHandle) -> str:
    if message.outgoing and message.wire_envelope is not None:
        return message.wire_envelope
    return _document(message).sender


def MQ_setEnvelope(message: MessageHandle, envelope: str) -> None:
    if message.outgoing:
        message.wire_envelope = envelope
    else:
        _document(message).envelope = envelope


def MQ_recipient(message: MessageHandle) -> str:
    if message.outgoing and message.wire_recipient is not None:
        return message.wire_recipient
    return _document(message).recipient or ""


def MQ_setRecipient(message: MessageHandle, recipient: str) -> None:
    if message.outgoing:
        message.wire_recipient = recipient
    else:
        _document(message).recipient = recipient


def MQ_mime(message: MessageHandle) -> bytes | None:
    """The MIME message as bytes; None when the body is not held in memory (a large spool file)."""
    if message.outgoing and message.wire_mime is not None:
        return message.wire_mime
    return _document(message).mime


def MQ_setMime(message: MessageHandle, mime: bytes | str) -> None:
    if isinstance(mime, str):
        mime = mime.encode("utf-8", "surrogateescape")
    if message.outgoing:
        message.wire_mime = mime
    else:
        _document(message).mime = mime


def MQ_local(message: MessageHandle) -> bool:
    """Whether the message goes to the ``local`` queue instead of being relayed: what
    ``local-domains`` decided for its recipient, or what a plugin set with ``MQ_setLocal``."""
    return bool(_document(message).local)


def MQ_setLocal(message: MessageHandle, local: bool) -> None:
    """Route an incoming message to the ``local`` queue (True) or the inbox (False)."""
    if message.outgoing:
        MQ_log(MQ_WARN, "MQ_setLocal on an outgoing message has no effect")
        return
    _document(message).local = bool(local)


# -- addresses and logging -------------------------------------------------------------------------


def MQ_email(address: str) -> str:
    """The bare address of ``address``: ``"Ann <ann@example.com>"`` → ``"ann@example.com"``."""
    _, addr = email.utils.parseaddr(address or "")
    if not addr:
        addr = (address or "").strip().strip("<>")
    return addr


def MQ_log(priority: int, text: str) -> None:
    """Log ``text`` through twisted.logger, tagged with the calling plugin's name."""
    plugin = _plugin()
    logger = _loggers.get(plugin)
    if logger is None:
        logger = _loggers[plugin] = Logger(namespace=f"mqtwisted.plugin.{plugin or '?'}")
    logger.emit(_LEVELS.get(priority, LogLevel.info), "{plugin}: {text}", plugin=plugin, text=text)
