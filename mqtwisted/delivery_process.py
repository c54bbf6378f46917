"""Delivery in a process of its own (``--delivery-processes 1``), as Postfix runs smtpd and smtp
apart: the SMTP server and the outbound client then use two cores instead of sharing one
reactor thread and one GIL.

The parent (:class:`DeliveryProcess`, the MTA's ``delivery`` child service) spawns
``python -m mqtwisted.delivery_process`` and talks to it over pipes, one JSON object per line:

* fd 0 (parent → worker): ``{"options": …}`` first, with the MTA's option values; then an empty
  line whenever this process published to the outbox (the worker looks for due mail at once
  instead of at its next poll), ``{"reload": …}`` on SIGHUP; end of file means stop.
* fd 3 (worker → parent): ``{"metrics": …}`` once a second (delivery attempts, hook timings and
  the live gauges for ``/metrics`` and ``/status``), and ``{"log": event}`` for log events where
  the worker cannot write them itself.

Log lines: where the MTA's log is a stream both processes can append to (standard output, or the
``--log-format json`` file), the worker writes its own lines there, marked ``[delivery]``: a line
forwarded through the parent would cost the busy SMTP process a JSON decode and a second
formatting per delivery attempt.  Where it is twistd's rotating ``--logfile``, only the parent
may write, and events are forwarded (:func:`worker_log` decides).  fd 1 and 2 (plugins'
``print``, tracebacks) are the parent's own in the first case; otherwise the parent logs them line
by line.

The worker opens the same queue and loads the same plugins (``mq_initialize`` runs once in each
process; the outbound hooks run in the worker).  On the spool, one worker holds
``delivery.lock`` in the data directory while it consumes, because leases live in the consuming
process's memory: a worker started while an old one is still draining (the parent was killed and
restarted) waits for it instead of delivering the same documents twice.

Stopping: end of file on fd 0, SIGTERM or SIGINT stop the worker gracefully (in-flight messages
finish or go back to the queue).  A worker that dies is started again, after 1 s, doubling up to
30 s while it keeps dying young (``--delivery-restart-delays``); its leases die with it, so its
messages are simply due again.  A worker that sends nothing for ``--delivery-silence-limit``
seconds (30: its reactor blocked by a plugin, or the process stopped) is killed and replaced the
same way; before its first word a new worker gets at least 30 s (STARTING_LIMIT) to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger, eventAsJSON, eventFromJSON, globalLogPublisher

from mqtwisted.metrics import METRICS
from mqtwisted.reactors import LazyReactor

log = Logger()

#: seconds between two metric snapshots from the worker
SNAPSHOT_INTERVAL = 1.0
#: a worker silent this long (no snapshot: its reactor is blocked, or it was stopped) is killed
#: and replaced (the default of ``--delivery-silence-limit``)
SILENT_LIMIT = 30.0
#: what a new worker gets for its first word when the silence limit is lower: starting (imports,
#: plugins) takes seconds on a loaded machine, and a low limit must not kill every replacement
STARTING_LIMIT = 30.0
#: a worker that lived this long was healthy: the next restart comes after the shortest delay
HEALTHY_AFTER = 60.0
#: the waits before restarting a worker that keeps dying young, the last one repeating (the
#: default of ``--delivery-restart-delays``)
RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
LOCK_FILE = "delivery.lock"
#: seconds the worker's settles wait to share one spool transaction (SpoolQueue.settle_delay)
SETTLE_DELAY = 0.02
#: shortest time between two pokes of the worker (one per interval, however many commits)
POKE_INTERVAL = 0.005
#: longest line kept waiting for its newline on the worker's pipes
MAX_LINE = 1 << 16


def worker_log(log_format: str, json_path: str | None, to_stdout: bool) -> dict[str, Any] | None:
    """Where a worker writes its log lines: ``{"format": "text"|"json", "path": …}`` to write
    them itself (no path: standard output), ``None`` to forward them to the parent."""
    if log_format == "json" and json_path:
        return {"format": "json", "path": json_path}
    if to_stdout:
        return {"format": log_format, "path": None}
    return None


def worker_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The MTA's option values (:data:`mqtwisted.options.OPTIONS`) as JSON-able data."""
    from mqtwisted.options import OPTIONS

    return {name: _jsonable(options[name]) for name, *_ in OPTIONS}


def _jsonable(value: Any) -> Any:
    # Option values are plain data (options.py keeps parsed rates as their text); a value JSON
    # cannot carry fails here, at the parent, where the test of this function sees it.
    return list(value) if isinstance(value, tuple) else value


