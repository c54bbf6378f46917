"""The outbound scheduler: consumes the outbox, groups messages by destination, delivers them
over reused connections, and settles every lease with its outcome (DESIGN.md §4, §5).

Wiring: ``DeliveryService(queue, hooks, DeliveryOptions(...))`` as a child of the MTA's
MultiService, started after the queue (``queue.start()`` must have been called: consuming
starts in ``startService``).  The service pickles (TAP files): only the queue, the hook runner
and the options are kept; the reactor, resolver and every connection are made in startService.

Outcomes, all through ``Queue.settle(lease, publications)``:

* accepted → ``results`` + ``success``;
* permanent failure (5xx, NXDOMAIN, null MX, invalid input, expiry) → ``results`` + ``failure``
  and, unless the envelope is empty or NOTIFY says otherwise, an RFC 3464 report to ``dsn``;
* temporary failure (4xx, connection faults, TLS policy) → back to ``outbox`` with
  ``nextattempt`` from the retry schedule, and a copy to ``retry``.
"""

from __future__ import annotations

import random
import re
import socket
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mqtwisted.bounce import build_dsn, wants_failure_dsn
from mqtwisted.connection import HookRunner, NoHooks
from mqtwisted.dns import DNSFailure, MXResolver, Target, parse_hostport
from mqtwisted.oplog import delivery_attempt
from mqtwisted.queue import Lease, Publication, Queue, mime_bytes
from mqtwisted.reactors import LazyReactor
from mqtwisted.results import (
    DEFAULT_MAX_DELIVERTIME,
    DEFAULT_RETRY_INTERVALS,
    Attempt,
    parse_intervals,
    parse_time,
    result_document,
    retry_interval,
    target_queue,
)
from mqtwisted.smtp.client import (
    SECURITY_LEVELS,
    OutboundFactory,
    OutboundSender,
    OutMessage,
    client_tls_options,
)

log = Logger()


@attrs.define
class DeliveryOptions:
    """Delivery settings; :meth:`from_options` reads them from the MTA's option names."""

    helo: str | None = None
    dns_server: str | None = None
    smarthost: str | None = None
    #: the SMTP port of MX hosts (25; tests point it elsewhere)
    port: int = 25
    max_connections_per_domain: int = 10
    max_messages_per_connection: int = 100
    #: seconds an outbound connection with nothing to send stays open for the next message to
    #: its destination (0: QUIT at once).  MailerQ keeps idle connections too: under a trickle
    #: of mail, a new connection per message costs more than the message itself.
    max_idle_time: float = 5.0
    retry_interval: tuple[int, ...] = DEFAULT_RETRY_INTERVALS
    max_delivertime: int = DEFAULT_MAX_DELIVERTIME
    max_attempts: int = 0
    security: str = "opportunistic"
    timeout: float = 300
    connect_timeout: float = 30
    prefetch: int = 1000
    #: default queue names by role (outbox, results, success, failure, retry, dsn)
    queues: dict[str, str] = attrs.field(factory=dict)
    #: PEM file of CAs for ``verified`` (default: the platform's trust store)
    tls_ca: str | None = None
    ipv6: bool = True

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> DeliveryOptions:
        """From a mapping with the command-line names (``max-connections-per-domain`` …)."""

        def get(name: str, default: Any) -> Any:
            for key in (name, name.replace("-", "_")):
                if key in opts and opts[key] not in (None, ""):
                    return opts[key]
            return default

        roles = ("outbox", "results", "success", "failure", "retry", "dsn")
        queues = {role: str(get(role, get(f"queue-{role}", role))) for role in roles}
        return cls(
            helo=get("hostname", None),
            dns_server=get("dns-server", None),
            smarthost=get("smarthost", None),
            port=int(get("delivery-port", 25)),
            max_connections_per_domain=int(get("max-connections-per-domain", 10)),
            max_messages_per_connection=int(get("max-messages-per-connection", 100)),
            max_idle_time=float(get("max-idle-time", 5.0)),
            retry_interval=parse_intervals(get("retry-interval", None)) or DEFAULT_RETRY_INTERVALS,
            max_delivertime=int(float(get("max-delivertime", DEFAULT_MAX_DELIVERTIME))),
            max_attempts=int(get("max-attempts", 0)),
            security=str(get("security", "opportunistic")),
            timeout=float(get("smtp-client-timeout", get("smtp-timeout", 300))),
            connect_timeout=float(get("connect-timeout", 30)),
            queues=queues,
            tls_ca=get("tls-ca", None),
        )


