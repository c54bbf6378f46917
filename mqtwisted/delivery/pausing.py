"""Messages held by a pause (:mod:`mqtwisted.state.pauses`): they wait here, leases kept and no
attempt made, and go on to their destination when the pause is removed or ends.

A message is checked when it arrives and again when a destination is about to send it (a pause
added while it waited in a destination's queue), and every held message is checked again
whenever the pauses change and when the earliest of their pauses ends.

Held messages keep their leases, which count against the consumer's prefetch; so that a pause
of much mail cannot stop the rest, no more than half the prefetch is held, and a paused message
beyond that goes back to the outbox, due again when its pause ends or after
:data:`RECHECK` seconds, whichever comes first (still without an attempt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from mqtwisted.delivery.connections import DestinationKey, Job
    from mqtwisted.delivery.service import DeliveryService
    from mqtwisted.state.pauses import Pause

log = Logger()

#: the longest a paused message put back to the outbox waits before it is looked at again
RECHECK = 60.0


class PausedJobs:
    def __init__(self, service: DeliveryService) -> None:
        self.service = service
        self.held: list[tuple[Job, DestinationKey]] = []
        self._call: Any = None

    def pause_of(self, job: Job, key: DestinationKey) -> Pause | None:
        doc = job.document
        return self.service.state.paused(key.source.address, doc.pool, doc.recipient_domain, doc.tags or ())

    def hold_if_paused(self, job: Job, key: DestinationKey) -> bool:
        """Hold ``job`` when a pause matches it; False when it may go on."""
        pause = self.pause_of(job, key)
        if pause is None:
            return False
        if len(self.held) >= max(1, self.service.options.prefetch // 2):
            now = self.service.now()
            self.service.put_back(job, now + RECHECK if pause.until is None else min(pause.until, now + RECHECK))
            return True
        self.held.append((job, key))
        if pause.until is not None:
            self._wake_at(pause.until)
        return True

    def recheck(self) -> None:
        """Pauses changed or one ended: send on what no pause holds any more; hold what a new
        pause matches among the messages waiting for a connection."""
        if self.service.stopping:
            return
        held, self.held = self.held, []
        for job, key in held:
            if not self.hold_if_paused(job, key):
                self.service.dispatch(job, key)
        for dest in list(self.service.destinations.values()):
            waiting = list(dest.pending)
            kept = [job for job in waiting if not self.hold_if_paused(job, dest.key)]
            if len(kept) != len(waiting):
                dest.pending.clear()
                dest.pending.extend(kept)
                self.service.forget_if_idle(dest)

    def _wake_at(self, when: float) -> None:
        reactor = self.service.reactor
        delay = max(0.0, when - reactor.seconds())
        call = self._call
        if call is not None and call.active():
            if call.getTime() <= reactor.seconds() + delay:
                return
            call.cancel()
        self._call = reactor.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._call = None
        self.recheck()

    def release_all(self) -> None:
        """Stopping: every held lease goes back to the queue."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        held, self.held = self.held, []
        for job, _ in held:
            self.service.release(job)
