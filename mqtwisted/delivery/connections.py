"""Scheduling across connections: messages are grouped by destination (a sending address and an
MX domain or a smarthost, with its TLS policy and credentials); each destination resolves its
hosts, asks the shaper (:mod:`mqtwisted.shaping`) before it opens a connection (:class:`Runner`)
and before each message, reuses connections for message after message and parks idle ones.
When the shaper says wait, the destination sets one timer and asks again when it fires."""

from __future__ import annotations

import ipaddress
import json
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from mqtwisted.dns import DNSFailure, Target
from mqtwisted.document import OutgoingDocument
from mqtwisted.jsonvalues import parse_hostport
from mqtwisted.queue import Lease
from mqtwisted.results import Attempt
from mqtwisted.shaping import Fired, Source
from mqtwisted.shaping.shaper import BASE_LIMITS
from mqtwisted.shaping.sources import NO_SOURCE
from mqtwisted.smtp.client import Needs, OutboundFactory, OutboundSender, OutMessage
from mqtwisted.tlspolicy import HostRefused, HostTLS

if TYPE_CHECKING:
    from mqtwisted.delivery.options import DeliveryOptions
    from mqtwisted.delivery.service import DeliveryService

log = Logger()

#: seconds a destination's resolution is used for new connections before it is looked up again
RESOLVE_AGAIN = 60.0
#: jobs of other messages a destination looks past for more recipients of the one it sends (the
#: copies of a message are fetched together, so they are next to each other in the queue)
BATCH_LOOKAHEAD = 16


@attrs.define(eq=False)
class Job:
    """One leased document on its way out."""

    lease: Lease
    document: OutgoingDocument
    #: where it goes and the address it is sent from, as /metrics labels them
    destination: str = ""
    source: str = ""
    #: the shaper's site it was sent to ('' until a connection took it)
    site: str = ""
    #: what documents must share to be sent in one transaction (:func:`batch_key`); None: alone
    batch: Any = None


@attrs.define(frozen=True)
class DestinationKey:
    """Messages with equal keys share connections."""

    kind: str  # "mx" or "smarthost"
    host: str
    port: int
    security: str
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: the local address to send from and the EHLO name that goes with it
    source: Source = NO_SOURCE
    #: REQUIRETLS messages (RFC 8689): verified TLS to a receiver offering REQUIRETLS, else returned
    requiretls: bool = False
    #: ``TLS-Required: No`` messages (RFC 8689 §4.2.2): TLS when offered, no policy holds them back
    tls_optional: bool = False