# -- the parent's side ------------------------------------------------------------------------------


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: DeliveryProcess) -> None:
        self.owner = owner
        self.partial: dict[int, bytes] = {}
        self.ended: defer.Deferred[None] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        # fd 3 carries whole JSON lines, whatever their length; fd 1 and 2 are whatever plugins
        # print, logged in pieces when they never end a line.
        lines, self.partial[fd] = _split_lines(self.partial.get(fd, b""), data, None if fd == 3 else MAX_LINE)
        for line in lines:
            if fd == 3:
                self.owner.message_received(line)
            elif line.strip():
                log.info("delivery worker {pid} fd {fd}: {line}", pid=self.transport.pid, fd=fd,
                         line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:
        self.owner.worker_ended(self, reason)
        self.ended.callback(None)


class DeliveryProcess(service.Service):
    """Runs delivery in a worker process and restarts it when it dies (see the module doc).

    ``queue`` is this process's queue: the parent only publishes to it, and is told through
    :meth:`~mqtwisted.queue.Queue.watch` when it published to the outbox, to poke the worker.
    """

    def __init__(self, options: Mapping[str, Any], queue: Any, name: str = "delivery",
                 log_to: dict[str, Any] | None = None, silent_limit: float = SILENT_LIMIT,
                 restart_delays: Sequence[float] = RESTART_DELAYS, reactor: Any = None) -> None:
        self.name = name
        self.log_to = log_to
        self.options = worker_options(options)
        self.queue = queue
        #: seconds without a line from the worker before it is killed and replaced
        self.silent_limit = silent_limit
        #: waits before each restart of a worker that keeps dying young; the last one repeats
        self.restart_delays = tuple(restart_delays) or RESTART_DELAYS
        self._reactor = reactor
        self._init_runtime()

    def _init_runtime(self) -> None:
        self.worker: _WorkerProtocol | None = None
        self._started_at = 0.0
        self._failures = 0
        self._restart: Any = None
        self._poke_call: Any = None
        self._poked_at = float("-inf")
        self._heard = 0.0
        self._spoken = False
        self._watchdog: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "queue": self.queue, "name": self.name, "parent": self.parent,
                "log_to": self.log_to, "silent_limit": self.silent_limit, "restart_delays": self.restart_delays}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {"silent_limit": SILENT_LIMIT, "restart_delays": RESTART_DELAYS, **state}  # older TAPs
        self.__dict__.update(state)
        self.running = 0
        self._init_runtime()

    reactor = LazyReactor()

    # -- life cycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.queue.watch(self.options.get("outbox") or "outbox", self._published)
        self._spawn()
        self._watchdog = self.reactor.callLater(self.silent_limit / 3, self._check_heard)

    def _check_heard(self) -> None:
        self._watchdog = self.reactor.callLater(self.silent_limit / 3, self._check_heard)
        worker = self.worker
        silent = self.reactor.seconds() - self._heard
        limit = self.silent_limit if self._spoken else max(self.silent_limit, STARTING_LIMIT)
        if worker is not None and silent > limit:
            _kill(worker, f"silent for {silent:.0f}s (blocked or stopped)")

    def stopService(self) -> defer.Deferred[None]:
        """Close the worker's stdin and wait for it to finish (the MTA bounds the wait)."""
        super().stopService()
        for call in (self._restart, self._watchdog, self._poke_call):
            if call is not None and call.active():
                call.cancel()
        worker = self.worker
        if worker is None:
            return defer.succeed(None)
        worker.transport.closeStdin()

        # The MTA cancels this wait after shutdown-timeout: the worker is then cut off, and its
        # unsettled messages are due again at the next start.
        d: defer.Deferred[None] = defer.Deferred(canceller=lambda _: _kill(worker, "did not stop"))
        worker.ended.addBoth(lambda _: d.called or d.callback(None))
        return d

    def _spawn(self) -> None:
        self._restart = None
        if not self.running:
            return
        worker = _WorkerProtocol(self)
        env = dict(os.environ)
        # The worker imports this very package, wherever it was imported from.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        shared = self.log_to is not None and self.log_to["path"] is None  # the same stdout
        try:
            self.reactor.spawnProcess(
                worker, sys.executable, [sys.executable, "-m", "mqtwisted.delivery_process"],
                env=env, path=os.getcwd(),
                childFDs={0: "w", 1: 1 if shared else "r", 2: 2 if shared else "r", 3: "r"},
            )
        except OSError as e:  # no fork (out of memory, process limit): try again later
            log.error("cannot start a delivery worker: {error}; trying again in {delay:.0f}s",
                      error=e, delay=self.restart_delays[-1])
            self._restart = self.reactor.callLater(self.restart_delays[-1], self._spawn)
            return
        self.worker = worker
        self._started_at = self._heard = self.reactor.seconds()
        self._spoken = False
        worker.transport.write(_line({"options": self.options, "log": self.log_to, "name": self.name}))
        log.info("delivery worker {pid} started", pid=worker.transport.pid)

    def worker_ended(self, worker: _WorkerProtocol, reason: Any) -> None:
        if worker is not self.worker:
            return
        self.worker = None
        METRICS.worker_ended(self.name)
        if not self.running:
            log.info("delivery worker stopped ({reason})", reason=reason.getErrorMessage())
            return
        lived = self.reactor.seconds() - self._started_at
        if lived >= HEALTHY_AFTER:
            self._failures = 0
        delay = self.restart_delays[min(self._failures, len(self.restart_delays) - 1)]
        self._failures += 1
        log.error("delivery worker ended after {lived:.1f}s ({reason}); starting another in {delay:.0f}s",
                  lived=lived, reason=reason.getErrorMessage(), delay=delay)
        self._restart = self.reactor.callLater(delay, self._spawn)

    # -- messages ------------------------------------------------------------------------------

    def _published(self) -> None:
        # At most one poke per POKE_INTERVAL, however many commits there were: each poke wakes
        # the worker for a spool fetch, and fewer, larger fetches cost both processes less.
        if self._poke_call is None:
            wait = self._poked_at + POKE_INTERVAL - self.reactor.seconds()
            self._poke_call = self.reactor.callLater(max(0.0, wait), self._poke)

    def _poke(self) -> None:
        self._poke_call = None
        self._poked_at = self.reactor.seconds()
        if self.worker is not None:
            self.worker.transport.write(b"\n")

    def reconfigure(self, options: Mapping[str, Any]) -> None:
        """SIGHUP: new delivery settings and plugins, applied by the worker (no restart)."""
        self.options = worker_options(options)
        if self.worker is not None:
            self.worker.transport.write(_line({"reload": self.options}))

    def message_received(self, line: bytes) -> None:
        self._heard = self.reactor.seconds()
        if not self._spoken:
            self._spoken = True
            pid = self.worker.transport.pid if self.worker is not None else None
            log.info("delivery worker {pid} ready after {took:.1f}s", pid=pid,
                     took=self._heard - self._started_at)
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("delivery worker sent a line that is not JSON: {line!r}", line=line[:200])
            return
        if "log" in message:
            globalLogPublisher(eventFromJSON(message["log"]))
        elif "metrics" in message:
            METRICS.worker_reported(self.name, message["metrics"])

    def destination_rows(self) -> list[dict[str, Any]]:
        """The worker's destinations board, as it last reported."""
        return list(METRICS.workers.get(self.name, {}).get("destinations", []))

    def counts(self) -> tuple[int, int]:
        """(outbound connections, messages waiting for one), as the worker last reported."""
        gauges = METRICS.workers.get(self.name, {}).get("gauges", {})
        return int(gauges.get("connections", 0)), int(gauges.get("pending", 0))


