"""The plugin layer as the MTA holds it: one :class:`~mqtwisted.plugins.PluginRunner` for new
connections, older ones kept until the connections that began on them have closed (SIGHUP reload).

:class:`PluginHost` is the ``HookRunner`` the SMTP factory, cleanup and delivery are given.  It
routes each hook call to the runner the connection is pinned to: a connection's context
(``conn.context``, set by the runner on the first hook) knows its runner (``ctx.runner``), so the
routing costs one attribute read and no table.  A connection that has not run a hook yet holds no
plugin state, and goes to the newest runner.

It pickles as configuration (TAP files): unpickling loads the plugins again, as a fresh start would.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mqtwisted import hooks as hook_names
from mqtwisted.connection import Connection, NoHooks, Reply
from mqtwisted.metrics import TimedModule

log = Logger()


def build_runner(directory: str, threads: int, timeout: float) -> Any:
    """A PluginRunner for ``directory`` whose connection hooks are timed for ``/metrics``."""
    from mqtwisted.pluginloader import Plugin, load_plugins
    from mqtwisted.plugins import PluginRunner

    plugins = [
        Plugin(p.name, p.path, TimedModule(p.module, p.name, hook_names.CONNECTION_HOOKS))  # type: ignore[arg-type]
        for p in load_plugins(directory)
    ]
    runner = PluginRunner(plugins, threads=threads, timeout=timeout)
    runner.directory = directory
    return runner


class PluginHost(service.Service):
    """Named ``plugins``.  ``runner`` is the current PluginRunner (or None without plugins)."""

    name = "plugins"

    def __init__(self, directory: str, threads: int = 0, timeout: float = 30.0) -> None:
        self.directory = directory
        self.threads = threads
        self.timeout = timeout
        self._init_runtime()
        # Load now: a bad plugin stops twistd before anything listens.
        self.current = self._build(directory, threads, timeout)
        self._refresh()

    def _init_runtime(self) -> None:
        self.current: Any = NoHooks()
        #: runners replaced by a reload, still serving the connections that began on them
        self.retiring: list[Any] = []
        self._defined: frozenset[str] = frozenset()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "threads": self.threads,
            "timeout": self.timeout,
            "name": self.name,
            "parent": self.parent,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.running = 0
        self._init_runtime()
        self.current = self._build(self.directory, self.threads, self.timeout)
        self._refresh()

    @staticmethod
    def _build(directory: str, threads: int, timeout: float) -> Any:
        if not directory:
            return NoHooks()
        return build_runner(directory, threads or os.cpu_count() or 1, timeout)

    @property
    def runner(self) -> Any:
        return None if isinstance(self.current, NoHooks) else self.current

    def runners(self) -> list[Any]:
        return [r for r in [self.current, *self.retiring] if not isinstance(r, NoHooks)]

    def _refresh(self) -> None:
        # A hook is worth calling when any live runner defines it: an old connection still needs
        # its close hook even if the new plugin set has none.

        self._defined = frozenset(
            h for r in self.runners() for h in hook_names.CONNECTION_HOOKS if r.defines(h)
        )

    # -- HookRunner ------------------------------------------------------------------------------

    def defines(self, hook: str) -> bool:
        return hook in self._defined

    def _route(self, conn: Connection) -> Any:
        ctx = conn.context
        if ctx is not None and ctx.runner is not None:
            return ctx.runner
        return self.current

    def run(self, hook: str, conn: Connection, *args: Any) -> defer.Deferred[Reply | None]:
        runner = self._route(conn)
        d = runner.run(hook, conn, *args)
        if runner is not self.current and not d.called:
            # Retiring: it may stop only once this hook (often the close hook) has answered.
            d.addBoth(lambda r: (self._maybe_retire(runner), r)[1])
        return d

    def connection_closed(self, conn: Connection) -> None:
        runner = self._route(conn)
        runner.connection_closed(conn)
        if runner is not self.current:
            self._maybe_retire(runner)

    # -- reload and life cycle -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        start = getattr(self.current, "start", None)
        if start is not None:
            start()

    def reload(self, directory: str, threads: int, timeout: float) -> bool:
        """Load ``directory`` afresh for new connections; False (old set kept) if it fails."""
        try:
            new = self._build(directory, threads, timeout)
        except Exception as e:
            log.error("plugin reload failed, keeping the plugins loaded before: {error}", error=str(e))
            return False
        old = self.current
        self.directory, self.threads, self.timeout = directory, threads, timeout
        self.current = new
        if self.running and hasattr(new, "start"):
            new.start()
        if not isinstance(old, NoHooks):
            self.retiring.append(old)
        self._refresh()
        log.info(
            "plugins reloaded from {directory}: {names}; {old} older set(s) draining",
            directory=directory or "(none)",
            names=", ".join(p.name for p in getattr(new, "plugins", [])) or "none",
            old=len(self.retiring),
        )
        if not isinstance(old, NoHooks):
            self._maybe_retire(old)
        return True

    def _busy(self, runner: Any) -> bool:
        if any(ctx.connections for ctx in runner.contexts):
            return True
        # a hook still running for a connection that has closed (its close hook, typically)
        return runner.hooks_running

    def _maybe_retire(self, runner: Any) -> None:
        if runner not in self.retiring or self._busy(runner):
            return
        self.retiring.remove(runner)
        self._refresh()
        log.info("an older plugin set has no connections left; stopping it")
        runner.stop()

    def stopService(self) -> defer.Deferred[None]:
        """Stop every runner: ``mq_context_cleanup`` in each thread, then ``mq_cleanup``."""
        super().stopService()
        runners = self.runners()
        self.retiring = []
        return defer.gatherResults([r.stop() for r in runners], consumeErrors=True).addCallback(
            lambda _: None
        )