class Destination:
    """Messages waiting for one destination and the connections serving them."""

    def __init__(self, service: DeliveryService, key: DestinationKey) -> None:
        self.service = service
        self.key = key
        self.pending: deque[Job] = deque()
        self.runners: set[Runner] = set()
        #: parked connections, most recently parked last
        self.idle: list[Runner] = []
        #: the hosts to connect to, and when they were looked up
        self.targets: list[Target] | None = None
        self.resolved_at = 0.0
        self.resolving = False
        #: the shaper's name for where these hosts are (set once resolved)
        self.site: str | None = None
        self.wakeup: Any = None

    @property
    def source(self) -> str | None:
        return self.key.source.address

    @property
    def starting(self) -> int:
        return sum(1 for r in self.runners if not r.established)

    def add(self, job: Job) -> None:
        self.pending.append(job)
        if self.idle:
            # A parked connection is woken once the reactor turn that brought the document is
            # over: the queue hands documents over in bursts (a fetch, a broker's frames of one
            # read), and woken by the first it would send that one alone, not with its copies.
            self.wake_in(0)
        else:
            # New connections are asked for at once, document by document, so destinations
            # whose documents arrive interleaved share the slots of a site between them.
            self.pump()

    def pump(self) -> None:
        service = self.service
        if service.stopping or not self.pending:
            return
        if self.targets is None or service.now() - self.resolved_at > RESOLVE_AGAIN:
            self.resolve()  # pumps again once resolved
            return
        shaper, site = service.shaper, self.site
        assert site is not None
        # Parked connections first, the most recently used one first (LIFO): it is the one
        # least likely to have been closed by the server, and the others may expire.  One that
        # is refused a message parks again, so ask the shaper before each.
        while True:
            wait = shaper.send_wait(self.source, site)
            if wait:
                self.wake_in(wait)
                return
            if not (self.pending and self.idle) or service.stopping:
                break
            self.idle.pop().wake()
        # One more connection while there is more waiting than the connections still being set
        # up will take (each a transaction's worth: copies of one message share one), as far as
        # the shaper allows.
        share = service.batch_size() if self.pending and self.pending[0].batch is not None else 1
        while self.pending and len(self.pending) > self.starting * share and not service.stopping:
            wait = shaper.may_connect(self.source, site)
            if wait == math.inf:
                # At the connection limit: a close pumps again.  A connection parked idle for
                # another domain at this site is of no use here; closing it frees its slot.
                service.close_idle_at(self.source, site, self)
                return
            if wait:
                self.wake_in(wait)
                return
            runner = Runner(self)
            self.runners.add(runner)
            runner.start()

    def wake_in(self, seconds: float) -> None:
        """Pump again in ``seconds`` (one timer: the earliest asked for wins)."""
        call = self.wakeup
        if call is not None and call.active():
            if call.getTime() <= self.service.now() + seconds:
                return
            call.cancel()
        self.wakeup = self.service.reactor.callLater(seconds, self.woken)

    def woken(self) -> None:
        self.wakeup = None
        self.pump()

    def stop_waking(self) -> None:
        if self.wakeup is not None and self.wakeup.active():
            self.wakeup.cancel()
        self.wakeup = None

    # -- resolution ------------------------------------------------------------------------------

    def resolve(self) -> None:
        if self.resolving:
            return
        self.resolving = True
        key = self.key
        resolver = self.service.resolver
        if key.kind == "smarthost":
            d = resolver.resolve_host(key.host, key.port)
        else:
            d = resolver.resolve(key.host, key.port)
        d.addCallbacks(self.resolved, self.unresolved)
        d.addErrback(lambda f: log.failure("delivery resolution failed", f))

    def resolved(self, targets: list[Target]) -> None:
        self.resolving = False
        self.targets, self.resolved_at = targets, self.service.now()
        hosts = [t.host for t in targets] if self.key.kind == "mx" else []
        self.service.place(self, self.service.shaper.site(self.key.host, hosts))
        self.pump()

    def unresolved(self, failure: Any) -> None:
        self.resolving = False
        e = failure.value
        if isinstance(e, DNSFailure):
            attempt = Attempt("dns", "error", e.code, e.status, e.description, time=self.service.now(), permanent=e.permanent)
        else:
            attempt = Attempt("dns", "error", 451, "4.4.3", str(e), time=self.service.now(), permanent=False)
        if self.runners and self.targets is not None:
            # Connections are still at work on the hosts found before: keep using those.
            self.resolved_at = self.service.now()
            log.warn("{host}: looking up again failed ({error}); keeping the hosts found before",
                     host=self.key.host, error=attempt.description)
            self.pump()
            return
        jobs, self.pending = list(self.pending), deque()
        for job in jobs:
            self.service.attempted(job, attrs.evolve(attempt))
        self.service.forget_if_idle(self)

    # -- what runners ask and tell ---------------------------------------------------------------

    def take(self, most: int = 1) -> list[Job]:
        """The next job, and up to ``most - 1`` more of the same message (equal :attr:`Job.batch`)
        to send in its transaction; each one admitted by the shaper."""
        if self.service.stopping or not self.pending or self.site is None:
            return []
        shaper = self.service.shaper
        wait = shaper.may_send(self.source, self.site)
        if wait:
            self.wake_in(wait)
            return []
        first = self.pending.popleft()
        jobs = [first]
        if most > 1 and first.batch is not None and self.pending:
            # The copies of one message were queued together: look a little way ahead only.
            skipped: list[Job] = []
            while self.pending and len(jobs) < most and len(skipped) < BATCH_LOOKAHEAD:
                job = self.pending.popleft()
                if job.batch != first.batch:
                    skipped.append(job)
                elif shaper.may_send(self.source, self.site):
                    skipped.append(job)
                    break
                else:
                    jobs.append(job)
            self.pending.extendleft(reversed(skipped))
        for job in jobs:
            job.site = self.site
        return jobs

    def give_back(self, job: Job) -> None:
        if self.service.stopping:
            self.service.release(job)
        else:
            self.pending.appendleft(job)

    def runner_done(self, runner: Runner) -> None:
        self.runners.discard(runner)
        runner.unpark()
        self.closed(runner)
        self.service.forget_if_idle(self)

    def runner_failed(self, runner: Runner, attempt: Attempt) -> None:
        """No connection could be made: the messages waiting here share that outcome, unless
        another connection is still at work on them."""
        self.runners.discard(runner)
        if not self.runners:
            jobs, self.pending = list(self.pending), deque()
            for job in jobs:
                self.service.attempted(job, attrs.evolve(attempt))
        # Not pumped here: the connections still at work will, or the retry brings them back.
        self.closed(runner, pump=False)
        self.service.forget_if_idle(self)

    def closed(self, runner: Runner, pump: bool = True) -> None:
        """A connection's slot is free: this destination and the others at its site may use it."""
        assert self.site is not None
        self.service.shaper.connection_closed(self.source, self.site)
        if pump:
            self.pump()
        self.service.pump_site(self.source, self.site, self)


