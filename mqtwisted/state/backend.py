"""Where operator state is kept: one blocking protocol with two implementations, SQLite in the
data directory (:mod:`~mqtwisted.state.sqlite`, the default) and Redis
(:mod:`~mqtwisted.state.redis`, ``--state redis://…``).

Every call blocks: the MTA makes them in a thread of its own
(:class:`~mqtwisted.state.keeper.StateKeeper`), the ``mqmta`` command directly.  Holds
(automation's suspensions) and warm-up days are keyed by strings (the keeper encodes the
shaper's tuple keys); times are seconds since the epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mqtwisted.state.pauses import Pause
    from mqtwisted.state.suppression import Suppression

#: hold key -> (until, reason)
Holds = dict[str, tuple[float, str]]
#: (warm-up key, day) -> events counted that day
Days = dict[tuple[str, int], int]


class Backend(Protocol):
    def version(self) -> int:
        """A number that changes whenever pauses or suppressions change."""

    def put_pause(self, pause: Pause) -> None: ...

    def pauses(self) -> list[Pause]:
        """Every pause stored, expired ones included."""

    def remove_pause(self, pause_id: str) -> bool: ...

    def put_suppression(self, entry: Suppression) -> None: ...

    def suppressions(self) -> list[Suppression]: ...

    def remove_suppression(self, pattern: str) -> bool: ...

    def sync(self, holds: Holds, days: Days, now: float) -> tuple[Holds, Days]:
        """Store ``holds`` (a longer one already stored stays) and add ``days`` to the counts;
        return every hold still in force and every day count, this process's and others'."""

    def close(self) -> None: ...

