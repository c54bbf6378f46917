"""MTA-STS policies as delivery sees them (RFC 8461 §3 and §5): the ``_mta-sts`` TXT record through
:mod:`.dnsquery`, the policy fetched over HTTPS with twisted.web's ``Agent`` (the host
``mta-sts.DOMAIN`` looked up through the same resolver as MX hosts, its certificate verified
against ``--tls-ca`` or the system's CAs, no redirects, a size limit and a timeout), and a cache
of fetched policies in the data directory that outlives restarts.

A policy is used until its ``max_age`` runs out; the TXT record is looked at again after its TTL
(at least a minute), and a new ``id`` there fetches the policy again.  When the fetch fails, or the
TXT record is gone or cannot be looked up, an unexpired cached policy still applies; without one
the domain is treated as having no policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, endpoints, protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import dns
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mqtwisted.tlspolicy.certs import Trust
from mqtwisted.tlspolicy.dnsquery import LookupFailed, SecureLookup, txt_strings
from mqtwisted.tlspolicy.mtasts import PolicyError, STSPolicy, parse_policy, parse_txt

log = Logger()

#: RFC 8461 §3.3: policy bodies larger than this are not read
MAX_POLICY_SIZE = 64 * 1024
FETCH_TIMEOUT = 60.0
#: bounds on how long a TXT lookup's answer is believed, seconds
RECHECK_MIN, RECHECK_MAX = 60.0, 3600.0


class FetchFailed(Exception):
    """The policy could not be fetched (or was not a valid policy); the message says why."""


@attrs.frozen
class Cached:
    policy_id: str
    policy: STSPolicy
    expires: float


class PolicyCache:
    """Fetched policies by domain, in memory and as one JSON file per domain under ``directory``
    (None: memory only).  Files are replaced atomically: delivery processes share the directory."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.memory: dict[str, Cached] = {}

    def path(self, domain: str) -> str:
        assert self.directory is not None
        name = domain if re.fullmatch(r"[a-z0-9.-]+", domain) and not domain.startswith(".") else (
            hashlib.sha256(domain.encode()).hexdigest())
        return os.path.join(self.directory, name + ".json")

    def get(self, domain: str) -> Cached | None:
        found = self.memory.get(domain)
        if found is None and self.directory is not None:
            try:
                with open(self.path(domain), encoding="utf-8") as f:
                    raw = json.load(f)
                found = Cached(raw["id"], parse_policy(raw["policy"]), float(raw["expires"]))
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError, PolicyError) as e:
                log.warn("MTA-STS cache for {domain} unreadable, ignored: {error}", domain=domain, error=str(e))
                return None
            self.memory[domain] = found
        return found

    def put(self, domain: str, cached: Cached) -> None:
        self.memory[domain] = cached
        if self.directory is None:
            return
        try:
            os.makedirs(self.directory, exist_ok=True)
            path = self.path(domain)
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump({"id": cached.policy_id, "policy": cached.policy.to_text(), "expires": cached.expires}, f)
            os.replace(temporary, path)
        except OSError as e:
            log.warn("MTA-STS cache for {domain} not written: {error}", domain=domain, error=str(e))


class _Body(protocol.Protocol):
    """Collects a response body up to ``limit`` bytes; more fails the fetch."""

    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self.limit = limit
        self.done = done
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.data += data
        if len(self.data) > self.limit:
            self.done.errback(FetchFailed(f"policy larger than {self.limit} bytes"))
            self.transport.stopProducing()

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(FetchFailed(f"policy body: {reason.getErrorMessage()}"))


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """HTTPS endpoints whose host is looked up through delivery's resolver."""

    def __init__(self, fetcher: PolicyFetcher) -> None:
        self.fetcher = fetcher

    def endpointForURI(self, uri: Any) -> Any:
        return _ResolvingTLSEndpoint(self.fetcher, uri.host.decode("ascii"), uri.port)


class _ResolvingTLSEndpoint:
    def __init__(self, fetcher: PolicyFetcher, host: str, port: int) -> None:
        self.fetcher, self.host, self.port = fetcher, host, port

    def connect(self, factory: Any) -> Deferred[Any]:
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        from twisted.internet import ssl

        fetcher = self.fetcher
        targets = await fetcher.resolve_host(self.host, self.port)
        creator = ssl.optionsForClientTLS(self.host, trustRoot=fetcher.trust_root())
        failure: Exception | None = None
        for address in [a for t in targets for a in t.addresses]:
            kind = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
            tcp = kind(fetcher.reactor, address, self.port, timeout=fetcher.connect_timeout)
            try:
                return await endpoints.wrapClientTLS(creator, tcp).connect(factory)
            except Exception as e:
                failure = e
        raise FetchFailed(f"cannot connect to {self.host}:{self.port}: {failure or 'no address'}")