class Runner:
    """One connection's life for a destination: try each of its addresses in order until a
    session is established, then feed it messages (the client's MessageSource).  Counted by the
    shaper from its start to :meth:`Destination.closed`."""

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
        #: the TLS policy of the host being connected to
        self.tls: HostTLS | None = None
        self.factory: OutboundFactory | None = None
        self.session: OutboundSender | None = None
        self._idle_call: Any = None
        self.limits = BASE_LIMITS

    def start(self) -> None:
        """Connect to the destination's hosts in order (it has resolved them)."""
        source = self.dest.source
        # A socket bound to an IPv4 address cannot reach an IPv6 one, nor the reverse.
        version = ipaddress.ip_address(source).version if source else None
        self.addresses = [
            (t.host, ip) for t in self.dest.targets or () for ip in t.addresses
            if version is None or ipaddress.ip_address(ip).version == version
        ]
        self.limits = self.service.shaper.limits(source, self.dest.site or "")
        self._try_next()

    def _try_next(self) -> None:
        if self.service.stopping or self.index >= len(self.addresses):
            fault = self.last_fault or Attempt("connect", "error", description="no address to connect to", time=self.service.now())
            self.dest.runner_failed(self, fault)
            return
        self.host, self.ip = self.addresses[self.index]
        self.index += 1
        key = self.dest.key
        # Which TLS policy applies to this host (DANE, MTA-STS, the security level): asked anew for
        # each host, answered from memory once its DNS records are known.
        d = self.service.tls_policies.for_destination(key.kind, key.host, self.host, key.port, key.security,
                                                      published=not key.tls_optional)
        d.addCallbacks(self._connect, self._refused)
        d.addErrback(self._broken)

    def _broken(self, failure: Any) -> None:
        # A fault of ours, not of the host: the messages are tried again later.
        log.failure("connecting to {host}", failure, host=self.host)
        self.dest.runner_failed(self, Attempt("connect", "error", description=f"local error: {failure.getErrorMessage()}",
                                              time=self.service.now(), permanent=False))

    def _refused(self, failure: Any) -> Any:
        e = failure.value
        if not isinstance(e, HostRefused):
            return failure
        self.last_fault = Attempt(e.state, "error", None, e.status, e.description, time=self.service.now(),
                                  permanent=False, tls_policy=e.policy)
        self._stamp(self.last_fault)
        self._try_next()
        return None

    def _connect(self, tls: HostTLS) -> None:
        if self.service.stopping:
            self._try_next()
            return
        key = self.dest.key
        if key.requiretls:
            tls = self.service.tls_policies.strict(tls)
        self.tls = tls
        plaintext = self.plaintext and not tls.mandatory
        security = "none" if plaintext else key.security
        self.factory = OutboundFactory(
            self,
            helo=key.source.ehlo or self.service.helo,
            security=security,
            tls_hostname=self.host,
            tls_options=self.service.tls_client(self.host) if security != "none" or tls.mandatory else None,
            tls_check=tls.problem if tls.checks and not plaintext else None,
            tls_policy="none" if plaintext else tls.name,
            tls_mandatory=tls.mandatory,
            requiretls=key.requiretls,
            username=key.username,
            password=key.password,
            timeout=self.service.options.timeout,
            max_messages=self.limits.max_deliveries_per_connection or 1,
            hooks=self.service.hooks,
            clock=self.service.reactor,
        )
        bind = {"bindAddress": (key.source.address, 0)} if key.source.address else {}
        self.service.reactor.connectTCP(self.ip, key.port, self.factory, timeout=self.service.options.connect_timeout, **bind)

    # MessageSource

    def next_message(self, session: OutboundSender) -> OutMessage | None:
        jobs = self.dest.take(self.service.batch_size())
        if not jobs:
            return None
        self.established = True
        return self.service.out_message(jobs)

    def park(self, session: OutboundSender) -> bool:
        """The session has nothing to send: keep it for the idle timeout."""
        idle = self.limits.idle_timeout or 0.0
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
        if any(f.action == "bounce" for f in self.observe(attempt)) and not attempt.accepted:
            attempt.permanent = True
        self.service.attempted(message.key, attempt)

    def observe(self, attempt: Attempt) -> list[Fired]:
        """Show the shaper the server's reply; what its automation did."""
        if not attempt.reply or self.dest.site is None:
            return []
        return self.service.shaper.observe_reply(self.dest.source, self.dest.site, attempt.reply)

    def session_ended(self, session: OutboundSender | None, fault: Attempt | None) -> None:
        if fault is not None:
            self.observe(fault)
        if fault is None or (session is not None and session.reported > 0):
            self.dest.runner_done(self)
            return
        self._stamp(fault)
        self.last_fault = fault
        if (fault.state == "starttls" and self.dest.key.security == "optional" and not self.plaintext
                and not (self.tls is not None and self.tls.mandatory)):
            # "optional": TLS when it works, plaintext when the handshake does not.
            self.plaintext = True
            self.index -= 1
        self._try_next()

    def _stamp(self, attempt: Attempt) -> None:
        if attempt.remote_ip is None:
            attempt.remote_ip = self.ip
        if attempt.mta is None:
            attempt.mta = self.host
        if attempt.tls_policy is None and self.tls is not None:
            attempt.tls_policy = self.tls.name