def _kill(worker: _WorkerProtocol, why: str) -> None:
    if worker.transport.pid is not None:  # None: it has ended already
        log.error("delivery worker {pid} {why}; killing it", pid=worker.transport.pid, why=why)
        worker.transport.signalProcess("KILL")


def _line(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _split_lines(pending: bytes, data: bytes, limit: int | None = None) -> tuple[list[bytes], bytes]:
    """The complete lines in ``pending + data`` and what is left of an unfinished one (which is
    given as a line of its own once it exceeds ``limit``)."""
    lines = (pending + data).split(b"\n")
    rest = lines.pop()
    if limit is not None and len(rest) > limit:
        lines.append(rest)
        rest = b""
    return lines, rest


# -- the worker's side ----------------------------------------------------------------------------------


class _Control(protocol.Protocol):
    """fd 0 in, fd 3 out (:class:`twisted.internet.stdio.StandardIO`)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        lines, self.buffer = _split_lines(self.buffer, data)
        for line in lines:
            try:
                self.worker.command(json.loads(line) if line.strip() else {})
            except Exception:
                # A bad reload must not cut the pipe: that would stop the worker.
                log.failure("delivery worker: command from the MTA failed: {line!r}", line=line[:200])

    def connectionLost(self, reason: Any = None) -> None:
        self.worker.parent_gone()


class Worker:
    """The service tree of a worker: its queue, its plugins, and the delivery service."""

    def __init__(self, options: dict[str, Any], reactor: Any) -> None:
        from mqtwisted.delivery import make_delivery_service
        from mqtwisted.wiring import QueueService, make_hooks, make_queue

        self.options = options
        self.reactor = reactor
        self.queue = make_queue(options, settle_delay=SETTLE_DELAY)
        self.top = service.MultiService()
        QueueService(self.queue).setServiceParent(self.top)
        self.hooks = make_hooks(options)
        self.hooks.setServiceParent(self.top)
        self.delivery = make_delivery_service(options, self.queue, self.hooks)
        self.channel: Any = None
        self.lock_fd: int | None = None
        self.stopping = False

    def start(self) -> None:
        self.top.startService()  # the queue and the plugins; delivery once the lock is held
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self._take_lock()
        self.reactor.callLater(SNAPSHOT_INTERVAL, self._send_snapshot)

    def _take_lock(self) -> None:
        if self.stopping:
            return
        if self.options.get("queue", "spool") == "spool":
            import fcntl

            if self.lock_fd is None:
                self.lock_fd = os.open(os.path.join(self.options["data-dir"], LOCK_FILE),
                                       os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another delivery worker still holds {f}; waiting", f=LOCK_FILE)
                self.reactor.callLater(1.0, self._take_lock)
                return
        self.delivery.setServiceParent(self.top)  # starts it: the top service is running

    def command(self, message: dict[str, Any]) -> None:
        if not message:
            self.queue.poke(self.options.get("outbox") or "outbox")
        elif "reload" in message:
            self.options = message["reload"]
            self.hooks.reload(self.options["plugin-directory"], self.options["threads"],
                              self.options["plugin-timeout"])
            self.delivery.reconfigure(self.options)

    def parent_gone(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        with contextlib.suppress(ReactorNotRunning):  # already stopping (SIGTERM came first)
            self.reactor.stop()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        # The MTA's order: delivery first (finish or give back), then plugins, then the queue.
        self.stopping = True
        if self.delivery.running:
            yield self.delivery.disownServiceParent()
        yield self.top.stopService()

    def send(self, message: Mapping[str, Any]) -> None:
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.write(_line(message))

    def _send_snapshot(self) -> None:
        connections, pending = self.delivery.counts() if self.delivery.running else (0, 0)
        snapshot = METRICS.snapshot({"connections": connections, "pending": pending})
        snapshot["destinations"] = self.delivery.destination_rows() if self.delivery.running else []
        self.send({"metrics": snapshot})
        self.reactor.callLater(SNAPSHOT_INTERVAL, self._send_snapshot)

    def observe(self, event: dict[str, Any]) -> None:
        """A log observer: every event goes to the parent (from any thread)."""
        from twisted.python import threadable

        text = eventAsJSON(event)
        if threadable.isInIOThread():
            self.send({"log": text})
        else:
            self.reactor.callFromThread(self.send, {"log": text})


def log_observer(log_to: dict[str, Any] | None, worker: Worker) -> Any:
    if log_to is None:
        return worker.observe
    if log_to["format"] == "json":
        from mqtwisted.oplog import JSONLogObserver

        return JSONLogObserver(log_to["path"])
    from mqtwisted.oplog import TextLogObserver

    return TextLogObserver(sys.stdout)


def marked(name: str, observer: Any) -> Any:
    """Every event marked with the worker's name as its system: ``[delivery]`` in text lines."""

    def observe(event: dict[str, Any]) -> None:
        event.setdefault("log_system", name)
        observer(event)

    return observe


def main() -> None:
    import signal

    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner

    # Byte by byte: a buffered read could swallow what follows the first line.
    first = bytearray()
    while not first.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return  # the parent went away before saying anything
        first += byte
    hello = json.loads(first)
    options = hello["options"]
    # Before any thread starts, so the spool and plugin threads inherit it.  A session's client
    # waits on every reply, a delivery waits on nobody: when both want the CPU, sessions go
    # first, and the worker still has every cycle they leave (it keeps up: the outbox does not
    # grow under a load the MTA can accept).  What this buys is in README "Benchmarks".
    os.nice(options.get("delivery-nice", 0))
    # The terminal's SIGHUP reaches the whole process group: reloads come from the parent.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    worker = Worker(options, reactor)
    worker.channel = _Control(worker)
    stdio.StandardIO(worker.channel, stdin=0, stdout=3, reactor=reactor)
    globalLogBeginner.beginLoggingTo([marked(hello.get("name") or "delivery", log_observer(hello.get("log"), worker))],
                                     redirectStandardIO=False)
    reactor.callWhenRunning(worker.start)
    reactor.run()


if __name__ == "__main__":
    main()
