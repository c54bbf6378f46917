"""The parts both kinds of process build from the options: the queue and the plugin host.

The MTA (:mod:`mqtwisted.service`) and a delivery worker (:mod:`mqtwisted.delivery_process`) both
run a queue and the plugins; only the MTA runs the SMTP server.  Keeping these here lets a worker
build its tree without loading the inbound side.  See docs/architecture.rst.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mqtwisted.pluginhost import PluginHost
from mqtwisted.queue import Queue

log = Logger()


class QueueService(service.Service):
    """Runs a queue backend for the lifetime of the MTA."""

    name = "queue"

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        #: fires when the queue has started (amqp: connected, or given up waiting for the broker)
        self.started: defer.Deferred[None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "started": None}

    def startService(self) -> None:
        super().startService()
        self.started = self.queue.start()
        self.started.addErrback(lambda f: log.failure("queue failed to start", f))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.queue.stop()


def make_queue(options: Any, settle_delay: float = 0.0) -> Queue:
    """The queue backend of ``--queue``; ``settle_delay``: see SpoolQueue (the spool only)."""
    url = options["queue"]
    if url == "spool":
        from mqtwisted.queue.spool import SpoolQueue

        return SpoolQueue(os.path.join(options["data-dir"], "spool.sqlite3"), settle_delay=settle_delay)
    from mqtwisted.options import ConfigError

    if url.startswith(("amqp://", "amqps://")):
        from mqtwisted.queue.amqp import AmqpQueue

        try:
            return AmqpQueue(url, prefetch=options["amqp-prefetch"],
                             queue_type=options["amqp-queue-type"],
                             max_backoff=options["amqp-max-backoff"])
        except ValueError as e:
            # urllib's and pika's errors do not name the option; the URL is not repeated (it
            # holds the password)
            raise ConfigError(f"--queue: {e}") from None
    raise ConfigError(f"--queue: expected spool or amqp://..., got {url!r}")


def tool_queue(queue: str, data_dir: str, queue_type: str = "classic") -> Queue:
    """The queue of ``--queue`` for a one-shot tool (``mqmta inject``, ``bench.inject``): the
    MTA's own option defaults for everything else, so a new queue option cannot be left out,
    and a prefetch of 1 (a tool consumes nothing)."""
    from mqtwisted.options import MQOptions

    options = MQOptions()
    options.parseOptions(["--queue", queue, "--data-dir", os.path.abspath(data_dir),
                          "--amqp-prefetch", "1", "--amqp-queue-type", queue_type])
    return make_queue(options)


def make_hooks(options: Any) -> PluginHost:
    """The plugin host for ``--plugin-directory`` (no plugins: it answers every hook with None)."""
    return PluginHost(options["plugin-directory"], options["threads"], options["plugin-timeout"])