# -- header edits (MailerQ's "headers" property) -------------------------------------------------


def edit_headers(mime: bytes, edits: Mapping[str, Any]) -> bytes:
    """Apply MailerQ's ``headers`` edits: ``remove``, ``prepend``, ``append``/``add``, ``replace``
    (first occurrence, others removed, appended when absent) and ``update`` (like replace, never
    appended).  The body is left untouched."""
    m = re.search(rb"\r?\n\r?\n", mime)
    head, rest = (mime[: m.start()], mime[m.start():]) if m else (mime, b"")
    fields: list[list[bytes]] = []
    for line in re.split(rb"\r?\n", head) if head else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])

    def name_of(field: list[bytes]) -> str:
        return field[0].split(b":", 1)[0].strip().decode("latin-1").lower()

    def make(name: str, value: Any) -> list[list[bytes]]:
        values = value if isinstance(value, list) else [value]
        return [[f"{name}: {v}".encode()] for v in values if v is not None]

    remove = edits.get("remove")
    if isinstance(remove, str):
        remove = [remove]
    if isinstance(remove, list):
        gone = {str(r).lower() for r in remove}
        fields = [f for f in fields if name_of(f) not in gone]
    for mode in ("replace", "update"):
        for name, value in dict(edits.get(mode) or {}).items():
            idx = [i for i, f in enumerate(fields) if name_of(f) == name.lower()]
            new = make(name, value)
            if idx:
                first = idx[0]
                fields = [f for i, f in enumerate(fields) if i not in idx[1:]]
                fields[first:first + 1] = new
            elif mode == "replace":
                fields.extend(new)
    prepend: list[list[bytes]] = []
    for name, value in dict(edits.get("prepend") or {}).items():
        prepend.extend(make(name, value))
    fields = prepend + fields
    for key in ("append", "add"):
        for name, value in dict(edits.get(key) or {}).items():
            fields.extend(make(name, value))
    eol = b"\r\n" if b"\r\n" in mime or not mime else b"\n"
    new_head = eol.join(eol.join(f) for f in fields)
    return new_head + rest if rest else new_head + eol


# -- scheduling ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class Job:
    lease: Lease
    document: dict[str, Any]


@attrs.define(frozen=True)
class DestinationKey:
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


