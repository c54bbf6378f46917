"""Wiring: options in, a MultiService out.  Every piece pickles, so the tree can live in a TAP file.

Start order matters and is the order of the children: the queue first (nothing is accepted before
it can store), then plugins, then delivery, then the listening ports.  Shutdown runs in reverse.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger

from mqtwisted.cleanup import Cleanup
from mqtwisted.connection import HookRunner, NoHooks
from mqtwisted.queue import Queue
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.smtp.server import ServerConfig, SMTPFactory
from mqtwisted.tls import ServerTLS, make_self_signed

log = Logger()


class QueueService(service.Service):
    """Runs a queue backend for the lifetime of the MTA."""

    name = "queue"

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def startService(self) -> None:
        super().startService()
        self.queue.start().addErrback(lambda f: log.failure("queue failed to start", f))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.queue.stop()


def make_queue(options: Any) -> Queue:
    url = options["queue"]
    if url == "spool":
        from mqtwisted.queue.spool import SpoolQueue

        return SpoolQueue(os.path.join(options["data-dir"], "spool.sqlite3"))
    if url.startswith(("amqp://", "amqps://")):
        from mqtwisted.queue.amqp import AmqpQueue

        return AmqpQueue(url, prefetch=options["amqp-prefetch"])
    from mqtwisted.options import ConfigError

    raise ConfigError(f"--queue: expected spool or amqp://..., got {url!r}")


def server_tls(options: Any) -> ServerTLS:
    cert, key = options["smtp-certificate"], options["smtp-key"]
    if not cert:
        cert = os.path.join(options["data-dir"], "smtp-cert.pem")
        key = os.path.join(options["data-dir"], "smtp-key.pem")
        if not (os.path.exists(cert) and os.path.exists(key)):
            make_self_signed(cert, key, options["hostname"])
    return ServerTLS(cert, key)


def make_hooks(options: Any) -> tuple[HookRunner, service.Service | None]:
    if not options["plugin-directory"]:
        return NoHooks(), None
    from mqtwisted.plugins import PluginService

    plugin_service = PluginService(
        options["plugin-directory"],
        threads=options["threads"] or os.cpu_count() or 1,
        timeout=options["plugin-timeout"],
    )
    return plugin_service.runner, plugin_service


def make_service(options: Any) -> service.MultiService:
    """The whole MTA for parsed :class:`mqtwisted.options.MQOptions`."""
    from mqtwisted.auth import load_checker

    data_dir = options["data-dir"]
    os.makedirs(os.path.join(data_dir, "incoming"), exist_ok=True)
    top = service.MultiService()

    queue = make_queue(options)
    QueueService(queue).setServiceParent(top)

    hooks, plugin_service = make_hooks(options)
    if plugin_service is not None:
        plugin_service.setServiceParent(top)

    if options["delivery"]:
        delivery = make_delivery(options, queue, hooks)
        if delivery is not None:
            delivery.setServiceParent(top)

    relay = RelayPolicy(
        trusted=tuple(options["smtp-range"]),
        local_domains=frozenset(d.lower().rstrip(".") for d in options["local-domains"]),
    )
    config = ServerConfig(
        hostname=options["hostname"],
        max_size=options["smtp-maxsize"],
        max_line=options["smtp-max-line"],
        timeout=options["smtp-timeout"],
        max_recipients=options["smtp-max-recipients"],
        max_errors=options["smtp-max-errors"],
        max_connections=options["smtp-connections"],
        max_connections_per_ip=options["smtp-connections-per-ip"],
        auth_plaintext=options["smtp-auth-plaintext"],
        spill_dir=os.path.join(data_dir, "incoming"),
    )
    cleanup = Cleanup(
        queue,
        relay,
        options["hostname"],
        hooks=hooks,
        inbox=options["inbox"],
        local=options["local"],
        extract=options["smtp-extract"],
    )
    tls = server_tls(options)
    auth = load_checker(options["smtp-auth"]) if options["smtp-auth"] else None
    factory = SMTPFactory(config, cleanup, relay, hooks=hooks, auth=auth, tls=tls)
    for port in options["smtp-port"]:
        internet.TCPServer(port, factory, interface=options["smtp-ip"]).setServiceParent(top)
    if options["smtp-secure-port"] is not None:
        internet.SSLServer(
            options["smtp-secure-port"], factory, tls, interface=options["smtp-ip"]
        ).setServiceParent(top)
    return top


def make_delivery(options: Any, queue: Queue, hooks: HookRunner) -> service.Service | None:
    try:
        from mqtwisted.delivery import make_delivery_service
    except ImportError:
        log.warn("delivery is not available in this build; running as a receive-only node")
        return None
    return make_delivery_service(options, queue, hooks)
