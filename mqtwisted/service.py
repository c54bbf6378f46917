"""Wiring: options in, an :class:`MTAService` out.  Every piece pickles, so the tree can live in a
TAP file (no sockets, reactors, pools or endpoints in pickled state: each service makes those when
it starts).

Start order matters and is the order of the children: the queue first (nothing is accepted before
it can store), then plugins, then delivery, then the listening ports, then the web port.  Shutdown
runs in reverse, one stage after the other (:meth:`MTAService.stopService`, waiting with
:mod:`mqtwisted.shutdown`).  What a delivery worker process builds as well (the queue, the plugin
host) comes from :mod:`mqtwisted.wiring`, so that a worker never imports this module.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.components import Componentized

from mqtwisted import shutdown
from mqtwisted.anvil import Rate
from mqtwisted.cleanup import Cleanup
from mqtwisted.connection import HookRunner
from mqtwisted.filtering import NoFilters
from mqtwisted.listening import SSLListener, TCPListener
from mqtwisted.metrics import METRICS
from mqtwisted.options import OPTIONS
from mqtwisted.pluginhost import PluginHost
from mqtwisted.queue import Queue
from mqtwisted.replies import SHUTTING_DOWN
from mqtwisted.smtp.config import ServerConfig
from mqtwisted.smtp.factory import BehindProxy, SMTPFactory
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.tls import ServerTLS, server_tls
from mqtwisted.wiring import QueueService, make_hooks, make_queue

log = Logger()


#: Options applied by SIGHUP (README: "Reloading").  The rest need a restart: they are bound to
#: listening sockets, the queue's storage, or the shape of the service tree.
RELOADABLE = (
    "smtp-range", "local-domains", "smtp-auth", "smtp-auth-plaintext", "smtp-maxsize",
    "smtp-max-line", "smtp-timeout", "smtp-connections", "smtp-connections-per-ip",
    "smtp-max-recipients", "smtp-max-errors", "smtp-extract", "smtp-certificate", "smtp-key",
    "plugin-directory", "threads", "plugin-timeout", "smarthost", "retry-interval",
    "max-delivertime", "max-attempts", "delay-warning-time", "max-messages-per-connection",
    "max-connections-per-domain", "shutdown-timeout", "dkim-keys", "shaping", "smtp-defaultips",
    "bounce-rules", "smtp-connection-rate", "smtp-auth-failures", "smtp-limit-exceptions",
    "smtp-proxy-from", "queue-minfree",
    "milters", "milters-out", "milter-timeout", "milter-default-action",
)



def _server_config(options: Any) -> ServerConfig:
    return ServerConfig(
        hostname=options["hostname"],
        max_size=options["smtp-maxsize"],
        max_line=options["smtp-max-line"],
        timeout=options["smtp-timeout"],
        max_recipients=options["smtp-max-recipients"],
        max_errors=options["smtp-max-errors"],
        max_connections=options["smtp-connections"],
        max_connections_per_ip=options["smtp-connections-per-ip"],
        auth_plaintext=options["smtp-auth-plaintext"],
        spill_dir=os.path.join(options["data-dir"], "incoming"),
        connection_rate=Rate.parse(options["smtp-connection-rate"]),
        auth_failures=Rate.parse(options["smtp-auth-failures"]),
        limit_exceptions=tuple(options["smtp-limit-exceptions"]),
        proxy_from=tuple(options["smtp-proxy-from"]),
        min_free=options["queue-minfree"],
    )


def _relay(options: Any) -> RelayPolicy:
    return RelayPolicy(
        trusted=tuple(options["smtp-range"]),
        local_domains=frozenset(d.lower().rstrip(".") for d in options["local-domains"]),
    )


def _verifier(options: Any) -> Any:
    """``--verify-inbound on``: the checks cleanup asks for (their libraries load only then)."""
    if not options["verify-inbound"]:
        return None
    from mqtwisted.authcheck.verifier import InboundVerifier
    from mqtwisted.jsonvalues import parse_hostport

    server = options["dns-server"]
    return InboundVerifier(options["hostname"], [parse_hostport(server, 53)] if server else None)


class MTAService(service.MultiService):
    """The whole MTA.  Children (in start order): ``queue``, ``plugins``, ``delivery``, the SMTP
    ports, ``web``.

    Start is the MultiService's, in that order.  Stop is sequential, which MultiService's is not
    (it stops every child at once, so the queue would close under sessions still writing to it):
    stop listening, let sessions finish their transaction (up to ``shutdown-timeout``), let
    deliveries finish or give their messages back, stop the plugins (``mq_context_cleanup`` in
    every thread, ``mq_cleanup`` once), close the queue, close the web port.
    """

    def __init__(self, options: Any, signals: bool = False) -> None:
        super().__init__()
        #: the command line it was made from: SIGHUP parses it again (and re-reads --config)
        self.argv: list[str] | None = list(options.argv) if getattr(options, "argv", None) is not None else None
        self.options = {name: options[name] for name, *_ in OPTIONS}
        self.signals = signals
        self.json_log_path: str | None = getattr(options, "json_log_path", None)
        self.log_to_stdout: bool = getattr(options, "log_to_stdout", False)
        self.factory: SMTPFactory | None = None
        self.cleanup: Cleanup | None = None
        self.tls: ServerTLS | None = None
        self._stopping: defer.Deferred[None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_stopping"] = None
        state.pop("_previous_sighup", None)
        return state

    # -- twistd plumbing ---------------------------------------------------------------------------

    def setServiceParent(self, parent: Any) -> None:
        # twistd (and mqmta mktap) hand us the Application itself, before adapting it: the one
        # place a service can give twistd a log observer (AppLogger.start reads the component).
        if isinstance(parent, Componentized):
            from twisted.logger import ILogObserver

            from mqtwisted.oplog import JSONLogObserver, TextLogObserver

            if parent.getComponent(ILogObserver, None) is None:
                if self.options["log-format"] == "json":
                    parent.setComponent(ILogObserver, JSONLogObserver(self.json_log_path))
                elif self.log_to_stdout:
                    # The same lines as twistd's own observer on stdout, made for less CPU;
                    # a --logfile keeps twistd's observer (and its rotation).
                    parent.setComponent(ILogObserver, TextLogObserver())
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        if self.factory is not None:
            factory, queue_service = self.factory, self.getServiceNamed("queue")
            factory.hold_greetings()
            queue_service.started.addBoth(lambda _: factory.release_greetings())
        if self.signals:
            self._install_sighup()

    def _install_sighup(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            return
        from twisted.internet import reactor

        def on_hup(signum: int, frame: Any) -> None:
            # Signal handlers run between bytecodes of whatever the reactor was doing: hand over.
            reactor.callFromThread(self.reload)

        self._previous_sighup = signal.signal(signal.SIGHUP, on_hup)

    # -- parts -----------------------------------------------------------------------------------

    def _child(self, name: str) -> Any:
        try:
            return self.getServiceNamed(name)
        except KeyError:
            return None

    @property
    def queue(self) -> Queue:
        return self.getServiceNamed("queue").queue  # type: ignore[attr-defined,no-any-return]

    @property
    def plugins(self) -> PluginHost:
        return self.getServiceNamed("plugins")  # type: ignore[return-value]

    def deliveries(self) -> list[Any]:
        """The delivery service, or one per delivery worker process."""
        return [s for s in self if s.name == "delivery" or (s.name or "").startswith("delivery-")]

    @property
    def web(self) -> Any:
        return self._child("web")

    def smtp_ports(self) -> list[internet.TCPServer]:
        return [s for s in self if isinstance(s, (internet.TCPServer, internet.SSLServer))]

    # -- status ----------------------------------------------------------------------------------

    def queue_stats(self) -> defer.Deferred[dict[str, int]]:
        """Documents per queue, every named queue included: the spool counts only the queues
        that hold documents, and a depth that vanished when its queue emptied would leave
        ``/metrics`` gauges and ``/status`` readers with the last non-zero value."""
        from mqtwisted.queue import QUEUE_NAMES

        names = {*QUEUE_NAMES, self.options["inbox"], self.options["outbox"], self.options["local"]}
        return self.queue.stats().addCallback(lambda counts: {**dict.fromkeys(names, 0), **counts})

    @property
    def shutting_down(self) -> bool:
        """True once the graceful stop has begun."""
        return self._stopping is not None

    def status_counts(self) -> dict[str, Any]:
        """The live gauges (no I/O): connections, delivery in flight, plugin threads."""
        factory = self.factory
        connections = pending = 0
        for delivery in self.deliveries():
            c, p = delivery.counts()
            connections, pending = connections + c, pending + p
        host = self.plugins
        runners = host.runners()
        return {
            "connections": {
                "open": len(factory.sessions) if factory is not None else 0,
                "total": factory.total if factory is not None else 0,
            },
            "delivery": {"connections": connections, "pending": pending},
            "plugins": {
                "runners": len(runners),
                "threads": sum(len(r.contexts) for r in runners),
                "busy": METRICS.busy_threads(),
            },
        }

    # -- reload (SIGHUP) -----------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the command line and ``--config``; apply the :data:`RELOADABLE` values and
        reload the plugin directory.  Connections stay up; a bad config changes nothing."""
        from mqtwisted.auth import load_checker
        from mqtwisted.options import MQOptions

        log.info("SIGHUP: reloading configuration and plugins")
        fresh: Any = self.options
        if self.argv is not None:
            try:
                parsed = MQOptions()
                parsed.parseOptions(self.argv)
                fresh = {name: parsed[name] for name, *_ in OPTIONS}
                auth = load_checker(fresh["smtp-auth"]) if fresh["smtp-auth"] else None
            except Exception as e:
                log.error("reload refused, configuration unchanged: {error}", error=str(e))
                return False
        else:
            auth = self.factory.auth if self.factory is not None else None
        changed = [k for k in fresh if fresh[k] != self.options.get(k)]
        fixed = [k for k in changed if k not in RELOADABLE]
        if fixed:
            log.warn("reload: {keys} changed but need a restart; keeping the running values",
                     keys=", ".join(fixed))
        ok = self.plugins.reload(
            fresh["plugin-directory"], fresh["threads"], fresh["plugin-timeout"]
        )
        if not ok:
            return False
        options = dict(self.options)
        options.update({k: fresh[k] for k in RELOADABLE})
        self.options = options
        if self.factory is not None:
            # Sessions read factory.config and factory.relay per command: new values apply to new
            # sessions at once and to running ones from their next command.
            self.factory.config = _server_config(options)
            self.factory.relay = _relay(options)
            self.factory.auth = auth
            # New sessions ask the new milters; open ones keep the chain they began with.
            self.factory.filters = _milters(options) or NoFilters()
        if self.cleanup is not None:
            self.cleanup.relay = self.factory.relay if self.factory is not None else _relay(options)
            self.cleanup.extract = options["smtp-extract"]
        if self.tls is not None:
            try:
                self.tls.reload(options["smtp-certificate"], options["smtp-key"])
            except ValueError as e:
                log.error("reload: the certificate in use is kept: {error}", error=e)
        for delivery in self.deliveries():
            delivery.reconfigure(options)
        log.info("reload done; changed: {keys}", keys=", ".join(k for k in changed if k in RELOADABLE) or "nothing")
        return True

    # -- graceful stop ---------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        if self._stopping is None:
            service.Service.stopService(self)
            self._stopping = defer.ensureDeferred(self._stop())
        d: defer.Deferred[None] = defer.Deferred()
        self._stopping.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    async def _stop(self) -> None:
        from twisted.internet import reactor

        timeout = float(self.options.get("shutdown-timeout") or 0)
        deadline = reactor.seconds() + timeout
        log.info("shutting down: no new connections; sessions and deliveries get {t}s", t=timeout)
        await shutdown.each([s.stopService for s in self.smtp_ports()])
        if self.factory is not None:
            await shutdown.drain_sessions(self.factory.sessions, deadline, SHUTTING_DOWN)
        await defer.gatherResults([
            defer.ensureDeferred(
                shutdown.bounded(d.stopService, max(0.0, deadline - reactor.seconds()) + 1.0, d.name)
            )
            for d in self.deliveries()
        ])
        await shutdown.each([self.plugins.stopService])
        await shutdown.each([self.getServiceNamed("queue").stopService])
        if self.web is not None:
            await shutdown.each([self.web.stopService])
        log.info("shutdown complete: accepted {n} message(s) since start",
                 n=sum(v for k, v in METRICS.messages.items() if k < 400))


