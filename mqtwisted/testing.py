"""Helpers for testing mqmta and plugins for it, under trial or pytest (pytest-twisted).

``start_mta`` runs a whole MTA in-process on free loopback ports, built from the same options as
``twistd mqmta`` (keyword ``plugin_directory="..."`` is ``--plugin-directory ...``)::

    mta = yield start_mta(str(tmp_path), plugin_directory="plugins")
    ...  # smtplib.SMTP("127.0.0.1", mta.port) in a thread, or any client
    docs = yield mta.documents("outbox")
    yield mta.stop()
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.defer import Deferred

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
