"""Which local address a message is sent from: its ``ips``, else its ``pool``, else the
``smtp-defaultips`` option, else the pool named ``default``, else none (the system chooses).

Within a list or a pool the choice is made per message by smooth weighted round robin: over any
run of messages each address gets its weight's share, interleaved rather than in blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs


@attrs.frozen
class Source:
    """A sending address (None: let the system choose) and the EHLO name to greet with (None:
    the MTA's host name)."""

    address: str | None = None
    ehlo: str | None = None


NO_SOURCE = Source()


class UnknownPool(LookupError):
    """A message names a pool the shaping file does not define."""


class WeightedRoundRobin:
    """Smooth weighted round robin over ``(item, weight)`` pairs."""

    def __init__(self, members: Sequence[tuple[str, int]]) -> None:
        self.members = tuple(members)
        self.total = sum(w for _, w in self.members)
        self.current = [0] * len(self.members)

    def next(self) -> str:
        best = 0
        for i, (_, weight) in enumerate(self.members):
            self.current[i] += weight
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return self.members[best][0]


class SourceChooser:
    """Picks a message's sending address; keeps the round-robin position of each list and pool."""

    def __init__(self, pools: Mapping[str, Sequence[tuple[str, int]]], ehlo: Mapping[str, str | None],
                 default_ips: Sequence[str] = ()) -> None:
        self.pools = dict(pools)
        self.ehlo = dict(ehlo)
        self.default_ips = tuple(default_ips)
        self.rotations: dict[tuple[tuple[str, int], ...], WeightedRoundRobin] = {}

    def choose(self, ips: Sequence[str] | None, pool: str | None) -> Source:
        if ips:
            members = tuple((ip, 1) for ip in ips)
        elif pool:
            if pool not in self.pools:
                raise UnknownPool(f"pool {pool!r} is not defined in the shaping file")
            members = tuple(self.pools[pool])
        elif self.default_ips:
            members = tuple((ip, 1) for ip in self.default_ips)
        elif "default" in self.pools:
            members = tuple(self.pools["default"])
        else:
            return NO_SOURCE
        rotation = self.rotations.get(members)
        if rotation is None:
            rotation = self.rotations[members] = WeightedRoundRobin(members)
        address = rotation.next() if len(members) > 1 else members[0][0]
        return Source(address, self.ehlo.get(address))
