"""The Overview's graphs: received, delivered, deferred and failed per second, kept in the server
so that a page opened now shows the last five minutes and the last hour at once.

:class:`Series` is sampled once a second from the process's counters (:data:`METRICS`, which
include the delivery workers' reports): 300 one-second points and 360 ten-second points, each the
mean rate over its interval, in two ring buffers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from mqtwisted.metrics import METRICS, Metrics

KINDS = ("received", "delivered", "deferred", "failed")
SHORT = 300  # points of one second: five minutes
LONG = 360   # points of ten seconds: one hour
LONG_STEP = 10


def totals(metrics: Metrics = METRICS) -> dict[str, int]:
    """What the graphs count, since start: documents received (SMTP and the API) and outcomes."""
    outcomes = metrics.outcome_counts()
    received = sum(n for code, n in metrics.messages.items() if code < 400) + metrics.injected
    return {"received": received, **{k: outcomes.get(k, 0) for k in KINDS[1:]}}


class Series:
    def __init__(self, read: Callable[[], dict[str, int]] = totals) -> None:
        self.read = read
        self.short: deque[list[float]] = deque(maxlen=SHORT)
        self.long: deque[list[float]] = deque(maxlen=LONG)
        self.last: tuple[float, dict[str, int]] | None = None
        self.long_start: tuple[float, dict[str, int]] | None = None

    def sample(self, now: float) -> None:
        current = self.read()
        if self.last is not None:
            self.short.append(_point(self.last, (now, current)))
        self.last = (now, current)
        if self.long_start is None:
            self.long_start = (now, current)
        elif now - self.long_start[0] >= LONG_STEP - 0.5:
            self.long.append(_point(self.long_start, (now, current)))
            self.long_start = (now, current)

    def as_json(self) -> dict[str, Any]:
        return {"kinds": list(KINDS), "short": list(self.short), "long": list(self.long),
                "short_step": 1, "long_step": LONG_STEP}


def _point(before: tuple[float, dict[str, int]], after: tuple[float, dict[str, int]]) -> list[float]:
    span = max(after[0] - before[0], 1e-6)
    return [round(after[0], 3), *(round(max(0, after[1][k] - before[1][k]) / span, 3) for k in KINDS)]