class PolicyFetcher:
    """``fetch(domain)``: the policy at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``.
    ``resolve_host(host, port)`` gives the host's addresses (:meth:`mqtwisted.dns.MXResolver.resolve_host`);
    ``port`` is 443 but for test networks."""

    def __init__(self, reactor: Any, resolve_host: Callable[[str, int], Deferred[Any]], trust: Trust, *,
                 port: int = 443, timeout: float = FETCH_TIMEOUT, connect_timeout: float = 30) -> None:
        self.reactor = reactor
        self.resolve_host = resolve_host
        self.trust = trust
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._root: Any = None
        self.agent = Agent.usingEndpointFactory(reactor, _Endpoints(self), HTTPConnectionPool(reactor, persistent=False))

    def trust_root(self) -> Any:
        from twisted.internet import ssl

        if self._root is None:
            pem = self.trust.pem()
            if pem is None:
                self._root = ssl.platformTrust()
            else:
                blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
                self._root = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
        return self._root

    def url(self, domain: str) -> str:
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt"

    def fetch(self, domain: str) -> Deferred[STSPolicy]:
        d = defer.ensureDeferred(self._fetch(domain))
        d.addTimeout(self.timeout, self.reactor)
        d.addErrback(self._failed, domain)
        return d

    async def _fetch(self, domain: str) -> STSPolicy:
        url = self.url(domain)
        response = await self.agent.request(b"GET", url.encode("ascii"))
        if response.code != 200:
            response.deliverBody(protocol.Protocol())
            raise FetchFailed(f"{url}: HTTP {response.code}")
        kinds = response.headers.getRawHeaders(b"content-type") or [b""]
        if kinds[0].split(b";")[0].strip().lower() != b"text/plain":
            response.deliverBody(protocol.Protocol())
            raise FetchFailed(f"{url}: content type {kinds[0].decode('latin-1')!r}, not text/plain")
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_Body(MAX_POLICY_SIZE, done))
        body = await done
        try:
            return parse_policy(body.decode("utf-8"))
        except (PolicyError, UnicodeDecodeError) as e:
            raise FetchFailed(f"{url}: {e}") from None

    def _failed(self, failure: Any, domain: str) -> Any:
        if failure.check(FetchFailed):
            return failure
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise FetchFailed(f"{self.url(domain)}: no policy within {self.timeout:g} s")
        raise FetchFailed(f"{self.url(domain)}: {failure.getErrorMessage() or failure.type.__name__}")


class STSPolicies:
    """``policy(domain)``: the MTA-STS policy delivery to ``domain`` follows now, or None."""

    def __init__(self, lookup: SecureLookup, fetcher: PolicyFetcher, cache: PolicyCache,
                 clock: Callable[[], float]) -> None:
        self.lookup = lookup
        self.fetcher = fetcher
        self.cache = cache
        self.clock = clock
        #: domain -> (until when the answer holds, the policy or None)
        self.recent: dict[str, tuple[float, STSPolicy | None]] = {}
        self.pending: dict[str, list[Deferred[STSPolicy | None]]] = {}

    def policy(self, domain: str) -> Deferred[STSPolicy | None]:
        domain = domain.lower().rstrip(".")
        known = self.recent.get(domain)
        if known is not None and self.clock() < known[0]:
            return defer.succeed(known[1])
        waiter: Deferred[STSPolicy | None] = Deferred()
        if domain in self.pending:
            self.pending[domain].append(waiter)
            return waiter
        self.pending[domain] = [waiter]
        d = defer.ensureDeferred(self._decide(domain))
        d.addErrback(lambda f: (log.failure("MTA-STS for {domain}", f, domain=domain), None)[1])
        d.addCallback(self._decided, domain)
        return waiter

    def _decided(self, policy: STSPolicy | None, domain: str) -> None:
        for waiter in self.pending.pop(domain, []):
            waiter.callback(policy)

    async def _decide(self, domain: str) -> STSPolicy | None:
        now = self.clock()
        cached = self.cache.get(domain)
        if cached is not None and cached.expires <= now:
            cached = None
        recheck = RECHECK_MIN
        try:
            answer = await self.lookup.lookup(f"_mta-sts.{domain}", dns.TXT)
            recheck = min(max(float(answer.ttl), RECHECK_MIN), RECHECK_MAX)
            policy_id = parse_txt(txt_strings(answer))
        except (LookupFailed, PolicyError) as e:
            log.warn("MTA-STS TXT record of {domain}: {error}", domain=domain, error=str(e))
            policy_id = None
        if policy_id is None or (cached is not None and cached.policy_id == policy_id):
            found = cached.policy if cached is not None else None
        else:
            try:
                policy = await self.fetcher.fetch(domain)
            except FetchFailed as e:
                log.warn("MTA-STS policy of {domain} not fetched ({error}); {what}", domain=domain, error=str(e),
                         what="the cached one applies" if cached else "none applies")
                found = cached.policy if cached is not None else None
            else:
                self.cache.put(domain, Cached(policy_id, policy, now + policy.max_age))
                found = policy
        self.recent[domain] = (now + recheck, found)
        return found
