"""Helpers for testing mqmta and plugins for it, under trial or pytest (pytest-twisted).

``start_mta`` runs a whole MTA in-process on free loopback ports, built from the same options as
``twistd mqmta`` (keyword ``plugin_directory="..."`` is ``--plugin-directory ...``)::

    mta = yield start_mta(str(tmp_path), plugin_directory="plugins")
    ...  # smtplib.SMTP("127.0.0.1", mta.port) in a thread, or any client
    docs = yield mta.documents("outbox")
    yield mta.stop()

For calling a plugin's hooks directly, without SMTP::

    runner = hook_runner([my_plugin_module])          # or a plugin directory
    conn = test_connection(remote_ip="192.0.2.1")
    reply = yield runner.run("mq_smtp_in_rcptto", conn, "someone@example.com")
    assert reply is None or reply.code == 550
    handle = incoming_message({"recipient": "someone@example.com", "mime": "..."})
    yield runner.run("mq_smtp_in_message", conn, handle)   # handle.document holds the edits
    runner.connection_closed(conn)
    yield runner.stop()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import attrs
from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.defer import Deferred

from mqtwisted.connection import Connection, MessageHandle
from mqtwisted.options import MQOptions
from mqtwisted.queue import Document, Queue


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
class RunningMTA:
    service: service.MultiService
    options: MQOptions

    @property
    def queue(self) -> Queue:
        return self.service.getServiceNamed("queue").queue  # type: ignore[attr-defined]

    def _ports(self, ssl: bool) -> list[int]:
        kind = internet.SSLServer if ssl else internet.TCPServer
        return [s._port.getHost().port for s in self.service if type(s) is kind]  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return self._ports(ssl=False)[0]

    @property
    def secure_port(self) -> int:
        return self._ports(ssl=True)[0]

    def documents(self, queue: str = "outbox", limit: int = 100000) -> Deferred[list[Document]]:
        """Every document of ``queue`` (complete JSON, ``mime`` included)."""
        d = self.queue.list(queue, limit)
        d.addCallback(lambda rows: [doc for _, doc in rows])
        return d

    def stop(self) -> Deferred[None]:
        return defer.maybeDeferred(self.service.stopService)


def start_mta(data_dir: str, **options: Any) -> Deferred[RunningMTA]:
    """Start an MTA in this process's reactor on free ports; fires with a :class:`RunningMTA`.

    Deferred-returning (and awaitable), so it serves trial, pytest-twisted and ``async def`` tests.
    """
    return defer.ensureDeferred(_start_mta(data_dir, **options))


async def _start_mta(data_dir: str, **options: Any) -> RunningMTA:
    from mqtwisted.service import make_service

    os.makedirs(data_dir, exist_ok=True)
    parsed = mta_options(data_dir, **options)
    top = make_service(parsed)
    top.privilegedStartService()
    top.startService()
    mta = RunningMTA(top, parsed)
    await mta.queue.stats()  # the queue is open once this answers
    return mta


def hook_runner(plugins: str | Sequence[ModuleType], threads: int = 1, timeout: float = 5.0) -> Any:
    """A started PluginRunner for a plugin directory or already imported plugin modules.

    ``yield runner.stop()`` (or ``await``) when done: it runs ``mq_context_cleanup`` and
    ``mq_cleanup`` as the MTA would.
    """
    from mqtwisted.plugins import PluginRunner, plugin_from_module

    if isinstance(plugins, str):
        runner = PluginRunner.from_directory(plugins, threads=threads, timeout=timeout)
    else:
        runner = PluginRunner([plugin_from_module(m) for m in plugins], threads=threads, timeout=timeout)
    runner.start()
    return runner


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
