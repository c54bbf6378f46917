"""Where shaping keeps its counters: one small protocol, so that a store shared by several nodes
(Redis) can replace the in-memory one without the shaper changing.

Every operation is one check-and-update, which a shared store does atomically (a Lua script, a
transaction); keys are tuples of strings.  Times are the shaper's clock, in seconds.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from mqtwisted.shaping.rates import EPSILON, gcra

Key = tuple[Hashable, ...]


class Store(Protocol):
    def acquire(self, key: Key, limit: int) -> bool:
        """Take one of ``limit`` slots (concurrent connections); False when all are taken."""

    def release(self, key: Key) -> None:
        """Give back a slot taken by :meth:`acquire`."""

    def held(self, key: Key) -> int:
        """Slots taken now."""

    def pace(self, key: Key, now: float, interval: float, take: bool) -> float:
        """GCRA: seconds until the next event may happen (0: now).  With ``take`` and 0, the
        event is counted."""

    def hold(self, key: Key, until: float, reason: str) -> None:
        """Hold ``key`` (a suspension) until ``until``; a longer hold already there stays."""

    def held_until(self, key: Key, now: float) -> tuple[float, str] | None:
        """The end of ``key``'s hold and its reason, or None when it is not held."""

    def count_day(self, key: Key, day: int) -> None:
        """Count one event on ``day`` (days since the epoch)."""

    def days(self, key: Key) -> dict[int, int]:
        """Events counted per day."""


class MemoryStore:
    """The counters of one process."""

    def __init__(self) -> None:
        self.slots: dict[Key, int] = {}
        self.tats: dict[Key, float] = {}
        self.holds: dict[Key, tuple[float, str]] = {}
        self.day_counts: dict[Key, dict[int, int]] = {}

    def acquire(self, key: Key, limit: int) -> bool:
        if self.slots.get(key, 0) >= limit:
            return False
        self.slots[key] = self.slots.get(key, 0) + 1
        return True

    def release(self, key: Key) -> None:
        left = self.slots.get(key, 0) - 1
        if left > 0:
            self.slots[key] = left
        else:
            self.slots.pop(key, None)

    def held(self, key: Key) -> int:
        return self.slots.get(key, 0)

    def pace(self, key: Key, now: float, interval: float, take: bool) -> float:
        tat = self.tats.get(key)
        wait, new_tat = gcra(tat, now, interval)
        if wait == 0 and take:
            self.tats[key] = new_tat
        elif tat is not None and tat < now - interval:
            del self.tats[key]  # long idle: forget it, it would allow nothing more than None does
        return wait

    def hold(self, key: Key, until: float, reason: str) -> None:
        current = self.holds.get(key)
        if current is None or current[0] < until:
            self.holds[key] = (until, reason)

    def held_until(self, key: Key, now: float) -> tuple[float, str] | None:
        current = self.holds.get(key)
        if current is None:
            return None
        if current[0] - now <= EPSILON:
            del self.holds[key]
            return None
        return current

    def count_day(self, key: Key, day: int) -> None:
        days = self.day_counts.setdefault(key, {})
        days[day] = days.get(day, 0) + 1

    def days(self, key: Key) -> dict[int, int]:
        return dict(self.day_counts.get(key, {}))
