"""Worker threads, each owning one ``MQ_Context``.

Every context is one thread fed by its own queue.  We do not use :class:`ThreadPool` here: a pool
has no per-thread start/stop hook (only ``threadFactory``), copies the logging context for every
job, and ``stop()`` is not idempotent.  A dedicated thread plus a :class:`queue.SimpleQueue` is the
cheapest hop there is, and it makes "created and destroyed in that thread" trivially true.

The reactor's own thread pool (used by DNS) is never touched.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.python import threadable
from zope.interface import implementer

from mqtwisted.reactors import LazyReactor

log = Logger()

#: The plugin on whose behalf code is running: set around every hook, timer and watcher callback,
#: so that per-plugin data (MQ_connectionData, MQ_contextData) and MQ_log know who is calling.
#: A ContextVar (not threading.local) because async hooks interleave on the reactor thread and
#: Twisted runs each coroutine step inside the context captured when it started.
current_plugin: contextvars.ContextVar[str] = contextvars.ContextVar(
    "mq_current_plugin", default=""
)

MQ_READ = 1
MQ_WRITE = 2

_STOP = object()
#: seconds inside one job after which a context gets no new connections while others are free
STUCK_AFTER = 0.1


class MQ_Context:
    """One worker thread and the state plugins keep for it.

    ``ctx`` is what every hook receives as its first argument.  Plugins treat it as opaque and reach
    its data through ``MQ_contextData``/``MQ_setContextData`` (kept per plugin).
    """

    def __init__(
        self,
        index: int,
        initialize: Callable[[MQ_Context], None] | None = None,
        cleanup: Callable[[MQ_Context], None] | None = None,
        reactor: Any = None,
    ) -> None:
        self.index = index
        self.name = f"mq-context-{index}"
        #: per-plugin MQ_contextData, keyed by plugin name
        self.data: dict[str, Any] = {}
        #: the plugin runner driving this context (MQ_continue & co. find it here)
        self.runner: Any = None
        #: connections pinned here (for least-loaded placement)
        self.connections = 0
        #: time.monotonic() when the job the thread is running began; None while it waits
        self.busy_since: float | None = None
        self.thread: threading.Thread | None = None
        self._initialize = initialize
        self._cleanup = cleanup
        self._reactor = reactor
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[Callable[..., Any], tuple]] = []
        self._stopped: defer.Deferred[None] | None = None
        self._timers: set[Timer] = set()
        self._watchers: set[Watcher] = set()

    def __repr__(self) -> str:
        return f"<MQ_Context {self.index}>"

    reactor = LazyReactor()

    @property
    def running(self) -> bool:
        return self.thread is not None and self._stopped is None

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: no timer or watcher may be armed any more."""
        return self._stopped is not None

    # -- what stop() disarms (reactor thread) -------------------------------------------------------

    @property
    def timers(self) -> frozenset[Timer]:
        """The timers counting down for this context."""
        return frozenset(self._timers)

    def add_timer(self, timer: Timer) -> None:
        self._timers.add(timer)

    def discard_timer(self, timer: Timer) -> None:
        self._timers.discard(timer)

    @property
    def watchers(self) -> frozenset[Watcher]:
        """The descriptors this context's plugins watch."""
        return frozenset(self._watchers)

    def add_watcher(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)

    def discard_watcher(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    # -- life cycle (reactor thread) --------------------------------------------------------------

    def start(self) -> None:
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.thread.start()

    def stop(self) -> defer.Deferred[None]:
        """Run cleanup in the thread and let it end; fires once it has.  Safe to call twice."""
        if self._stopped is None:
            self._stopped = defer.Deferred()
            for timer in list(self._timers):
                timer.stop()
            for watcher in list(self._watchers):
                watcher.unwatch()
            if self.thread is None:
                self._stopped.callback(None)
            else:
                self._queue.put(_STOP)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopped.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in this context's thread, after everything submitted before it."""
        self._queue.put([(fn, args)])

    def submit_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Like :meth:`submit`, from the reactor thread only, handed over at the end of this
        reactor iteration together with whatever else the iteration submits.

        Under load one wake-up of the worker (and one GIL hand-over) then serves many hook
        calls, instead of one each.
        """
        pending = self._pending
        pending.append((fn, args))
        if len(pending) == 1:
            self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._queue.put(batch)

    # -- the thread ----------------------------------------------------------------------------------

    def _main(self) -> None:
        if self._initialize is not None:
            self._initialize(self)
        get = self._queue.get
        try:
            while True:
                item = get()
                if item is _STOP:
                    break
                for fn, args in item:
                    self.busy_since = time.monotonic()
                    try:
                        fn(*args)
                    except BaseException:
                        # Jobs handle their own errors; this is the last line of defence that
                        # keeps the context alive whatever a job does.
                        log.failure("uncaught error in {ctx}", ctx=self.name)
                    self.busy_since = None
        finally:
            if self._cleanup is not None:
                self._cleanup(self)
            self.reactor.callFromThread(self._ended)

    def _ended(self) -> None:
        # The thread has nothing left to do but return: joining here costs microseconds and
        # means "stopped" really is stopped (no thread outlives the service).
        if self.thread is not None:
            self.thread.join(1.0)
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)


def on_reactor(reactor: Any, fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn`` on the reactor thread: directly when already there, else via callFromThread."""
    if threadable.isInIOThread():
        fn(*args)
    else:
        reactor.callFromThread(fn, *args)


def _call_as(plugin: str, fn: Callable[..., Any], *args: Any) -> None:
    current_plugin.set(plugin)
    try:
        fn(*args)
    except Exception:
        log.failure("plugin {plugin}: callback {fn!r} failed", plugin=plugin, fn=fn)
    finally:
        current_plugin.set("")


class Timer:
    """``MQ_startTimer``: after ``timeout`` seconds run ``callback(*args)`` in the context's thread."""

    def __init__(
        self, ctx: MQ_Context, timeout: float, callback: Callable[..., Any], args: tuple
    ) -> None:
        self.ctx = ctx
        self.callback = callback
        self.args = args
        self.plugin = current_plugin.get()
        self._call: Any = None
        self.fired = False
        self.reset(timeout)

    def reset(self, timeout: float) -> None:
        """Restart the countdown (also re-arms a timer that already fired or was stopped)."""
        on_reactor(self.ctx.reactor, self._arm, timeout)

    def stop(self) -> None:
        on_reactor(self.ctx.reactor, self._disarm)

    def _arm(self, timeout: float) -> None:
        if self.ctx.stopping:
            return
        self._disarm()
        self.fired = False
        self._call = self.ctx.reactor.callLater(max(0.0, timeout), self._fire)
        self.ctx.add_timer(self)

    def _disarm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.ctx.discard_timer(self)

    def _fire(self) -> None:
        self._call = None
        self.ctx.discard_timer(self)
        self.fired = True
        self.ctx.submit(_call_as, self.plugin, self.callback, *self.args)


@implementer(interfaces.IReadDescriptor, interfaces.IWriteDescriptor)
class Watcher:
    """``MQ_ioWatch``: when ``fd`` is ready run ``callback(fd, events, *args)`` in the context's thread.

    The reactor is level-triggered, so while the callback is queued or running the descriptor is
    taken out of the reactor and put back afterwards; otherwise the reactor would flood the
    context with readiness notices the plugin has not had a chance to act on.
    """

    def __init__(
        self, ctx: MQ_Context, fd: int, events: int, callback: Callable[..., Any], args: tuple
    ) -> None:
        self.ctx = ctx
        self.fd = fd
        self.events = events
        self.callback = callback
        self.args = args
        self.plugin = current_plugin.get()
        self.active = True
        on_reactor(ctx.reactor, self._arm)

    # IReadDescriptor / IWriteDescriptor
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"MQ_ioWatch({self.plugin}, fd={self.fd})"

    def connectionLost(self, reason: Any) -> None:
        self.active = False
        self.ctx.discard_watcher(self)

    def doRead(self) -> None:
        self._ready(MQ_READ)

    def doWrite(self) -> None:
        self._ready(MQ_WRITE)

    def unwatch(self) -> None:
        self.active = False
        on_reactor(self.ctx.reactor, self._disarm)

    def _arm(self) -> None:
        if not self.active or self.ctx.stopping:
            return
        self.ctx.add_watcher(self)
        if self.events & MQ_READ:
            self.ctx.reactor.addReader(self)
        if self.events & MQ_WRITE:
            self.ctx.reactor.addWriter(self)

    def _disarm(self) -> None:
        self.ctx.discard_watcher(self)
        self.ctx.reactor.removeReader(self)
        self.ctx.reactor.removeWriter(self)

    def _ready(self, event: int) -> None:
        self._disarm()
        self.ctx.submit(self._run, event)

    def _run(self, event: int) -> None:
        _call_as(self.plugin, self.callback, self.fd, event, *self.args)
        self.ctx.reactor.callFromThread(self._arm)


class ContextPool:
    """``threads`` contexts; connections are pinned to the least loaded one (ties: round robin)."""

    def __init__(
        self,
        threads: int,
        initialize: Callable[[MQ_Context], None] | None = None,
        cleanup: Callable[[MQ_Context], None] | None = None,
        reactor: Any = None,
    ) -> None:
        self.contexts = [
            MQ_Context(i, initialize, cleanup, reactor) for i in range(max(1, threads))
        ]
        self._next = 0
        self._stopping: defer.Deferred[None] | None = None

    def start(self) -> None:
        for ctx in self.contexts:
            ctx.start()

    def stop(self) -> defer.Deferred[None]:
        """Stop every context (cleanup runs in each thread); fires when all are done.  Idempotent."""
        if self._stopping is None:
            self._stopping = defer.gatherResults(
                [ctx.stop() for ctx in self.contexts], consumeErrors=True
            ).addCallback(lambda _: None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopping.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def pick(self) -> MQ_Context:
        # A thread that has been inside one hook for STUCK_AFTER is blocked or very slow: while
        # another is free, new connections go elsewhere, or every one pinned there would wait
        # for the plugin timeout too (a plugin blocking its thread must not stall other sessions).
        now = time.monotonic()
        contexts = [
            c for c in self.contexts if c.busy_since is None or now - c.busy_since < STUCK_AFTER
        ] or self.contexts
        n = len(contexts)
        best = contexts[self._next % n]
        for i in range(1, n):
            ctx = contexts[(self._next + i) % n]
            if ctx.connections < best.connections:
                best = ctx
        self._next = (best.index + 1) % len(self.contexts)
        return best
