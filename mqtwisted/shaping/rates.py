"""Rates (``"600/min"``) and the generic cell rate algorithm that spaces events out evenly.

GCRA keeps one number per counter, the theoretical arrival time (TAT) of the next event.  An event
may happen when ``now >= TAT``, and moves TAT on by one emission interval (the period divided by the
count).  With no burst allowance the events of ``"120/min"`` are exactly 0.5 s apart, whenever they
start: there is no window that fills at the top of each minute and lets a burst through.
"""

from __future__ import annotations

import re

import attrs

#: unit -> seconds; the spellings KumoMTA accepts for its throttles
UNITS: dict[str, float] = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hr": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}

_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr|d|day)?\s*$")
#: the seconds per unit of a duration (``ms`` only here: a rate per millisecond makes no sense)
_DURATION_UNITS = {**UNITS, "ms": 0.001}


@attrs.frozen
class Rate:
    """``count`` events per ``period`` seconds."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"N/s"``, ``"N/min"``, ``"N/h"`` or ``"N/day"``; ValueError otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"expected a rate like \"600/min\", got {text!r}")
        m = _RATE.match(text.lower())
        if m is None or m.group(2) not in UNITS:
            raise ValueError(f"expected a rate like \"600/min\" (units s, min, h, day), got {text!r}")
        count = int(m.group(1))
        if count <= 0:
            raise ValueError(f"a rate must allow at least one event, got {text!r}")
        return cls(count, UNITS[m.group(2)])

    @property
    def interval(self) -> float:
        """Seconds between two events at this rate."""
        return self.period / self.count

    def per_day(self) -> int:
        """How many events this rate allows in a day."""
        return int(self.count * 86400 // self.period)

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h", 86400: "day"}.get(int(self.period), f"{self.period:g}s")
        return f"{self.count}/{unit}"


def parse_duration(value: object) -> float:
    """Seconds from ``"60s"``, ``"5m"``, ``"1h"``, ``"2d"``, ``"500ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"60s\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).lower())
        if m is None:
            raise ValueError(f"expected a duration like \"60s\", \"5m\", \"1h\", got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


#: float slack when comparing times that were computed by adding intervals
EPSILON = 1e-9


def gcra(tat: float | None, now: float, interval: float) -> tuple[float, float]:
    """One GCRA step without burst allowance: (seconds to wait, the new TAT).  A wait of 0 means
    the event happens now and the new TAT counts it; otherwise nothing is counted."""
    if tat is not None and tat - now > EPSILON:
        return tat - now, tat
    start = now if tat is None or tat < now else tat
    return 0.0, start + interval
