"""The delivery service: consumes the outbox, hands each message to the connection scheduler
(:mod:`mqtwisted.delivery.connections`) and settles every lease with what its outcome publishes
(:mod:`mqtwisted.delivery.outcomes`).

Wiring: ``DeliveryService(queue, hooks, DeliveryOptions(...))`` as a child of the MTA's
MultiService, started after the queue (``queue.start()`` must have been called: consuming
starts in ``startService``).  The service pickles (TAP files): only the queue, the hook runner
and the options are kept; the reactor, resolver and every connection are made in startService.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mqtwisted import hooks as hook_names
from mqtwisted.classify import Classifier, RulesError
from mqtwisted.connection import HookRunner, NoHooks
from mqtwisted.delivery import outcomes
from mqtwisted.delivery.board import Board
from mqtwisted.delivery.connections import (
    Destination,
    DestinationKey,
    Job,
    batch_key,
    destination_key,
    needs_of,
)
from mqtwisted.delivery.options import DeliveryOptions
from mqtwisted.delivery.pausing import PausedJobs
from mqtwisted.delivery.signing import Signing, ThreadRunner, load_keys
from mqtwisted.dns import MXResolver
from mqtwisted.document import DocumentError, OutgoingDocument
from mqtwisted.jsonvalues import parse_hostport
from mqtwisted.metrics import METRICS
from mqtwisted.milter.outbound import OutboundMilters
from mqtwisted.oplog import delivery_attempt
from mqtwisted.queue import Lease, Publication, Queue
from mqtwisted.reactors import LazyReactor
from mqtwisted.results import Attempt
from mqtwisted.shaping import Shaper, ShapingConfig, ShapingError, UnknownPool, load_shaping
from mqtwisted.signing import DkimPropertyError, Signer, parse_dkim_property
from mqtwisted.smtp.client import EncryptOnly, OutMessage
from mqtwisted.state.keeper import StateKeeper
from mqtwisted.state.opening import make_keeper
from mqtwisted.tlspolicy import TLSPolicies, make_policies

log = Logger()

#: MX lookups of the shaping file's domains in flight at once
LEARN_AT_ONCE = 8


class DeliveryService(service.Service):
    """Delivers the outbox.  ``queue`` is a started :class:`~mqtwisted.queue.Queue`; ``hooks``
    the plugin layer (``mq_smtp_out_data``/``mq_smtp_out_sent``); ``reactor``, ``resolver`` and
    ``run_in_thread`` (what signs off the reactor thread) are injectable for tests (a
    ``MemoryReactorClock``, a resolver returning fixed targets, a runner that calls at once).

    The ``--dkim-keys`` file is read here, so that a bad one stops the start (ConfigError)."""

    name = "delivery"

    def __init__(
        self,
        queue: Queue,
        hooks: HookRunner | None = None,
        options: DeliveryOptions | None = None,
        *,
        reactor: Any = None,
        resolver: Any = None,
        rng: random.Random | None = None,
        run_in_thread: ThreadRunner | None = None,
        state: StateKeeper | None = None,
    ) -> None:
        self.queue = queue
        self.hooks: HookRunner = hooks if hooks is not None else NoHooks()
        self.options = options or DeliveryOptions()
        self._init_runtime(reactor, resolver, rng, run_in_thread, state)

    def _init_runtime(self, reactor: Any = None, resolver: Any = None, rng: Any = None,
                      run_in_thread: ThreadRunner | None = None, state: StateKeeper | None = None) -> None:
        self.signing = Signing(Signer(self.options.helo or "localhost"), run_in_thread or self.in_thread,
                               load_keys(self.options.dkim_keys), self.outbound_milters(reactor))
        self._reactor = reactor
        self._resolver = resolver
        self._rng = rng
        self.destinations: dict[DestinationKey, Destination] = {}
        self.stopping = False
        self._settling: set[Deferred] = set()
        self._to_settle: list[tuple[Job, list[Publication]]] = []
        self._timers: dict[Any, tuple[Any, Lease]] = {}
        self._tls_policies: TLSPolicies | None = None
        self._tls_context: Any = None
        self.helo = self.options.helo or "localhost"
        config = load_shaping(self.options.shaping) if self.options.shaping else ShapingConfig()
        #: pauses, suppressions and the shaper's counters, kept where --state says
        self.state = state if state is not None else make_keeper(self.options.state, self.options.state_dir, self._reactor)
        self.shaper = Shaper(config, self.options.base_limits(), clock=self.now, store=self.state.store,
                             default_ips=self.options.default_ips)
        self.paused = PausedJobs(self)
        self.state.listeners.append(self.paused.recheck)
        self.state.store.ready = self.shared_ready
        self.classifier = Classifier.load(self.options.bounce_rules)
        #: (sending address, site) -> the destinations there, which share the shaper's counters
        self.sites: dict[tuple[str | None, str], set[Destination]] = {}
        self.board = Board()

    def outbound_milters(self, reactor: Any) -> OutboundMilters | None:
        """The ``--milters-out`` of the current options (None: none)."""
        if not self.options.milters_out:
            return None
        return OutboundMilters(list(self.options.milters_out), self.options.milter_timeout,
                               self.options.milter_default_action, self.options.helo or "localhost", reactor)

    # TAP files pickle the service tree: configuration only, never live objects.
    def __getstate__(self) -> dict[str, Any]:
        return {"queue": self.queue, "hooks": self.hooks, "options": self.options, "name": self.name, "parent": self.parent}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.running = 0
        self._init_runtime()

    reactor = LazyReactor()

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            servers = [parse_hostport(self.options.dns_server, 53)] if self.options.dns_server else None
            self._resolver = MXResolver(servers, reactor=self.reactor, ipv6=self.options.ipv6, rng=self._rng)
        return self._resolver

    def now(self) -> float:
        return self.reactor.seconds()

    def in_thread(self, f: Any, *args: Any) -> Deferred[Any]:
        """``f(*args)`` in the reactor's thread pool (signing: CPU-bound)."""
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    @property
    def tls_policies(self) -> TLSPolicies:
        """What delivery asks before connecting to a host: which TLS policy applies there."""
        if self._tls_policies is None:
            o = self.options
            self._tls_policies = make_policies(
                self.resolver, reactor=self.reactor, clock=self.now, tls_ca=o.tls_ca, data_dir=o.data_dir,
                mta_sts=o.mta_sts, dane=o.dane, mta_sts_port=o.mta_sts_port, connect_timeout=o.connect_timeout)
        return self._tls_policies

    def tls_client(self, host: str) -> EncryptOnly:
        """TLS for a connection to ``host``: one OpenSSL context for all, the host named by SNI;
        the certificate is checked after the handshake by the host's policy."""
        if self._tls_context is None:
            from twisted.internet import ssl

            self._tls_context = ssl.CertificateOptions(verify=False)
        return EncryptOnly(self._tls_context, host)

    # -- life cycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        # Resolve the host name now, not at import time: twisted.mail.smtp.DNSNAME calls
        # socket.getfqdn() when it is imported, before the operator's settings apply.
        self.helo = self.options.helo or socket.getfqdn()
        # The ARC authserv-id: this host's name, known only now.
        self.signing.signer.host_name = self.helo
        # Pauses and suppressions apply from the first message: consume once they are loaded.
        self.state.start().addCallback(lambda _: self._consume())

    def _consume(self) -> None:
        if self.stopping:
            return
        self.learn_sites()
        self.queue.consume(self.options.queue("outbox"), self._received, prefetch=self.options.prefetch)

    def stopService(self) -> Deferred[None]:
        """Stop taking messages, give back what has not started, let sessions finish the message
        they are sending, and wait for every outcome to be settled."""
        super().stopService()
        self.stopping = True
        for call, lease in list(self._timers.values()):
            if call.active():
                call.cancel()
            self.queue.release(lease)
        self._timers.clear()
        self.paused.release_all()
        self._settle_now()
        waits = []
        for dest in list(self.destinations.values()):
            dest.stop_waking()
            while dest.pending:
                self.release(dest.pending.popleft())
            for runner in list(dest.idle):
                runner.quit_idle()
            for runner in dest.runners:
                if runner.factory is not None and not runner.factory.done.called:
                    waits.append(runner.factory.done)
        d = defer.DeferredList(waits + list(self._settling), consumeErrors=True)

        def settled(_: Any) -> Any:
            self._settle_now()  # what the last sessions reported in this reactor turn
            if self._settling:
                return defer.DeferredList(list(self._settling), consumeErrors=True)
            return None

        d.addCallback(settled)
        # Last: what the sessions that finished counted and suspended is written too.
        d.addCallback(lambda _: self.state.stop())
        d.addCallback(lambda _: None)
        return d

    def reconfigure(self, options: Mapping[str, Any]) -> None:
        """SIGHUP: the reloadable settings from MTA option values; the transport settings that
        tests and TAP files may have set directly (port, security, CA, IPv6) are kept."""
        fresh = attrs.evolve(
            DeliveryOptions.from_options(options), port=self.options.port,
            security=self.options.security, tls_ca=self.options.tls_ca, ipv6=self.options.ipv6,
            mta_sts_port=self.options.mta_sts_port, data_dir=self.options.data_dir,
            state=self.options.state, state_dir=self.options.state_dir,
        )
        try:
            # Read again even when its name is unchanged: keys are added and rotated in place.
            self.signing.keys = load_keys(fresh.dkim_keys)
        except Exception as e:
            log.error("reload: {error}; signing with the keys loaded before", error=str(e))
            fresh = attrs.evolve(fresh, dkim_keys=self.options.dkim_keys)
        self.options = fresh
        self.signing.milters = self.outbound_milters(self.reactor)
        config = self.shaper.config
        try:
            config = load_shaping(self.options.shaping) if self.options.shaping else ShapingConfig()
        except ShapingError as e:
            log.error("shaping file refused, the running one stays: {error}", error=str(e))
        self.shaper.reconfigure(config, self.options.base_limits(), self.options.default_ips)
        try:
            self.classifier = Classifier.load(self.options.bounce_rules)
        except RulesError as e:
            log.error("bounce rules refused, the running ones stay: {error}", error=str(e))
        if self.running:
            self.learn_sites()

    def counts(self) -> tuple[int, int]:
        """(outbound connections, messages waiting for one)."""
        destinations = list(self.destinations.values())
        return sum(len(d.runners) for d in destinations), sum(len(d.pending) for d in destinations)

    def destination_rows(self) -> list[dict[str, Any]]:
        """The console's Destinations rows (:mod:`mqtwisted.delivery.board`)."""
        live = [(d.source, d.site, len(d.pending), {d.key.host}) for d in list(self.destinations.values())
                if d.site is not None]
        return self.board.rows(self.shaper, live, self.now())

    def release(self, job: Job) -> None:
        self.queue.release(job.lease)

    def forget_if_idle(self, dest: Destination) -> None:
        if not dest.runners and not dest.pending and self.destinations.get(dest.key) is dest:
            del self.destinations[dest.key]
            dest.stop_waking()
            if dest.site is not None:
                self.sites.get((dest.source, dest.site), set()).discard(dest)

    # -- shaping ---------------------------------------------------------------------------------

    def place(self, dest: Destination, site: str) -> None:
        """``dest`` resolved to ``site``: it shares that site's counters with the others there."""
        if dest.site is not None:
            self.sites.get((dest.source, dest.site), set()).discard(dest)
        dest.site = site
        self.sites.setdefault((dest.source, site), set()).add(dest)

    def pump_site(self, source: str | None, site: str, done: Destination | None) -> None:
        """A connection at ``site`` closed: the other destinations there may open one."""
        for dest in list(self.sites.get((source, site), ())):
            if dest is not done:
                dest.pump()

    def shared_ready(self, key: tuple[str, ...]) -> None:
        """A store shared by nodes got a slot or a turn for ``(kind, source, site)``."""
        self.pump_site(key[1] or None, key[2], None)

    def close_idle_at(self, source: str | None, site: str, waiting: Destination) -> None:
        """``waiting`` needs a connection slot at ``site``: end the longest-parked connection
        of another destination there (its close pumps ``waiting``)."""
        for dest in self.sites.get((source, site), ()):
            if dest is not waiting and dest.idle:
                dest.idle[0].quit_idle()
                return

    def learn_sites(self) -> None:
        """Tell the shaper the MX hosts of the destinations known and of every domain in the
        shaping file, so a domain sharing a configured domain's MX hosts gets its limits from
        its first message."""
        for dest in list(self.destinations.values()):
            if dest.targets is not None and dest.key.kind == "mx":
                self.shaper.site(dest.key.host, [t.host for t in dest.targets])
        # A few lookups at a time: a file of a thousand domains sent a thousand queries at once,
        # whose answers overflowed the socket buffers (lost, retried, timed out) and whose burst
        # held the worker's reactor long enough for its parent to kill it as silent.
        lookups = defer.DeferredSemaphore(LEARN_AT_ONCE)
        for domain in self.shaper.configured_domains():
            d = lookups.run(self.resolver.resolve, domain, self.options.port)
            d.addCallback(lambda targets, domain=domain: self.shaper.site(domain, [t.host for t in targets]))
            d.addErrback(lambda f, domain=domain: log.info("shaping: MX of {domain} not known yet: {error}",
                                                           domain=domain, error=f.getErrorMessage()))

    # -- intake --------------------------------------------------------------------------------

    def _received(self, lease: Lease) -> None:
        if self.stopping:
            self.queue.release(lease)
            return
        job = Job(lease, OutgoingDocument.of(lease.document))
        doc = job.document
        now = self.now()
        try:
            doc.check()
        except DocumentError as e:
            self._final(job, Attempt("process", "invalid", description=str(e), time=now, permanent=True))
            return
        if doc.dkim is not None:
            try:
                parse_dkim_property(doc.dkim)  # its key is read once per process (cached)
            except DkimPropertyError as e:
                self._final(job, Attempt("process", "invalid", description=f"property 'dkim': {e}",
                                         time=now, permanent=True))
                return
        due = doc.nextattempt
        if due is not None and due > now + 0.5:
            # The queue handed us a message early: hold the lease until it is due.
            token = object()
            call = self.reactor.callLater(due - now, self._due, token)
            self._timers[token] = (call, lease)
            return
        # Without mime a plugin may still build it in mq_smtp_out_data (plugins/template_mime.py).
        if not doc.has_mime and not self.hooks.defines(hook_names.OUT_DATA):
            self._final(job, Attempt("process", "invalid", description="property 'mime': missing", time=now, permanent=True))
            return
        if outcomes.expired(doc, now, self.options):
            self._final(job, outcomes.expiry(now))
            return
        entry = self.state.suppressed(doc.recipient or "")
        if entry is not None:
            self._final(job, Attempt("process", "error", entry.code, entry.enhanced, entry.text, time=now,
                                     permanent=True))
            return
        try:
            source = self.shaper.choose_source(doc.ips, doc.pool)
        except UnknownPool as e:
            # The operator may add the pool and reload: a temporary failure, not a bounce.
            self.attempted(job, Attempt("process", "error", 451, "4.3.5", str(e), time=now, permanent=False))
            return
        key = destination_key(doc, self.options, source)
        job.destination, job.source = key.host, source.address or ""
        job.batch = batch_key(doc, self.signing.keys is not None)
        if not self.paused.hold_if_paused(job, key):
            self.dispatch(job, key)

    def dispatch(self, job: Job, key: DestinationKey) -> None:
        """Hand ``job`` to the destination ``key`` (made when there is none)."""
        dest = self.destinations.get(key)
        if dest is None:
            dest = self.destinations[key] = Destination(self, key)
        dest.add(job)

    def put_back(self, job: Job, due: float) -> None:
        """Back to the outbox, due at ``due``, with no attempt recorded (a paused message)."""
        doc = job.document.copy()
        doc.nextattempt = due
        self._settle(job, [Publication(self.options.queue("outbox"), doc.json)])

    def _due(self, token: Any) -> None:
        _, lease = self._timers.pop(token)
        self._received(lease)

    def batch_size(self) -> int:
        """Recipients per transaction: one while a plugin's outbound hook or an outbound milter
        would see only the first document (or recipient) of a transaction."""
        if (self.hooks.defines(hook_names.OUT_DATA) or self.hooks.defines(hook_names.OUT_SENT)
                or self.signing.milters is not None):
            return 1
        return max(1, self.options.max_recipients)

    def out_message(self, jobs: list[Job]) -> OutMessage:
        """The first job's message, with the others (same :func:`batch_key`) as its ``also``."""
        doc = jobs[0].document
        mime = doc.mime or b""
        # The headers edits and signing are the message's prepare step, after mq_smtp_out_data.
        message = OutMessage(doc.sender, doc.recipient or "", mime, dsn=self._dsn(doc), document=doc.json,
                             key=jobs[0], prepare=self.signing.step(doc), needs=needs_of(doc))
        for job in jobs[1:]:
            other = job.document
            message.also.append(OutMessage(other.sender, other.recipient or "", mime, dsn=self._dsn(other),
                                           document=other.json, key=job))
        return message

    @staticmethod
    def _dsn(doc: OutgoingDocument) -> dict[str, Any] | None:
        return doc.dsn.to_json() if doc.dsn is not None else None

    # -- outcomes ------------------------------------------------------------------------------

    def attempted(self, job: Job, attempt: Attempt) -> None:
        """Record ``attempt`` on the job's document and settle its lease accordingly."""
        self.classify(job, attempt)
        delivery_attempt(job.document.json, attempt)
        pubs = outcomes.after_attempt(job.document, attempt, self.now(), self.options, self.helo)
        outbox = self.options.queue("outbox")
        deferred = not attempt.accepted and any(p.queue == outbox for p in pubs)
        self.report(job, attempt, "delivered" if attempt.accepted else "deferred" if deferred else "failed")
        self._settle(job, pubs)

    def _final(self, job: Job, attempt: Attempt) -> None:
        self.classify(job, attempt)
        delivery_attempt(job.document.json, attempt)
        self.report(job, attempt, "failed")
        doc = job.document.with_attempt(attempt.as_record())
        self._settle(job, outcomes.final(doc, attempt, self.now(), self.options, self.helo))

    def report(self, job: Job, attempt: Attempt, outcome: str) -> None:
        """Count the outcome, show it on the destinations board and in the delivery log."""
        now = self.now()
        METRICS.outcome(outcome)
        domain = job.destination or _domain(job.document.json.get("recipient"))
        self.board.record(job.source, job.site or domain, domain, attempt, outcome, now)
        doc = job.document.json
        METRICS.logged({
            "time": now, "id": job.lease.id, "queue": job.lease.queue, "recipient": doc.get("recipient"),
            "sender": doc.get("envelope"), "domain": domain, "site": job.site or domain,
            "source": job.source, "state": attempt.state, "result": attempt.result, "code": attempt.code,
            "status": attempt.status, "description": attempt.description[:500],
            "classification": attempt.classification or "accepted", "outcome": outcome,
            "mta": attempt.mta, "remote_ip": attempt.remote_ip,
        })

    def classify(self, job: Job, attempt: Attempt) -> None:
        """Give ``attempt`` its bounce class (unless accepted) and count it by destination,
        sending address and class."""
        if not attempt.accepted and attempt.classification is None:
            attempt.classification = self.classifier.classify(
                attempt.state, attempt.result, attempt.code, attempt.status, attempt.description)
        METRICS.classified(job.destination, job.source, attempt.classification or "accepted")

    def _settle(self, job: Job, pubs: list[Publication]) -> None:
        # Outcomes of one reactor turn (the recipients of a transaction, answered by one reply
        # to the dot) are settled together: one job for the queue, one callback for all.
        if not self._to_settle:
            self.reactor.callLater(0, self._settle_now)
        self._to_settle.append((job, pubs))

    def _settle_now(self) -> None:
        batch, self._to_settle = self._to_settle, []
        if not batch:
            return
        d = defer.maybeDeferred(self.queue.settle_many, [(job.lease, pubs) for job, pubs in batch])
        self._settling.add(d)

        def settled(errors: list[Exception | None]) -> None:
            for (job, _), error in zip(batch, errors, strict=True):
                if error is not None:
                    failed(job, error)

        def failed(job: Job, error: Any) -> None:
            # Not durable: give the lease back so the message is tried again (never lost).
            log.error("settling {id} failed; released: {error}", id=job.lease.id, error=error)
            self.queue.release(job.lease)

        def all_failed(f: Any) -> None:
            for job, _ in batch:
                failed(job, f.getErrorMessage())

        d.addCallbacks(settled, all_failed)
        d.addBoth(lambda r: self._settling.discard(d))


def _domain(recipient: Any) -> str:
    return recipient.rsplit("@", 1)[1].lower() if isinstance(recipient, str) and "@" in recipient else ""


def make_delivery_service(options: Mapping[str, Any], queue: Queue, hooks: HookRunner | None) -> DeliveryService:
    """The service behind ``--delivery on`` (called by :mod:`mqtwisted.service`)."""
    return DeliveryService(queue, hooks, attrs.evolve(DeliveryOptions.from_options(options), state_dir=options["data-dir"]))