def make_service(options: Any, signals: bool = False) -> MTAService:
    """The whole MTA for parsed :class:`mqtwisted.options.MQOptions`.

    ``signals``: handle SIGHUP (reload); twistd and mktap say so, in-process tests do not.
    """
    from mqtwisted.auth import load_checker

    data_dir = options["data-dir"]
    os.makedirs(os.path.join(data_dir, "incoming"), exist_ok=True)
    top = MTAService(options, signals=signals)

    queue = make_queue(options)
    QueueService(queue).setServiceParent(top)

    hooks = make_hooks(options)
    hooks.setServiceParent(top)

    if options["delivery"]:
        for delivery in make_delivery(options, queue, hooks):
            delivery.setServiceParent(top)

    relay = _relay(options)
    cleanup = Cleanup(
        queue,
        relay,
        options["hostname"],
        hooks=hooks,
        inbox=options["inbox"],
        local=options["local"],
        extract=options["smtp-extract"],
        refused=options["refused"],
        verifier=_verifier(options),
        dsn=options["dsn"],
    )
    tls = server_tls(options)
    auth = load_checker(options["smtp-auth"]) if options["smtp-auth"] else None
    factory = SMTPFactory(_server_config(options), cleanup, relay, hooks=hooks, auth=auth, tls=tls,
                          filters=_milters(options))
    top.factory, top.cleanup, top.tls = factory, cleanup, tls
    for port in options["smtp-port"]:
        # A deep backlog: bursts of connections wait in the kernel instead of being refused.
        TCPListener("smtp-port", port, factory, backlog=1024, interface=options["smtp-ip"]).setServiceParent(top)
    for port in options["smtp-proxy-ports"]:
        TCPListener("smtp-proxy-ports", port, BehindProxy(factory), backlog=1024, interface=options["smtp-ip"]).setServiceParent(top)
    if options["smtp-secure-port"] is not None:
        SSLListener(
            "smtp-secure-port", options["smtp-secure-port"], factory, tls, interface=options["smtp-ip"]
        ).setServiceParent(top)
    if options["www-port"] is not None:
        from mqtwisted.web import WebService

        WebService(top, options["www-port"], options["www-ip"]).setServiceParent(top)
    return top


