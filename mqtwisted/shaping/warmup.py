"""Warm-up: a new sending IP's daily allowance grows by a schedule.

Day N of an IP's sending uses entry N of its schedule and the last entry repeats.  A day counts
only when the IP sent on it, so a pause does not skip steps.  Days are UTC days of the shaper's
clock (days since the epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mqtwisted.shaping.rates import Rate

DAY = 86400


def day_of(now: float) -> int:
    return int(now // DAY)


def allowance(schedule: Sequence[Rate], days: Mapping[int, int], today: int) -> int:
    """Messages the IP may send on ``today``, given what it sent on each day so far."""
    sending_days_before = sum(1 for day, count in days.items() if day < today and count > 0)
    return schedule[min(sending_days_before, len(schedule) - 1)].per_day()


def warmup_wait(schedule: Sequence[Rate], days: Mapping[int, int], now: float) -> float:
    """0 when the IP may send one more message now, else seconds until the next UTC day."""
    today = day_of(now)
    if days.get(today, 0) < allowance(schedule, days, today):
        return 0.0
    return (today + 1) * DAY - now
