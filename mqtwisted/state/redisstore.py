"""Connection slots and rates shared by nodes through Redis (``--state redis://…``).

The shaper asks its store synchronously, on the reactor thread, and Redis cannot be asked
there.  So this store answers from what this node already holds and asks Redis in the
background, telling delivery (``ready``) when the answer came:

* **Slots.**  A slot is a lease in Redis (a member of a sorted set, scored by its expiry), taken
  by an atomic script that counts every node's.  ``acquire`` takes a slot granted earlier, or
  asks for one and answers no; the grant (or, after a refusal, :data:`RETRY` seconds) makes
  delivery ask again.  A slot is given back to Redis the moment its connection closes.  Leases
  last :data:`LEASE` seconds and are renewed every :data:`RENEW` seconds while in use, so the
  slots of a node that died come back within 30 s, while a node that merely pauses for a few
  seconds (a long garbage collection, a busy machine) keeps its own.
* **Rates.**  GCRA turns are reserved in Redis: a script moves the shared theoretical arrival
  time on by one interval and says when the reserved turn starts.  The node may use its turn
  from then until the next one can start (converted to its own clock conservatively: the start
  counted from when the answer came, the end from when the question left), and reserves the
  next turn as it uses one.  Each event thus falls in a turn of its own, and turns are one
  interval apart: in any span of time the nodes together send at most one event more than one
  process's GCRA would (which allows N + 1 in a closed span of N intervals), as long as the
  interval exceeds the round trip to Redis (rates up to some hundreds a second per sending IP
  and destination); a turn reserved and not used is lost, never lent.

Suspensions and warm-up days go through the keeper like on one machine (written and read
every second), so with several nodes a warm-up allowance can be overrun by what the other nodes
send within that second.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mqtwisted.reactors import LazyReactor
from mqtwisted.shaping.rates import EPSILON
from mqtwisted.shaping.store import Key
from mqtwisted.state.keeper import PersistentStore, Runner, encode
from mqtwisted.state.redis import RedisBackend

log = Logger()

#: seconds a slot stays taken in Redis unless renewed (a dead node's slots come back after this)
LEASE = 30.0
#: seconds between renewals of the leases in use
RENEW = 10.0
#: seconds before asking Redis again for a slot it refused (or when it failed to answer)
RETRY = 0.25
#: seconds a granted slot nobody took is kept before it goes back
SPARE = 2.0
#: the wait answered while a turn is being reserved (the reservation wakes delivery sooner)
PENDING = 1.0


class RedisStore(PersistentStore):
    """:class:`~mqtwisted.shaping.store.Store` whose slots and rates are shared through Redis
    (see the module docstring); ``run`` makes the blocking calls in a thread."""

    reactor = LazyReactor()

    def __init__(self, backend: RedisBackend, run: Runner, reactor: Any = None, lease: float = LEASE) -> None:
        super().__init__()
        self.lease = lease
        self.backend = backend
        self.run = run
        self._reactor = reactor
        self.node = uuid.uuid4().hex[:12]
        self.serial = itertools.count(1)
        #: what delivery is told when a slot or a turn came (the keeper sets it)
        self.ready: Callable[[Key], None] = lambda key: None
        self.in_use: dict[Key, list[str]] = {}
        self.spare: dict[Key, list[tuple[str, float]]] = {}
        self.asking: set[Key] = set()
        #: key -> (start, end, interval) of a reserved turn, in this node's clock
        self.turns: dict[Key, tuple[float, float, float]] = {}
        self.renewed = 0.0
        self.failing = False

    # -- slots ---------------------------------------------------------------------------------

    def acquire(self, key: Key, limit: int) -> bool:
        spare = self.spare.get(key)
        if spare:
            member, _ = spare.pop()
            self.in_use.setdefault(key, []).append(member)
            return True
        if ("slot", key) not in self.asking:
            self._ask_slot(key, limit)
        return False

    def _ask_slot(self, key: Key, limit: int) -> None:
        asking = ("slot", key)
        self.asking.add(asking)
        member = f"{self.node}:{next(self.serial)}"
        d = self.run(self.backend.take_slot, encode(key), limit, member, self.lease)

        def answered(granted: bool) -> None:
            self.asking.discard(asking)
            self.answering()
            if granted:
                self.spare.setdefault(key, []).append((member, self.reactor.seconds()))
                self.ready(key)
            else:
                self.reactor.callLater(RETRY, self.ready, key)

        d.addCallbacks(answered, self._unanswered, errbackArgs=(asking, key))

    def release(self, key: Key) -> None:
        members = self.in_use.get(key)
        if not members:
            return
        member = members.pop()
        if not members:
            del self.in_use[key]
        self._drop(key, member)

    def _drop(self, key: Key, member: str) -> None:
        d = self.run(self.backend.drop_slot, encode(key), member)
        # Not given back: the lease ends by itself within LEASE seconds.
        d.addErrback(lambda f: log.warn("state: giving back a slot for {key}: {error}", key=key,
                                        error=f.getErrorMessage()))

    def held(self, key: Key) -> int:
        return len(self.in_use.get(key, ()))

    # -- rates ---------------------------------------------------------------------------------

    def pace(self, key: Key, now: float, interval: float, take: bool) -> float:
        turn = self.turns.get(key)
        if turn is not None and (now >= turn[1] or turn[2] != interval):
            del self.turns[key]  # missed, or the rate changed: reserve again
            turn = None
        if turn is None:
            self._reserve(key, interval)
            return PENDING
        if turn[0] - now > EPSILON:
            return turn[0] - now
        if take:
            del self.turns[key]
            self._reserve(key, interval)
        return 0.0

    def _reserve(self, key: Key, interval: float) -> None:
        asking = ("turn", key)
        if asking in self.asking:
            return
        self.asking.add(asking)
        sent = self.reactor.seconds()
        d = self.run(self.backend.reserve, encode(key), interval)

        def answered(wait: float) -> None:
            self.asking.discard(asking)
            self.answering()
            came = self.reactor.seconds()
            start, end = came + wait, sent + wait + interval
            if end - start > EPSILON:
                self.turns[key] = (start, end, interval)
            else:
                log.warn("state: a turn for {key} came after it ended (interval {interval} s is shorter "
                         "than the round trip to Redis)", key=key, interval=interval)
            self.ready(key)

        d.addCallbacks(answered, self._unanswered, errbackArgs=(asking, key))

    def _unanswered(self, f: Any, asking: tuple[str, Key], key: Key) -> None:
        """A slot or a turn asked for ``key`` got no answer: delivery asks again later."""
        self.asking.discard(asking)
        self.not_answering(f)
        self.reactor.callLater(RETRY, self.ready, key)

    def not_answering(self, f: Any) -> None:
        # Once per outage: delivery asks again every RETRY seconds meanwhile.
        if not self.failing:
            self.failing = True
            log.error("state: Redis does not answer ({error}); no connection is opened and no message "
                      "sent where a shared limit applies until it does", error=f.getErrorMessage())

    def answering(self) -> None:
        if self.failing:
            self.failing = False
            log.info("state: Redis answers again")

    # -- upkeep (each round of the keeper) -----------------------------------------------------

    def tick(self) -> None:
        now = self.reactor.seconds()
        for key, spare in list(self.spare.items()):
            for member, granted in [s for s in spare if now - s[1] > SPARE]:
                spare.remove((member, granted))
                self._drop(key, member)
            if not spare:
                del self.spare[key]
        if now - self.renewed < min(RENEW, self.lease / 3):
            return
        self.renewed = now
        held = [(key, m) for key, members in self.in_use.items() for m in members]
        held += [(key, m) for key, spare in self.spare.items() for m, _ in spare]
        d = self.run(self.backend.renew_slots, [(encode(k), m) for k, m in held], self.lease)

        def renewed(lost: list[int]) -> None:
            for i in lost:
                log.warn("state: the lease of a connection slot for {key} ran out (this node was away "
                         "longer than {lease} s); another node may have taken it", key=held[i][0], lease=self.lease)

        d.addCallbacks(renewed, lambda f: log.warn("state: renewing connection slots: {error}",
                                                   error=f.getErrorMessage()))

    def close(self) -> None:
        """Stopping: every slot held goes back now."""
        for key, members in self.in_use.items():
            for m in members:
                self._drop(key, m)
        for key, spare in self.spare.items():
            for m, _ in spare:
                self._drop(key, m)
        self.in_use, self.spare = {}, {}
