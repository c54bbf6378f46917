"""The destinations board: per (sending address, site), what the console's Destinations page
shows: connections and message rate against the shaper's limits, a suspension, the last replies.

The delivery service records every attempt here (:meth:`Board.record`); :meth:`Board.rows` reads
the live state from the shaper when asked.  A worker process sends its rows with each metrics
snapshot, so the MTA process shows them as its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs

from mqtwisted.results import Attempt

#: replies kept per row
REPLIES = 5
#: the message rate is counted over this many seconds
WINDOW = 60
#: a row with no attempt for this long and no connection is forgotten
FORGET_AFTER = 3600.0
#: rows sent at most (a worker's snapshot stays small)
MAX_ROWS = 500


@attrs.define(eq=False)
class _Row:
    domains: set[str] = attrs.field(factory=set)
    replies: deque[dict[str, Any]] = attrs.field(factory=lambda: deque(maxlen=REPLIES))
    #: attempts per second of the last WINDOW seconds: second -> count
    seconds: dict[int, int] = attrs.field(factory=dict)
    last: float = 0.0
    #: delivered, deferred, failed -> attempts that led there
    outcomes: dict[str, int] = attrs.field(factory=dict)


class Board:
    def __init__(self) -> None:
        self.table: dict[tuple[str, str], _Row] = {}

    def record(self, source: str, site: str, domain: str, attempt: Attempt, outcome: str, now: float) -> None:
        row = self.table.get((source, site))
        if row is None:
            row = self.table[(source, site)] = _Row()
        if len(row.domains) < 20:
            row.domains.add(domain)
        second = int(now)
        row.seconds[second] = row.seconds.get(second, 0) + 1
        if len(row.seconds) > WINDOW:
            for old in [s for s in row.seconds if s <= second - WINDOW]:
                del row.seconds[old]
        row.last = now
        row.outcomes[outcome] = row.outcomes.get(outcome, 0) + 1
        row.replies.append({
            "time": now, "state": attempt.state, "result": attempt.result, "code": attempt.code,
            "status": attempt.status, "text": attempt.description[:300],
            "classification": attempt.classification or ("accepted" if attempt.accepted else None),
        })

    def rows(self, shaper: Any, live: Iterable[tuple[str | None, str, int, set[str]]], now: float) -> list[dict[str, Any]]:
        """One dict per (source, site) with activity or live destinations.  ``live``:
        (source, site, messages waiting, domains) of the destinations open now."""
        waiting: dict[tuple[str, str], tuple[int, set[str]]] = {}
        for source, site, pending, domains in live:
            key = (source or "", site)
            n, names = waiting.get(key, (0, set()))
            waiting[key] = (n + pending, names | domains)
        for key, row in list(self.table.items()):
            if now - row.last > FORGET_AFTER and key not in waiting:
                del self.table[key]
        out = []
        for key in sorted(set(self.table) | set(waiting))[:MAX_ROWS]:
            source, site = key
            row = self.table.get(key) or _Row()
            pending, domains = waiting.get(key, (0, set()))
            limits = shaper.limits(source or None, site)
            held = shaper.suspended(source or None, site)
            recent = sum(n for s, n in row.seconds.items() if s > now - WINDOW)
            out.append({
                "site": site,
                "source": source,
                "domains": sorted(row.domains | domains),
                "connections": shaper.connections(source or None, site),
                "connection_limit": limits.connection_limit,
                "max_connection_rate": str(limits.max_connection_rate) if limits.max_connection_rate else None,
                "messages_per_minute": recent * 60 / WINDOW,
                "max_message_rate": str(limits.max_message_rate) if limits.max_message_rate else None,
                "message_rate_per_minute": (60 / limits.max_message_rate.interval
                                            if limits.max_message_rate else None),
                "pending": pending,
                "delivered": row.outcomes.get("delivered", 0),
                "deferred": row.outcomes.get("deferred", 0),
                "failed": row.outcomes.get("failed", 0),
                "suspended_until": held[0] if held else None,
                "suspended_because": held[1] if held else None,
                "replies": list(row.replies)[::-1],
            })
        return out
