"""Free space where the MTA stores what it accepts: refuse new mail (``452 4.3.1`` at MAIL FROM)
before the disk is full rather than after a client sent a whole message, and accept again by
itself when space returns.

The answer is cached for a second while the free space is well above the minimum (``statvfs`` is
cheap, but not at every MAIL of a busy server); within twice the minimum it is asked at every MAIL,
because a fast load writes more than the margin in a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()


class FreeSpace:
    """Is there ``minimum`` bytes free under ``path``?  (``minimum`` 0: always yes.)"""

    def __init__(
        self,
        path: str,
        minimum: int,
        clock: Callable[[], float],
        interval: float = 1.0,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = path
        self.minimum = minimum
        self.clock = clock
        self.interval = interval
        self.statvfs = statvfs
        self.checked = float("-inf")
        self.low = False
        self.free = 0

    def short(self) -> bool:
        """True while less than ``minimum`` bytes are free (checked at most once per interval)."""
        if not self.minimum:
            return False
        now = self.clock()
        if now - self.checked >= self.interval or self.free < 2 * self.minimum:
            self.checked = now
            try:
                st = self.statvfs(self.path)
            except OSError as e:
                log.error("free space of {path} unknown ({error}): refusing new mail", path=self.path, error=e)
                self.free = 0
            else:
                self.free = st.f_bavail * st.f_frsize
            low = self.free < self.minimum
            if low != self.low:
                self.low = low
                if low:
                    log.warn("{path}: {free} bytes free, below queue-minfree {minimum}: refusing new mail",
                             path=self.path, free=self.free, minimum=self.minimum)
                else:
                    log.info("{path}: {free} bytes free again: accepting mail", path=self.path, free=self.free)
        return self.low


def watching(space: FreeSpace | None, path: str, minimum: int, clock: Callable[[], float]) -> FreeSpace:
    """``space`` while it watches ``path`` for ``minimum``, else a new one (SIGHUP may have
    changed ``queue-minfree``)."""
    if space is None or space.minimum != minimum or space.path != path:
        return FreeSpace(path, minimum, clock)
    return space