def destination_key(doc: OutgoingDocument, options: DeliveryOptions, source: Source = NO_SOURCE) -> DestinationKey:
    """Where ``doc`` goes, sent from ``source``: its own smarthost, else the configured one, else
    its recipient's MX (``doc`` has passed :meth:`~mqtwisted.document.OutgoingDocument.check`)."""
    security = doc.security or options.security
    requiretls, tls_optional = bool(doc.requiretls), doc.tls_optional
    if tls_optional and security in ("required", "verified"):
        security = "opportunistic"  # RFC 8689 §4.2.2: the sender asked that no policy hold it back
    smarthost = doc.smarthost
    if smarthost is not None:
        return DestinationKey("smarthost", smarthost.hostname.lower(), smarthost.port, security,
                              smarthost.username, smarthost.password, source, requiretls, tls_optional)
    if options.smarthost:
        host, port = parse_hostport(options.smarthost, 25)
        return DestinationKey("smarthost", host.lower(), port, security, source=source, requiretls=requiretls,
                              tls_optional=tls_optional)
    return DestinationKey("mx", doc.recipient_domain, options.port, security, source=source,
                          requiretls=requiretls, tls_optional=tls_optional)


def batch_key(doc: OutgoingDocument, signing: bool) -> tuple[Any, ...] | None:
    """What documents sent in one transaction must share: the sender and the MIME, the DSN
    ``ret`` and ``envid`` (parameters of MAIL FROM), and what the prepare step reads (``headers``
    edits, ``dkim``, and when keys may sign it the ``connection`` that tells relayed mail).  None
    for a document without its MIME (a plugin may build one for it alone).  ``doc`` has passed
    its check."""
    raw = doc.json
    mime = raw.get("mime")
    if not isinstance(mime, str):
        return None
    dsn = doc.dsn
    signs = signing or raw.get("dkim") is not None
    extra = (raw.get("headers"), raw.get("dkim"), raw.get("connection") if signs else None)
    # The MIME compares by identity first: the spool hands the copies of one body out as one str.
    return (doc.sender, mime, dsn.ret if dsn else None, dsn.envid if dsn else None, needs_of(doc),
            json.dumps(extra, sort_keys=True) if any(v is not None for v in extra) else None)


def needs_of(doc: OutgoingDocument) -> Needs:
    """What ``doc``'s MAIL FROM asked of every hop (it has passed its check)."""
    return Needs(bool(doc.binarymime), bool(doc.smtputf8), bool(doc.requiretls))
