"""Dispatching hooks to the loaded plugins with MailerQ's take-control semantics.

:class:`PluginRunner` is the :class:`mqtwisted.connection.HookRunner` the SMTP server and the
delivery client call.  :class:`mqtwisted.pluginhost.PluginHost` wraps it for ``twistd`` (start,
stop, SIGHUP, pickling).

One hook call (a *step*) runs every plugin that defines the hook, in load order.  Plugins whose hook
is a plain function run back to back in the connection's context thread, so a step costs a single
thread hop however many plugins it passes through.  The step leaves the thread only when a plugin
takes control (returns True), is ``async``/returns a Deferred (those run on the reactor), raises,
or when every plugin has had its turn.  All bookkeeping happens on the reactor thread.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwisted import hooks as hook_names
from mqtwisted.connection import Connection, Reply
from mqtwisted.contexts import ContextPool, MQ_Context, current_plugin
from mqtwisted.pluginloader import Plugin, PluginError, load_plugins, plugin_from_module
from mqtwisted.replies import LOCAL_ERROR, PLUGIN_TIMEOUT, PLUGINS_STOPPING

log = Logger()

#: Loading lives in :mod:`mqtwisted.pluginloader`; these names stay importable from here, where
#: plugin authors' tests have always found them.
__all__ = ["PluginError", "PluginRunner", "load_plugins", "plugin_from_module"]


@attrs.define(eq=False)
class _Entry:
    """One plugin's implementation of one hook."""

    plugin: str
    fn: Callable[..., Any]
    #: run on the reactor thread (async def, or learnt from a returned Deferred)
    on_reactor: bool


@attrs.define(eq=False)
class _Step:
    """One hook call for one connection, moving through the plugins."""

    hook: str
    conn: Connection
    args: tuple
    entries: tuple[_Entry, ...]
    deferred: defer.Deferred
    index: int = 0
    #: incremented each time a plugin is called; MQ_continue & co. carry the turn they are for
    turn: int = 0
    #: running (a plugin is being called), control (a plugin holds it), done
    state: str = "running"
    #: a control call that arrived before the plugin's True did (it may call MQ_continue itself)
    pending: tuple[int, str] | None = None
    #: reactor.seconds() after which the step is answered 451 4.4.7
    deadline: float = 0.0


