"""What a delivery process keeps of the operator's state, and how it stays current.

The :class:`StateKeeper` owns the backend (SQLite in the data directory, or Redis) and one
thread of its own that makes every blocking call, in order.  At start it loads pauses,
suppressions, suspensions and warm-up days; then, every :data:`POLL_INTERVAL`:

* it reads the backend's version and, when it changed (``mqmta pause``/``suppress`` wrote, here
  or on another node), loads pauses and suppressions again and tells its listeners;
* it writes the suspensions and warm-up counts made since the last round
  (:class:`PersistentStore` keeps them in memory meanwhile) and reads everyone's back.

Polling rather than a notification (SQLite has none across processes; Redis pubsub drops what is
published while a node is away): one small read a second, and a change is seen within a second.
Delivery reads only the in-memory snapshot (:meth:`StateKeeper.paused`,
:meth:`StateKeeper.suppressed`), never the backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mqtwisted.reactors import LazyReactor
from mqtwisted.shaping.store import Key, MemoryStore
from mqtwisted.state.backend import Backend, Days, Holds
from mqtwisted.state.pauses import Pause, paused_by
from mqtwisted.state.suppression import Suppression, match

log = Logger()

#: seconds between two looks at the backend
POLL_INTERVAL = 1.0

Runner = Callable[..., "defer.Deferred[Any]"]


def encode(key: Key) -> str:
    return json.dumps(list(key))


def decode(text: str) -> Key:
    return tuple(json.loads(text))


class PersistentStore(MemoryStore):
    """The in-memory counters, with suspensions and warm-up days written back by the keeper.
    Connection slots and rates stay in memory: one delivery process enforces them (a subclass
    shares them: :class:`~mqtwisted.state.redisstore.RedisStore`)."""

    def __init__(self) -> None:
        super().__init__()
        self.new_holds: dict[Key, tuple[float, str]] = {}
        self.new_days: dict[tuple[Key, int], int] = {}
        #: called with a counter's key when a shared store got, in the background, a slot or a
        #: turn it had answered no to; delivery sets it (to ask again)
        self.ready: Callable[[Key], None] = lambda key: None

    def tick(self) -> None:
        """Upkeep at each round of the keeper (a shared store renews its leases)."""

    def close(self) -> None:
        """Stopping: give back what is held elsewhere."""

    def hold(self, key: Key, until: float, reason: str) -> None:
        super().hold(key, until, reason)
        self.new_holds[key] = self.holds[key]

    def count_day(self, key: Key, day: int) -> None:
        super().count_day(key, day)
        self.new_days[(key, day)] = self.new_days.get((key, day), 0) + 1

    def changes(self) -> tuple[Holds, Days]:
        """What was held and counted since the last call, encoded for the backend."""
        holds = {encode(k): v for k, v in self.new_holds.items()}
        days = {(encode(k), d): n for (k, d), n in self.new_days.items()}
        self.new_holds, self.new_days = {}, {}
        return holds, days

    def merge(self, holds: Holds, days: Days) -> None:
        """The backend's holds and day counts (everyone's), plus what was made here since."""
        for text, (until, reason) in holds.items():
            MemoryStore.hold(self, decode(text), until, reason)
        counts: dict[Key, dict[int, int]] = {}
        for (text, day), n in days.items():
            counts.setdefault(decode(text), {})[day] = n
        for (key, day), n in self.new_days.items():
            counts.setdefault(key, {})[day] = counts.get(key, {}).get(day, 0) + n
        self.day_counts = counts


class StateKeeper:
    """Pauses, suppressions and persistent shaping state for one delivery process (see the
    module docstring).  ``run(f, *args)`` calls ``f`` off the reactor thread and returns a
    Deferred (tests pass one that calls at once); ``reactor`` (None: the global one, looked up
    on first use) gives the time and the timers."""

    reactor = LazyReactor()

    def __init__(self, backend: Backend | None, run: Runner, reactor: Any = None,
                 store: PersistentStore | None = None) -> None:
        self.backend = backend
        self.run = run
        self._reactor = reactor
        self.store = store if store is not None else PersistentStore()
        self.pauses: list[Pause] = []
        self.suppressions: dict[str, Suppression] = {}
        self.listeners: list[Callable[[], None]] = []
        self.version: int | None = None
        self.failing = False
        self._call: Any = None
        self._round: defer.Deferred[None] | None = None
        self.stopped = False

    # -- what delivery asks -----------------------------------------------------------------------

    def paused(self, address: str | None, pool: str | None, domain: str, tags: Iterable[str]) -> Pause | None:
        if not self.pauses:
            return None
        return paused_by(self.pauses, self.reactor.seconds(), address, pool, domain, tags)

    def suppressed(self, address: str) -> Suppression | None:
        if not self.suppressions:
            return None
        return match(self.suppressions, address, self.reactor.seconds())

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Load everything; fires once loaded (or once loading failed: logged, tried again)."""
        d = self.poll()
        d.addBoth(lambda _: self._schedule())
        return d

    def _schedule(self) -> None:
        if not self.stopped:
            self._call = self.reactor.callLater(POLL_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._call = None
        self.poll().addBoth(lambda _: self._schedule())

    def stop(self) -> defer.Deferred[None]:
        """No more rounds; write what is left and close the backend."""
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        d = self._round if self._round is not None else defer.succeed(None)
        d.addBoth(lambda _: self.poll())
        d.addBoth(lambda _: self.store.close())
        d.addBoth(lambda _: self._close())
        return d

    def _close(self) -> defer.Deferred[None] | None:
        backend, self.backend = self.backend, None
        if backend is None:
            return None
        d = self.run(backend.close)
        d.addErrback(lambda f: log.failure("closing the state backend", f))
        stop = getattr(self.run, "stop", None)
        if stop is not None:
            d.addBoth(lambda _: stop())
        return d

    # -- one round --------------------------------------------------------------------------------

    def poll(self) -> defer.Deferred[None]:
        backend = self.backend
        if backend is None:
            return defer.succeed(None)
        self.store.tick()
        holds, days = self.store.changes()
        known, now = self.version, self.reactor.seconds()

        def round_trip() -> tuple[int, Any, Holds, Days]:
            version = backend.version()
            lists = (backend.pauses(), backend.suppressions()) if version != known else None
            all_holds, all_days = backend.sync(holds, days, now)
            return version, lists, all_holds, all_days

        d = self.run(round_trip)
        self._round = d

        def done(result: tuple[int, Any, Holds, Days]) -> None:
            version, lists, all_holds, all_days = result
            if self.failing:
                log.info("state backend answers again")
                self.failing = False
            self.store.merge(all_holds, all_days)
            if lists is not None:
                self.version = version
                self.pauses = lists[0]
                self.suppressions = {s.pattern: s for s in lists[1]}
                for listener in list(self.listeners):
                    listener()

        def failed(f: Any) -> None:
            # Keep what was not written: the next round tries again.
            for key, value in holds.items():
                self.store.new_holds.setdefault(decode(key), value)
            for (key, day), n in days.items():
                k = (decode(key), day)
                self.store.new_days[k] = self.store.new_days.get(k, 0) + n
            if not self.failing:
                log.error("state backend: {error}; pauses and suppressions as last read", error=f.getErrorMessage())
                self.failing = True

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("state backend round", f))

        def ended(_: Any) -> None:
            if self._round is d:
                self._round = None

        d.addBoth(ended)
        return d