def _milters(options: Any) -> Any:
    """The ``--milters`` chain (None without milters: the server then asks none)."""
    if not options["milters"]:
        return None
    from mqtwisted.milter.chain import MilterChain

    return MilterChain(options["milters"], options["milter-timeout"], options["milter-default-action"],
                       options["hostname"])


def make_delivery(options: Any, queue: Queue, hooks: HookRunner) -> list[service.Service]:
    """The delivery service in this process, or one per worker process (delivery_process)."""
    workers = options["delivery-processes"]
    if not options["state"] and (options["queue"] != "spool" or workers > 1):
        log.warn("shaping limits (connections, rates, warm-up) are enforced per {what}: other nodes on "
                 "this broker keep their own; --state redis://host:port/db shares them",
                 what="delivery process" if workers > 1 else "node")
    if workers:
        from mqtwisted.delivery_process import DeliveryProcess, worker_log

        if options["dkim-keys"]:
            # The workers read it again; a bad one must stop the start here, with the file named,
            # not make each worker die at birth.
            from mqtwisted.signing import load_keys_file

            load_keys_file(options["dkim-keys"])

        log_to = worker_log(options["log-format"], getattr(options, "json_log_path", None),
                            getattr(options, "log_to_stdout", False))
        return [
            DeliveryProcess(options, queue, name="delivery" if i == 0 else f"delivery-{i}", log_to=log_to,
                            silent_limit=options["delivery-silence-limit"],
                            restart_delays=options["delivery-restart-delays"])
            for i in range(workers)
        ]
    from mqtwisted.delivery import make_delivery_service

    return [make_delivery_service(options, queue, hooks)]
