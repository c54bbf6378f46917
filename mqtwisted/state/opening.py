"""Opening the state ``--state`` names: the backend (the data directory's SQLite file, or
Redis) and, for a delivery process, the keeper and the store that go with it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mqtwisted.reactors import LazyReactor
from mqtwisted.state.backend import Backend
from mqtwisted.state.keeper import StateKeeper

STATE_FILE = "state.sqlite3"


def open_backend(url: str, data_dir: str) -> Backend:
    """The backend ``--state`` names: empty for the data directory, ``redis://…`` for Redis.
    ValueError for anything else."""
    if not url:
        from mqtwisted.state.sqlite import SqliteBackend

        return SqliteBackend(os.path.join(data_dir, STATE_FILE))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from mqtwisted.state.redis import RedisBackend

        return RedisBackend(url)
    raise ValueError(f"expected redis://host:port/db (or nothing: the data directory), got {url!r}")


class OwnThread:
    """``run`` for a keeper: one thread of its own, so the backend's calls happen in order and
    never wait behind signing in the reactor's pool."""

    reactor = LazyReactor()

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self.pool = ThreadPool(1, 1, "mqmta-state")

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        if not self.pool.started:
            self.pool.start()
            # Its thread would keep the process alive: however the reactor stops (a shutdown
            # timeout cuts the services' stop short), the pool stops after it, its work done.
            self.reactor.addSystemEventTrigger("after", "shutdown", self.stop)
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def stop(self) -> None:
        if self.pool.started:
            self.pool.stop()


def make_keeper(state_url: str | None, data_dir: str | None, reactor: Any) -> StateKeeper:
    """The keeper ``--state`` asks for: in the data directory, in Redis, or (no data directory:
    a service built by hand) in memory only."""
    if not state_url and not data_dir:
        return StateKeeper(None, _inline, reactor)
    backend = open_backend(state_url or "", data_dir or ".")
    run = OwnThread(reactor)
    if not state_url:
        return StateKeeper(backend, run, reactor)
    # One thread for the rounds and the shared counters: a lease is given back before the
    # backend closes.
    from mqtwisted.state.redisstore import RedisStore

    return StateKeeper(backend, run, reactor, RedisStore(backend, run, reactor))  # type: ignore[arg-type]


def _inline(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)
