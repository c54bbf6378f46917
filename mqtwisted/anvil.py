"""Per-client event limits, as Postfix's anvil keeps them: new connections and failed AUTH
attempts per client IP in a sliding window (SMTP), failed console logins (``www-auth-failures``).

A limit is written ``COUNT/SECONDS`` (``5/600``: at most 5 events in any 600 s).  Each client IP
keeps the times of its last ``COUNT`` events, so a limit is exact (no burst at a window edge) and
memory is bounded by ``COUNT`` per client and by :data:`MAX_CLIENTS` clients; the oldest client is
forgotten first when that many are tracked.  Clients in the exception networks are never limited
(Postfix's ``smtpd_client_event_limit_exceptions``, ``$mynetworks`` by default).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

import attrs

from mqtwisted.networks import in_networks

#: clients tracked per limit before the least recently seen is forgotten
MAX_CLIENTS = 100_000


@attrs.frozen
class Rate:
    """``count`` events in ``seconds``; a count of 0 means no limit."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"5/600"`` → Rate(5, 600.0); ``"0"`` or ``""`` → no limit.  ValueError names the form."""
        text = text.strip()
        if text in ("", "0"):
            return cls(0, 0.0)
        count, slash, seconds = text.partition("/")
        try:
            rate = cls(int(count), float(seconds))
        except ValueError:
            raise ValueError(f"{text!r} is not COUNT/SECONDS (e.g. 5/600), or 0 for no limit") from None
        if not slash or rate.count < 0 or rate.seconds <= 0:
            raise ValueError(f"{text!r} is not COUNT/SECONDS with a positive window, or 0 for no limit")
        return rate

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}" if self.count else "0"


class EventLimit:
    """One limit (``rate``) counted per client IP."""

    def __init__(self, rate: Rate, clock: Callable[[], float], exceptions: tuple[str, ...] = ()) -> None:
        self.rate = rate
        self.clock = clock
        self.networks = exceptions
        self.events: OrderedDict[str, deque[float]] = OrderedDict()

    def exempt(self, ip: str) -> bool:
        return not self.rate.count or in_networks(self.networks, ip)

    def exceeded(self, ip: str) -> bool:
        """True when ``ip`` had ``count`` events in the last ``seconds`` (the next is refused)."""
        return not self.exempt(ip) and self._full(ip)

    def _full(self, ip: str) -> bool:
        times = self.events.get(ip)
        if times is None or len(times) < self.rate.count:
            return False
        return self.clock() - times[0] < self.rate.seconds

    def wait(self, ip: str) -> float:
        """Seconds until ``ip`` is under the limit again (0 when it is now)."""
        if not self.exceeded(ip):
            return 0.0
        return self.rate.seconds - (self.clock() - self.events[ip][0])

    def record(self, ip: str) -> None:
        """Count one event of ``ip`` now."""
        if not self.exempt(ip):
            self._add(ip)

    def _add(self, ip: str) -> None:
        times = self.events.get(ip)
        if times is None:
            times = self.events[ip] = deque(maxlen=self.rate.count)
            if len(self.events) > MAX_CLIENTS:
                self.events.popitem(last=False)
        else:
            self.events.move_to_end(ip)
        times.append(self.clock())

    def admit(self, ip: str) -> bool:
        """Count an event of ``ip`` unless it is over the limit: False means refuse it."""
        # exempt() once: it parses the address (every new SMTP connection comes here)
        if self.exempt(ip):
            return True
        if self._full(ip):
            return False
        self._add(ip)
        return True
