"""Helpers for testing mqmta and plugins for it, under trial or pytest (pytest-twisted).

Everything a plugin's tests need is here, beside ``mqtwisted.api``: docs/plugins.rst ("Testing a
plugin") has a complete ``twisted.trial`` example.  Every helper that waits returns a Deferred, so
tests ``yield`` it (``inlineCallbacks``) or ``await`` it (``async def``).

``start_mta`` runs a whole MTA in-process on free loopback ports, built from the same options as
``twistd mqmta`` (keyword ``plugin_directory="..."`` is ``--plugin-directory ...``), or with just
the plugin modules given::

    mta = await start_mta(data_dir, plugins=[my_plugin])
    refused = await mta.send("a@example.com", ["b@example.com"], "Subject: hi\\r\\n\\r\\nhello\\r\\n")
    docs = await mta.documents("outbox")
    await mta.stop()

For calling a plugin's hooks directly, without SMTP::

    runner = hook_runner([my_plugin])                 # or a plugin directory
    conn = test_connection(remote_ip="192.0.2.1")
    reply = await runner.run("mq_smtp_in_rcptto", conn, "someone@example.com")
    assert reply is None or reply.code == 550
    handle = incoming_message({"recipient": "someone@example.com", "mime": "..."})
    await runner.run("mq_smtp_in_message", conn, handle)   # handle.document holds the edits
    runner.connection_closed(conn)
    await runner.stop()
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import internet, service
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort

from mqtwisted.connection import Connection, MessageHandle, Reply
from mqtwisted.options import MQOptions
from mqtwisted.queue import Document, Queue

if TYPE_CHECKING:
    from mqtwisted.plugins import PluginRunner


def mta_options(data_dir: str, **options: Any) -> MQOptions:
    """Parsed options, as the command line would give them, for a test MTA."""
    defaults = {
        "smtp-port": "0",
        "hostname": "mx.test",
        "delivery": "off",
        "www-port": "",
        "threads": "2",
    }
    args = [f"--data-dir={data_dir}"]
    merged = {**defaults, **{k.replace("_", "-"): v for k, v in options.items()}}
    for key, value in merged.items():
        args.append(f"--{key}={value}")
    parsed = MQOptions()
    parsed.parseOptions(args)
    return parsed


@attrs.define
class ListeningReactor:
    """The reactor, for the MTA's ``TCPServer``/``SSLServer`` services, noting what they listen on.

    Those services choose their reactor through their public ``reactor`` attribute, and keep the
    listening port only in a private one: with port 0, this is how a test learns the number the
    system gave (from the listening port's ``getHost()``).  Everything else is the reactor's own.
    """

    reactor: Any
    ports: list[tuple[bool, int]] = attrs.field(factory=list)  # (implicit TLS?, port number)

    def listenTCP(self, *args: Any, **kwargs: Any) -> IListeningPort:
        port = self.reactor.listenTCP(*args, **kwargs)
        self.ports.append((False, port.getHost().port))
        return port

    def listenSSL(self, *args: Any, **kwargs: Any) -> IListeningPort:
        port = self.reactor.listenSSL(*args, **kwargs)
        self.ports.append((True, port.getHost().port))
        return port


def _send(
    port: int,
    sender: str,
    recipients: list[str],
    message: str | bytes,
    starttls: bool,
    login: tuple[str, str] | None,
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        if starttls:
            # the test MTA's certificate is self-signed: encrypt without checking it
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo("client.test")
        if login is not None:
            client.login(*login)
        return client.sendmail(sender, recipients, message)


@attrs.define
class RunningMTA:
    service: service.MultiService
    options: MQOptions
    listening: ListeningReactor

    @property
    def queue(self) -> Queue:
        return self.service.getServiceNamed("queue").queue  # type: ignore[attr-defined]

    def listening_port(self, tls: bool = False) -> int:
        """The number of the plain (or implicit-TLS) SMTP port, as the system chose it (it stays
        known after ``stop``)."""
        for is_tls, number in self.listening.ports:
            if is_tls is tls:
                return number
        raise LookupError(f"this MTA has no {'implicit-TLS' if tls else 'plain'} SMTP port")

    @property
    def port(self) -> int:
        """The SMTP port (``smtp-port``)."""
        return self.listening_port(tls=False)

    @property
    def secure_port(self) -> int:
        """The implicit-TLS port (``smtp-secure-port``)."""
        return self.listening_port(tls=True)

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: str | bytes,
        *,
        starttls: bool = False,
        login: tuple[str, str] | None = None,
    ) -> Deferred[dict[str, tuple[int, bytes]]]:
        """Send one message to this MTA over SMTP (smtplib, in a thread).

        Fires with the recipients the MTA refused, as smtplib reports them (``{address: (code,
        text)}``); fails with smtplib's exception when the sender, every recipient or the message
        is refused (``SMTPSenderRefused``, ``SMTPRecipientsRefused``, ``SMTPDataError``).
        """
        return threads.deferToThread(_send, self.port, sender, list(recipients), message, starttls, login)

    def documents(self, queue: str = "outbox", limit: int = 100000) -> Deferred[list[Document]]:
        """Every document of ``queue`` (complete JSON, ``mime`` included)."""
        d = self.queue.list(queue, limit)
        d.addCallback(lambda rows: [doc for _, doc in rows])
        return d

    def stop(self) -> Deferred[None]:
        return defer.maybeDeferred(self.service.stopService)


def start_mta(data_dir: str, plugins: Sequence[ModuleType] = (), **options: Any) -> Deferred[RunningMTA]:
    """Start an MTA in this process's reactor on free ports; fires with a :class:`RunningMTA`.

    ``plugins`` runs these plugin modules (copied into ``data_dir/plugins``) instead of a
    ``plugin_directory``.  Deferred-returning (and awaitable), so it serves trial,
    pytest-twisted and ``async def`` tests.
    """
    return defer.ensureDeferred(_start_mta(data_dir, plugins, **options))


async def _start_mta(data_dir: str, plugins: Sequence[ModuleType], **options: Any) -> RunningMTA:
    from twisted.internet import reactor

    from mqtwisted.service import make_service

    os.makedirs(data_dir, exist_ok=True)
    if plugins:
        if options.get("plugin_directory"):
            raise ValueError("start_mta: give plugins or plugin_directory, not both")
        options["plugin_directory"] = plugin_directory(os.path.join(data_dir, "plugins"), plugins)
    parsed = mta_options(data_dir, **options)
    top = make_service(parsed)
    listening = ListeningReactor(reactor)
    servers = [s for s in top if isinstance(s, (internet.TCPServer, internet.SSLServer))]
    for server in servers:
        server.reactor = listening
    top.privilegedStartService()
    top.startService()
    for server in servers:
        # back to the default (the global reactor): the service tree pickles (TAP files), and a
        # reactor does not
        server.reactor = None
    mta = RunningMTA(top, parsed, listening)
    await mta.queue.stats()  # the queue is open once this answers
    return mta


def plugin_directory(path: str, plugins: Sequence[ModuleType]) -> str:
    """``path``, created, holding a copy of each plugin (module file or package directory).

    The MTA loads them from there as it loads any plugin directory: as new modules, so module
    state that a test sets on the imported originals is not shared.
    """
    os.makedirs(path, exist_ok=True)
    for module in plugins:
        source = module.__file__
        if source is None:
            raise ValueError(f"plugin {module.__name__} has no file to copy")
        if os.path.basename(source) == "__init__.py":
            package = os.path.dirname(source)
            shutil.copytree(package, os.path.join(path, os.path.basename(package)), dirs_exist_ok=True)
        else:
            shutil.copy(source, path)
    return path


@attrs.define
class HookRunner:
    """A started PluginRunner's hooks, called as the SMTP server calls them.

    Like the server, ``run`` forgets the reply a plugin chose (``MQ_setResponse``) for the
    previous command before asking the next hook: a refusal at one RCPT TO does not stick to the
    next.  ``runner`` is the PluginRunner itself.
    """

    runner: PluginRunner

    def run(self, hook: str, conn: Connection, *args: Any) -> Deferred[Reply | None]:
        """Fires with the reply the plugins chose, or None to go on."""
        conn.response = None
        return self.runner.run(hook, conn, *args)

    def connection_closed(self, conn: Connection) -> None:
        """``conn`` is gone: what plugins pinned to it (a context, taken control) is released."""
        self.runner.connection_closed(conn)

    def stop(self) -> Deferred[None]:
        """Stop the contexts (``mq_context_cleanup`` in each), then call ``mq_cleanup``."""
        return self.runner.stop()


def hook_runner(plugins: str | Sequence[ModuleType], threads: int = 1, timeout: float = 5.0) -> HookRunner:
    """The hooks of a plugin directory or of already imported plugin modules, started.

    ``yield runner.stop()`` (or ``await``) when done: it runs ``mq_context_cleanup`` and
    ``mq_cleanup`` as the MTA would.
    """
    from mqtwisted.plugins import PluginRunner, plugin_from_module

    if isinstance(plugins, str):
        runner = PluginRunner.from_directory(plugins, threads=threads, timeout=timeout)
    else:
        runner = PluginRunner([plugin_from_module(m) for m in plugins], threads=threads, timeout=timeout)
    runner.start()
    return HookRunner(runner)


def test_connection(**fields: Any) -> Connection:
    """A Connection as the SMTP server would make it (loopback addresses unless given)."""
    defaults: dict[str, Any] = {
        "remote_ip": "127.0.0.1", "remote_port": 40000, "local_ip": "127.0.0.1", "local_port": 25,
    }
    return Connection(**{**defaults, **fields})


test_connection.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def incoming_message(document: Document) -> MessageHandle:
    """The handle ``mq_smtp_in_message`` receives: the MQ_set* functions edit ``document``."""
    return MessageHandle(document)


def outgoing_message(document: Document) -> MessageHandle:
    """The handle the ``mq_smtp_out_*`` hooks receive: MQ_set* changes only what is sent."""
    return MessageHandle(document, outgoing=True)