class DeliveryService(service.Service):
    """Delivers the outbox.  ``queue`` is a started :class:`~mqtwisted.queue.Queue`; ``hooks``
    the plugin layer (``mq_smtp_out_data``/``mq_smtp_out_sent``); ``reactor`` and ``resolver``
    are injectable for tests (a ``MemoryReactorClock``, a resolver returning fixed targets)."""

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
    ) -> None:
        self.queue = queue
        self.hooks: HookRunner = hooks if hooks is not None else NoHooks()
        self.options = options or DeliveryOptions()
        self._init_runtime(reactor, resolver, rng)

    def _init_runtime(self, reactor: Any = None, resolver: Any = None, rng: Any = None) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._rng = rng
        self.destinations: dict[DestinationKey, Destination] = {}
        self.stopping = False
        self._settling: set[Deferred] = set()
        self._timers: dict[Any, tuple[Any, Lease]] = {}
        self._tls_trust: Any = None
        self.helo = self.options.helo or "localhost"

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

    def tls_options(self, security: str, host: str) -> Any:
        if security == "none":
            return None
        if security == "verified" and self.options.tls_ca and self._tls_trust is None:
            from twisted.internet import ssl

            with open(self.options.tls_ca, "rb") as f:
                self._tls_trust = ssl.Certificate.loadPEM(f.read())
        return client_tls_options(security, host, self._tls_trust if security == "verified" else None)

    # -- life cycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        # Resolve the host name now, not at import time (DESIGN.md §3 on DNSNAME).
        self.helo = self.options.helo or socket.getfqdn()
        self.queue.consume(self._queue_name("outbox"), self._received, prefetch=self.options.prefetch)

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
        waits = []
        for dest in list(self.destinations.values()):
            while dest.pending:
                self.release(dest.pending.popleft())
            for runner in list(dest.idle):
                runner.quit_idle()
            for runner in dest.runners:
                if runner.factory is not None and not runner.factory.done.called:
                    waits.append(runner.factory.done)
        d = defer.DeferredList(waits + list(self._settling), consumeErrors=True)

        def settled(_: Any) -> Any:
            if self._settling:
                return defer.DeferredList(list(self._settling), consumeErrors=True)
            return None

        d.addCallback(settled)
        d.addCallback(lambda _: None)
        return d

    def reconfigure(self, options: Mapping[str, Any]) -> None:
        """SIGHUP: the reloadable settings from MTA option values; the transport settings that
        tests and TAP files may have set directly (port, security, CA, IPv6) are kept."""
        self.options = attrs.evolve(
            DeliveryOptions.from_options(options), port=self.options.port,
            security=self.options.security, tls_ca=self.options.tls_ca, ipv6=self.options.ipv6,
        )

    def counts(self) -> tuple[int, int]:
        """(outbound connections, messages waiting for one)."""
        destinations = list(self.destinations.values())
        return sum(len(d.runners) for d in destinations), sum(len(d.pending) for d in destinations)

    def release(self, job: Job) -> None:
        self.queue.release(job.lease)

    def forget_if_idle(self, dest: Destination) -> None:
        if not dest.runners and not dest.pending and self.destinations.get(dest.key) is dest:
            del self.destinations[dest.key]

    def _queue_name(self, role: str) -> str:
        return self.options.queues.get(role, role)

    # -- intake --------------------------------------------------------------------------------

    def _received(self, lease: Lease) -> None:
        if self.stopping:
            self.queue.release(lease)
            return
        doc = lease.document
        now = self.now()
        due = parse_time(doc.get("nextattempt"))
        if due is not None and due > now + 0.5:
            # The queue handed us a message early: hold the lease until it is due.
            token = object()
            call = self.reactor.callLater(due - now, self._due, token)
            self._timers[token] = (call, lease)
            return
        job = Job(lease, doc)
        problem = self._invalid(doc, may_build_mime=self.hooks.defines("mq_smtp_out_data"))
        if problem:
            self._final(job, Attempt("process", "invalid", description=problem, time=now, permanent=True))
            return
        attempts = len(doc.get("results") or [])
        max_attempts = _int(doc.get("maxattempts"), self.options.max_attempts)
        if now >= self._deadline(doc, now) or (max_attempts and attempts >= max_attempts):
            self._final(job, Attempt("process", "timeout", description="message expired (maxdelivertime or maxattempts)", time=now, permanent=True))
            return
        key = self._destination_key(doc)
        dest = self.destinations.get(key)
        if dest is None:
            dest = self.destinations[key] = Destination(self, key)
        dest.add(job)

    def _due(self, token: Any) -> None:
        _, lease = self._timers.pop(token)
        self._received(lease)

    @staticmethod
    def _invalid(doc: Mapping[str, Any], may_build_mime: bool = False) -> str | None:
        recipient = doc.get("recipient")
        if not isinstance(recipient, str) or "@" not in recipient or not recipient.rsplit("@", 1)[1]:
            return "recipient missing or not an address"
        # Without mime a plugin may still build it in mq_smtp_out_data (plugins/template_mime.py).
        if not isinstance(doc.get("mime"), str) and not may_build_mime:
            return "mime missing"
        if not isinstance(doc.get("envelope", ""), str):
            return "envelope is not a string"
        return None

    def _deadline(self, doc: Mapping[str, Any], now: float) -> float:
        results = doc.get("results") or []
        first = parse_time(results[0].get("time")) if results and isinstance(results[0], Mapping) else None
        first = now if first is None else first
        explicit = parse_time(doc.get("maxdelivertime"))
        if explicit is not None:
            # MailerQ gives a timestamp; a small number is read as seconds after the first attempt.
            return explicit if explicit > 1e9 else first + explicit
        return first + self.options.max_delivertime

    def _destination_key(self, doc: Mapping[str, Any]) -> DestinationKey:
        security = doc.get("security") or self.options.security
        if security not in SECURITY_LEVELS:
            security = self.options.security
        smarthost = doc.get("smarthost")
        if isinstance(smarthost, Mapping) and smarthost.get("hostname"):
            return DestinationKey(
                "smarthost", str(smarthost["hostname"]).lower(), int(smarthost.get("port") or 25), security,
                smarthost.get("username") or None, smarthost.get("password") or None,
            )
        if isinstance(smarthost, str) and smarthost:
            host, port = parse_hostport(smarthost, 25)
            return DestinationKey("smarthost", host.lower(), port, security)
        if self.options.smarthost:
            host, port = parse_hostport(self.options.smarthost, 25)
            return DestinationKey("smarthost", host.lower(), port, security)
        domain = str(doc["recipient"]).rsplit("@", 1)[1].rstrip(".").lower()
        return DestinationKey("mx", domain, self.options.port, security)

    def out_message(self, job: Job) -> OutMessage:
        doc = job.document
        mime = mime_bytes(doc["mime"]) if isinstance(doc.get("mime"), str) else b""
        if isinstance(doc.get("headers"), Mapping):
            mime = edit_headers(mime, doc["headers"])
        dsn = doc.get("dsn") if isinstance(doc.get("dsn"), Mapping) else None
        return OutMessage(str(doc.get("envelope") or ""), str(doc["recipient"]), mime, dsn=dsn, document=doc, key=job)

    # -- outcomes ------------------------------------------------------------------------------

    def attempted(self, job: Job, attempt: Attempt) -> None:
        """Record ``attempt`` on the job's document and settle its lease accordingly."""
        delivery_attempt(job.document, attempt)
        now = self.now()
        doc = job.document
        deadline = self._deadline(doc, now)
        doc = dict(doc)
        results = list(doc.get("results") or [])
        results.append(attempt.record())
        doc["results"] = results
        if attempt.accepted or attempt.is_permanent:
            self._settle_final(job, doc, attempt)
            return
        schedule = parse_intervals(doc.get("retries")) or self.options.retry_interval
        interval = retry_interval(len(results), schedule)
        max_attempts = _int(doc.get("maxattempts"), self.options.max_attempts)
        if (max_attempts and len(results) >= max_attempts) or now + interval >= deadline:
            expired = Attempt("process", "timeout", description="message expired (maxdelivertime or maxattempts)", time=now)
            results.append(expired.record())
            self._settle_final(job, doc, attempt)
            return
        doc["nextattempt"] = now + interval
        pubs = [Publication(self._queue_name("outbox"), doc)]
        retry = target_queue(doc, "retry", self.options.queues)
        if retry:
            pubs.append(Publication(retry, result_document(doc)))
        self._settle(job, pubs)

    def _final(self, job: Job, attempt: Attempt) -> None:
        delivery_attempt(job.document, attempt)
        doc = dict(job.document)
        doc["results"] = [*(doc.get("results") or []), attempt.record()]
        self._settle_final(job, doc, attempt)

    def _settle_final(self, job: Job, doc: dict[str, Any], attempt: Attempt) -> None:
        doc.pop("nextattempt", None)
        outcome = "success" if attempt.accepted else "failure"
        copy = result_document(doc)
        pubs = [Publication(q, copy) for q in (target_queue(doc, "results", self.options.queues), target_queue(doc, outcome, self.options.queues)) if q]
        if outcome == "failure" and wants_failure_dsn(doc) and isinstance(doc.get("mime"), str):
            q = target_queue(doc, "dsn", self.options.queues)
            if q:
                pubs.append(Publication(q, build_dsn(doc, attempt, reporting_mta=self.helo, now=self.now())))
        self._settle(job, pubs)

    def _settle(self, job: Job, pubs: list[Publication]) -> None:
        d = defer.maybeDeferred(self.queue.settle, job.lease, pubs)
        self._settling.add(d)

        def failed(f: Any) -> None:
            # Not durable: give the lease back so the message is tried again (never lost).
            log.failure("settling {id} failed; released", f, id=job.lease.id)
            self.queue.release(job.lease)

        d.addErrback(failed)
        d.addBoth(lambda r: self._settling.discard(d))


def make_delivery_service(options: Mapping[str, Any], queue: Queue, hooks: HookRunner | None) -> DeliveryService:
    """The service behind ``--delivery on`` (called by :mod:`mqtwisted.service`)."""
    return DeliveryService(queue, hooks, DeliveryOptions.from_options(options))


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default