class PluginRunner:
    """Runs hooks of the loaded plugins on their contexts.  Implements ``HookRunner``.

    ``start()`` calls ``mq_initialize`` and starts the context threads; ``stop()`` (idempotent)
    stops the threads (``mq_context_cleanup`` in each) and then calls ``mq_cleanup``.
    """

    def __init__(
        self,
        plugins: Sequence[Plugin],
        threads: int | None = None,
        timeout: float = 30.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.plugins = list(plugins)
        self.timeout = timeout
        self.reactor = reactor
        self.pool = ContextPool(
            threads or os.cpu_count() or 1, self._context_initialize, self._context_cleanup, reactor
        )
        for ctx in self.pool.contexts:
            ctx.runner = self
        self._hooks: dict[str, tuple[_Entry, ...]] = {}
        for hook in hook_names.CONNECTION_HOOKS:
            entries = []
            for p in self.plugins:
                fn = p.hook(hook)
                if fn is not None:
                    entries.append(_Entry(p.name, fn, _runs_on_reactor(fn)))
            if entries:
                self._hooks[hook] = tuple(entries)
        # Results travel from the workers to the reactor through one queue with one pending
        # wake-up: under load many results share a callFromThread (a pipe write, and a GIL
        # hand-over, each) instead of paying one per hook.
        self._results: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._results_lock = threading.Lock()
        self._wake_pending = False
        self._active: dict[int, _Step] = {}
        self._waiting: dict[int, deque[_Step]] = {}
        self._pinned: dict[int, MQ_Context] = {}
        self._started = False
        self._sweeper: task.LoopingCall | None = None
        self._shutdown = False
        self._stopping: defer.Deferred[None] | None = None
        #: set by from_directory: what pickling needs to build the runner again
        self.directory: str | None = None
        self.threads = threads

    @classmethod
    def from_directory(
        cls, directory: str, threads: int | None = None, timeout: float = 30.0
    ) -> PluginRunner:
        runner = cls(load_plugins(directory), threads=threads, timeout=timeout)
        runner.directory = directory
        return runner

    def __reduce__(self) -> tuple:
        # TAP files pickle the service tree, and the SMTP factory holds this runner.  Only the
        # configuration is stored; unpickling loads the plugins again (and fails as loudly as a
        # fresh start would).  Pickle's memo keeps the factory and the service on one runner.
        if self.directory is None:
            raise TypeError("only a PluginRunner built by from_directory() can be pickled")
        return (_restore_runner, (self.directory, self.threads, self.timeout))

    @property
    def contexts(self) -> list[MQ_Context]:
        return self.pool.contexts

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def hooks_running(self) -> bool:
        """A hook is running or waiting for some connection, open or just closed."""
        return bool(self._active)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._call_each(hook_names.INITIALIZE)
        self.pool.start()
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(max(0.01, min(1.0, self.timeout / 10)), now=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop the contexts, then call ``mq_cleanup`` once.  Safe to call more than once."""
        if self._stopping is None:
            self._shutdown = True
            if self._sweeper is not None and self._sweeper.running:
                self._sweeper.stop()
            for step in list(self._active.values()):
                self._finish(step, PLUGINS_STOPPING)
            if self._started:
                stopping = self.pool.stop()
                # A plugin blocking its thread forever must not block shutdown with it: give
                # the contexts plugin-timeout to run mq_context_cleanup and end, then go on.
                stopping.addTimeout(self.timeout, self.reactor)
                stopping.addErrback(self._contexts_stuck)
                stopping.addCallback(lambda _: self._call_each(hook_names.CLEANUP))
                self._stopping = stopping
            else:
                self._stopping = defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopping.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def _contexts_stuck(self, failure: Failure) -> None:
        stuck = [c.name for c in self.pool.contexts if c.thread is not None and c.thread.is_alive()]
        log.error(
            "plugin context threads {stuck} did not stop within {timeout} s (a plugin blocks "
            "them); shutting down without them",
            stuck=", ".join(stuck) or "?",
            timeout=self.timeout,
        )

    def _call_each(self, hook: str, *args: Any) -> None:
        for p in self.plugins:
            fn = p.hook(hook)
            if fn is None:
                continue
            current_plugin.set(p.name)
            try:
                fn(*args)
            except Exception:
                log.failure("plugin {plugin}: {hook} failed", plugin=p.name, hook=hook)
            finally:
                current_plugin.set("")

    def _context_initialize(self, ctx: MQ_Context) -> None:
        self._call_each(hook_names.CONTEXT_INITIALIZE, ctx)

    def _context_cleanup(self, ctx: MQ_Context) -> None:
        self._call_each(hook_names.CONTEXT_CLEANUP, ctx)

    # -- HookRunner ------------------------------------------------------------------------------

    def defines(self, hook: str) -> bool:
        return hook in self._hooks

    def context_for(self, conn: Connection) -> MQ_Context:
        """The context ``conn`` is pinned to (pinning it now if it is new)."""
        ctx = conn.context
        if ctx is None:
            ctx = conn.context = self.pool.pick()
            ctx.connections += 1
            self._pinned[conn.id] = ctx
        return ctx

    def connection_closed(self, conn: Connection) -> None:
        """The connection is gone: it no longer counts towards its context's load.

        ``conn.context`` stays set, so a close hook still queued runs on the same context.
        """
        ctx = self._pinned.pop(conn.id, None)
        if ctx is not None:
            ctx.connections -= 1

    def run(self, hook: str, conn: Connection, *args: Any) -> defer.Deferred[Reply | None]:
        entries = self._hooks.get(hook)
        if entries is None:
            return defer.succeed(None)
        d: defer.Deferred[Reply | None] = defer.Deferred()
        if self._shutdown:
            d.callback(PLUGINS_STOPPING)
            return d
        if not self._started:
            self.start()  # a runner used before its service started: do not hang the session
        self.context_for(conn)
        step = _Step(hook, conn, args, entries, d)
        if conn.id in self._active:
            # One hook at a time per connection: e.g. close arriving while a plugin holds control.
            self._waiting.setdefault(conn.id, deque()).append(step)
        else:
            self._begin(step)
        return d

    # -- the step state machine (reactor thread) ---------------------------------------------------

    def _begin(self, step: _Step) -> None:
        self._active[step.conn.id] = step
        step.deadline = self.reactor.seconds() + self.timeout
        self._advance(step)

    def _advance(self, step: _Step) -> None:
        """Run the plugins from ``step.index`` on."""
        if step.index >= len(step.entries):
            self._finish(step, step.conn.response)
        elif step.entries[step.index].on_reactor:
            self._call_on_reactor(step)
        else:
            step.state = "running"
            step.conn.context.submit_soon(self._work, step)

    def _work(self, step: _Step) -> None:
        """In the context thread: call plain hooks back to back until one needs the reactor."""
        entries = step.entries
        ctx = step.conn.context
        conn = step.conn
        args = step.args
        i = step.index
        report = self._report
        while i < len(entries):
            entry = entries[i]
            if entry.on_reactor:
                report(self._reached_reactor_hook, step, i)
                return
            if step.state == "done":
                return  # timed out or shut down meanwhile: the rest is moot
            step.index = i
            step.turn += 1
            current_plugin.set(entry.plugin)
            try:
                verdict = entry.fn(ctx, conn, *args)
            except Exception:
                report(self._failed, step, i, Failure())
                return
            finally:
                current_plugin.set("")
            if verdict is True:
                report(self._took_control, step, i, step.turn)
                return
            if verdict is not None and verdict is not False:
                if isinstance(verdict, defer.Deferred) or inspect.isawaitable(verdict):
                    # A plain function that returned a Deferred: it wants the reactor.  From now
                    # on it is called there (the first call could not know).
                    entry.on_reactor = True
                    report(self._await_verdict, step, i, step.turn, verdict)
                    return
                if verdict:
                    report(self._took_control, step, i, step.turn)
                    return
            i += 1
        report(self._all_done, step, i)

    def _report(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a worker: run ``fn(*args)`` on the reactor, in order with other reports."""
        with self._results_lock:
            self._results.append((fn, args))
            if self._wake_pending:
                return
            self._wake_pending = True
        self.reactor.callFromThread(self._drain)

    def _drain(self) -> None:
        results, lock = self._results, self._results_lock
        while True:
            with lock:
                if not results:
                    self._wake_pending = False
                    return
                fn, args = results.popleft()
            try:
                fn(*args)
            except Exception:
                log.failure("plugin runner: internal error")

    def _reached_reactor_hook(self, step: _Step, i: int) -> None:
        if step.state == "done":
            return
        step.index = i
        self._call_on_reactor(step)

    def _all_done(self, step: _Step, i: int) -> None:
        if step.state == "done":
            return
        step.index = i
        if step.pending is not None:
            self._stale(step, step.pending[1])
            step.pending = None
        self._finish(step, step.conn.response)

    def _call_on_reactor(self, step: _Step) -> None:
        entry = step.entries[step.index]
        step.state = "running"
        step.turn += 1
        token = current_plugin.set(entry.plugin)
        try:
            verdict = entry.fn(step.conn.context, step.conn, *step.args)
        except Exception:
            self._failed(step, step.index, Failure())
            return
        finally:
            current_plugin.reset(token)
        self._await_verdict(step, step.index, step.turn, verdict)

    def _await_verdict(self, step: _Step, i: int, turn: int, verdict: Any) -> None:
        if step.state == "done":
            return
        step.index = i
        if inspect.iscoroutine(verdict):
            # ensureDeferred copies the current contextvars: set the plugin first.
            token = current_plugin.set(step.entries[i].plugin)
            try:
                verdict = defer.Deferred.fromCoroutine(verdict)
            finally:
                current_plugin.reset(token)
        elif inspect.isawaitable(verdict) and not isinstance(verdict, defer.Deferred):
            verdict = defer.ensureDeferred(verdict)
        if isinstance(verdict, defer.Deferred):
            verdict.addCallbacks(
                lambda v: self._verdict(step, i, turn, v),
                lambda f: self._failed(step, i, f),
            )
        else:
            self._verdict(step, i, turn, verdict)

    def _verdict(self, step: _Step, i: int, turn: int, verdict: Any) -> None:
        if step.state == "done" or step.turn != turn:
            return
        if verdict:
            self._took_control(step, i, turn)
        else:
            step.index = i + 1
            self._advance(step)

    def _took_control(self, step: _Step, i: int, turn: int) -> None:
        if step.state == "done":
            return
        step.index = i
        step.state = "control"
        pending, step.pending = step.pending, None
        if pending is not None:
            if pending[0] == turn:
                self._control(step, pending[0], pending[1])
            else:
                self._stale(step, pending[1])

    def _failed(self, step: _Step, i: int, failure: Failure) -> None:
        if step.state == "done":
            return
        log.failure(
            "plugin {plugin}: {hook} raised; answering 451 4.3.0",
            failure,
            plugin=step.entries[i].plugin,
            hook=step.hook,
        )
        self._finish(step, LOCAL_ERROR)

    def _sweep(self) -> None:
        # One periodic check instead of a DelayedCall per step: a hook call then costs no
        # timer heap work, and a timeout fires at most one sweep interval late.
        now = self.reactor.seconds()
        for step in [s for s in self._active.values() if s.deadline <= now]:
            self._expired(step)

    def _expired(self, step: _Step) -> None:
        if step.state == "done":
            return
        entry = step.entries[min(step.index, len(step.entries) - 1)]
        log.error(
            "plugin {plugin}: {hook} did not hand back control within {timeout} s "
            "(connection {id}); answering 451 4.4.7",
            plugin=entry.plugin,
            hook=step.hook,
            timeout=self.timeout,
            id=step.conn.id,
        )
        self._finish(step, PLUGIN_TIMEOUT)

    def _finish(self, step: _Step, reply: Reply | None) -> None:
        if step.state == "done":
            return
        step.state = "done"
        conn_id = step.conn.id
        if self._active.get(conn_id) is step:
            del self._active[conn_id]
        waiting = self._waiting.get(conn_id)
        nxt = None
        if waiting:
            nxt = waiting.popleft()
            if not waiting:
                del self._waiting[conn_id]
            # Claim the slot before firing: the callback may ask for the next hook at once.
            self._active[conn_id] = nxt
        step.deferred.callback(reply)
        if nxt is not None:
            if self._shutdown:
                del self._active[conn_id]
                nxt.state = "done"
                nxt.deferred.callback(PLUGINS_STOPPING)
            else:
                self._begin(nxt)

    # -- control calls (any thread) ----------------------------------------------------------------

    def control(self, conn: Connection, kind: str) -> None:
        """``MQ_continue``/``MQ_complete``/``MQ_retry``: hand control back.  Thread-safe."""
        # Read the step and its turn now, in the caller's thread: a late call must not be
        # mistaken for a hand-back of some later step.
        step = self._active.get(conn.id)
        if step is None:
            log.warn("MQ_{kind} for connection {id}, which no plugin holds", kind=kind, id=conn.id)
            return
        turn = step.turn
        # Who is calling, when we can tell (hooks, timers and watchers run as their plugin; a
        # plugin's own threads do not): a late hand-back from a plugin that timed out must not
        # release a step some other plugin now holds.
        caller = current_plugin.get()
        self.reactor.callFromThread(self._control, step, turn, kind, caller)

    def _control(self, step: _Step, turn: int, kind: str, caller: str = "") -> None:
        if step.state == "done" or turn != step.turn:
            self._stale(step, kind)
            return
        if caller and caller != step.entries[step.index].plugin:
            self._stale(step, kind)
            return
        if step.state != "control":
            if step.pending is not None:
                self._stale(step, kind)
            else:
                step.pending = (turn, kind)
            return
        # A fresh timeout for what follows: each hand-over gets the full plugin-timeout.
        step.deadline = self.reactor.seconds() + self.timeout
        if kind == "complete":
            self._finish(step, step.conn.response)
            return
        step.index = 0 if kind == "retry" else step.index + 1
        self._advance(step)

    def _stale(self, step: _Step, kind: str) -> None:
        log.warn(
            "MQ_{kind} for connection {id} ignored: control was already handed back ({hook})",
            kind=kind,
            id=step.conn.id,
            hook=step.hook,
        )


def _restore_runner(directory: str, threads: int | None, timeout: float) -> PluginRunner:
    # A module-level function: twisted.persisted.styles pickles bound methods in its own way.
    return PluginRunner.from_directory(directory, threads=threads, timeout=timeout)


def _runs_on_reactor(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or bool(getattr(fn, "mq_on_reactor", False))
