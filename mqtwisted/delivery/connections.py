"""Scheduling across connections: messages are grouped by destination (an MX domain or a
smarthost, with its TLS policy and credentials), and each destination runs up to
``max-connections-per-domain`` connections (:class:`Runner`), reuses them for message after
message and parks idle ones for ``max-idle-time`` seconds."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from mqtwisted.dns import DNSFailure, Target
from mqtwisted.document import OutgoingDocument
from mqtwisted.jsonvalues import parse_hostport
from mqtwisted.queue import Lease
from mqtwisted.results import Attempt
from mqtwisted.smtp.client import OutboundFactory, OutboundSender, OutMessage

if TYPE_CHECKING:
    from mqtwisted.delivery.options import DeliveryOptions
    from mqtwisted.delivery.service import DeliveryService

log = Logger()


@attrs.define(eq=False)
class Job:
    """One leased document on its way out."""

    lease: Lease
    document: OutgoingDocument


@attrs.define(frozen=True)
class DestinationKey:
    """Messages with equal keys share connections."""

    kind: str  # "mx" or "smarthost"
    host: str
    port: int
    security: str
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)


class Destination:
    """Messages waiting for one destination and the connections serving them."""

    def __init__(self, service: DeliveryService, key: DestinationKey) -> None:
        self.service = service
        self.key = key
        self.pending: deque[Job] = deque()
        self.runners: set[Runner] = set()
        #: parked connections, most recently parked last
        self.idle: list[Runner] = []

    @property
    def starting(self) -> int:
        return sum(1 for r in self.runners if not r.established)

    def add(self, job: Job) -> None:
        self.pending.append(job)
        self.pump()

    def pump(self) -> None:
        # Parked connections first, the most recently used one first (LIFO): it is the one
        # least likely to have been closed by the server, and the others may expire.
        while self.pending and self.idle and not self.service.stopping:
            self.idle.pop().wake()
        # One more connection while there is more waiting than the connections still being set
        # up will take, up to the per-destination cap.
        cap = self.service.options.max_connections_per_domain
        while self.pending and len(self.runners) < cap and len(self.pending) > self.starting and not self.service.stopping:
            runner = Runner(self)
            self.runners.add(runner)
            runner.start()

    def take(self) -> Job | None:
        if self.service.stopping or not self.pending:
            return None
        return self.pending.popleft()

    def give_back(self, job: Job) -> None:
        if self.service.stopping:
            self.service.release(job)
        else:
            self.pending.appendleft(job)

    def runner_done(self, runner: Runner) -> None:
        self.runners.discard(runner)
        runner.unpark()
        self.pump()
        self.service.forget_if_idle(self)

    def runner_failed(self, runner: Runner, attempt: Attempt) -> None:
        """No connection could be made: the messages waiting here share that outcome, unless
        another connection is still at work on them."""
        self.runners.discard(runner)
        if not self.runners:
            jobs, self.pending = list(self.pending), deque()
            for job in jobs:
                self.service.attempted(job, attrs.evolve(attempt))
        self.service.forget_if_idle(self)


class Runner:
    """One connection's life for a destination: resolve, try each address in order until a
    session is established, then feed it messages (the client's MessageSource)."""

    def __init__(self, destination: Destination) -> None:
        self.dest = destination
        self.service = destination.service
        self.established = False
        self.addresses: list[tuple[str, str]] = []
        self.index = 0
        self.host: str | None = None
        self.ip: str | None = None
        self.plaintext = False
        self.last_fault: Attempt | None = None
        self.factory: OutboundFactory | None = None
        self.session: OutboundSender | None = None
        self._idle_call: Any = None

    def start(self) -> None:
        key = self.dest.key
        resolver = self.service.resolver
        if key.kind == "smarthost":
            d = resolver.resolve_host(key.host, key.port)
        else:
            d = resolver.resolve(key.host, key.port)
        d.addCallbacks(self._resolved, self._unresolved)
        d.addErrback(lambda f: log.failure("delivery runner failed", f))

    def _unresolved(self, failure: Any) -> None:
        e = failure.value
        if isinstance(e, DNSFailure):
            attempt = Attempt("dns", "error", e.code, e.status, e.description, time=self.service.now(), permanent=e.permanent)
        else:
            attempt = Attempt("dns", "error", 451, "4.4.3", str(e), time=self.service.now(), permanent=False)
        self.dest.runner_failed(self, attempt)

    def _resolved(self, targets: list[Target]) -> None:
        self.addresses = [(t.host, ip) for t in targets for ip in t.addresses]
        self._try_next()

    def _try_next(self) -> None:
        if self.service.stopping or self.index >= len(self.addresses):
            fault = self.last_fault or Attempt("connect", "error", description="no address to connect to", time=self.service.now())
            self.dest.runner_failed(self, fault)
            return
        self.host, self.ip = self.addresses[self.index]
        self.index += 1
        key = self.dest.key
        security = "none" if self.plaintext else key.security
        self.factory = OutboundFactory(
            self,
            helo=self.service.helo,
            security=security,
            tls_hostname=self.host,
            tls_options=self.service.tls_options(security, self.host),
            username=key.username,
            password=key.password,
            timeout=self.service.options.timeout,
            max_messages=self.service.options.max_messages_per_connection,
            hooks=self.service.hooks,
            clock=self.service.reactor,
        )
        self.service.reactor.connectTCP(self.ip, key.port, self.factory, timeout=self.service.options.connect_timeout)

    # MessageSource

    def next_message(self, session: OutboundSender) -> OutMessage | None:
        job = self.dest.take()
        if job is None:
            return None
        self.established = True
        return self.service.out_message(job)

    def park(self, session: OutboundSender) -> bool:
        """The session has nothing to send: keep it for ``max_idle_time`` seconds."""
        idle = self.service.options.max_idle_time
        if self.service.stopping or idle <= 0:
            return False
        self.session = session
        self.dest.idle.append(self)
        self._idle_call = self.service.reactor.callLater(idle, self._idle_expired)
        return True

    def unpark(self) -> None:
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None
        if self in self.dest.idle:
            self.dest.idle.remove(self)

    def wake(self) -> None:
        """Hand the parked session the next pending message (called by the destination)."""
        self.unpark()
        session = self.session
        if session is None or not session.resume():
            # Closing already: its session_ended will come; another connection takes the work.
            return

    def quit_idle(self) -> None:
        self.unpark()
        if self.session is not None:
            self.session.quit_idle()

    def _idle_expired(self) -> None:
        self._idle_call = None
        self.quit_idle()

    def give_back(self, message: OutMessage) -> None:
        self.dest.give_back(message.key)

    def message_done(self, message: OutMessage, attempt: Attempt) -> None:
        self._stamp(attempt)
        self.established = True
        self.service.attempted(message.key, attempt)

    def session_ended(self, session: OutboundSender | None, fault: Attempt | None) -> None:
        if fault is None or (session is not None and session.reported > 0):
            self.dest.runner_done(self)
            return
        self._stamp(fault)
        self.last_fault = fault
        if fault.state == "starttls" and self.dest.key.security == "optional" and not self.plaintext:
            # "optional": TLS when it works, plaintext when the handshake does not.
            self.plaintext = True
            self.index -= 1
        self._try_next()

    def _stamp(self, attempt: Attempt) -> None:
        if attempt.remote_ip is None:
            attempt.remote_ip = self.ip
        if attempt.mta is None:
            attempt.mta = self.host


def destination_key(doc: OutgoingDocument, options: DeliveryOptions) -> DestinationKey:
    """Where ``doc`` goes: its own smarthost, else the configured one, else its recipient's MX
    (``doc`` has passed :meth:`~mqtwisted.document.OutgoingDocument.check`)."""
    security = doc.security or options.security
    smarthost = doc.smarthost
    if smarthost is not None:
        return DestinationKey("smarthost", smarthost.hostname.lower(), smarthost.port, security,
                              smarthost.username, smarthost.password)
    if options.smarthost:
        host, port = parse_hostport(options.smarthost, 25)
        return DestinationKey("smarthost", host.lower(), port, security)
    return DestinationKey("mx", doc.recipient_domain, options.port, security)
