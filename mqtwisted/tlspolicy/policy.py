"""Which TLS policy applies to one MX host, and what it asks of the certificate: the one object
delivery asks before it connects (as it asks the shaper before it sends).

In order (RFC 8461 §2: DANE wins over MTA-STS for an MX host that has it):

1. ``dane`` — the TLSA records of ``_PORT._tcp.HOST`` came with the AD bit: TLS is mandatory and
   the chain must match them (:mod:`.dane`).  A TLSA lookup that fails (SERVFAIL, timeout) refuses
   the host for now: DANE cannot be ruled out.  Records without the AD bit are ignored.
2. ``mta-sts`` — the recipient domain's policy (:mod:`.stsfetch`) is ``enforce``: the MX host must
   match an ``mx`` pattern, TLS is mandatory and the certificate must be PKIX-valid for the host.
   ``mta-sts-testing``: the same checks, but a failure is only logged.
3. Otherwise the message's ``security`` level (``none`` … ``verified``) names the policy.

A message whose ``security`` is ``verified`` also gets the PKIX check under DANE or MTA-STS; a
domain's published policy makes TLS mandatory even for a lower level.  Smarthosts get only the
``security`` level.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from cryptography import x509
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mqtwisted.tlspolicy import dane
from mqtwisted.tlspolicy.certs import Trust
from mqtwisted.tlspolicy.dnsquery import TLSA, LookupFailed, SecureLookup, tlsa_fields
from mqtwisted.tlspolicy.stsfetch import STSPolicies

log = Logger()

#: security levels under which the connection must be encrypted
_MANDATORY = ("required", "verified")

Check = Callable[[Sequence[x509.Certificate]], "str | None"]


class HostRefused(Exception):
    """No delivery to this host for now (temporary): ``state`` and ``description`` go in results."""

    def __init__(self, state: str, description: str, status: str = "4.7.5", policy: str = "mta-sts") -> None:
        super().__init__(description)
        self.policy = policy
        self.state = state
        self.description = description
        self.status = status


@attrs.frozen
class HostTLS:
    """What TLS to one host must be: ``name`` (the policy, as results record it), whether it is
    ``mandatory``, the ``checks`` the certificate chain must pass (each says why not, or None),
    and ``report_only`` (MTA-STS testing: failures are logged, not refused)."""

    name: str
    mandatory: bool = False
    checks: tuple[Check, ...] = ()
    report_only: bool = False
    host: str = ""

    def problem(self, chain: Sequence[x509.Certificate]) -> str | None:
        """Why the chain fails this policy; None when it passes (or the policy only reports)."""
        for check in self.checks:
            why = check(chain)
            if why is not None:
                if self.report_only:
                    log.warn("MTA-STS testing: {host} would be refused: {why}", host=self.host, why=why)
                    return None
                return f"{self.name}: {why}"
        return None


def level(security: str, host: str, trust: Trust, clock: Callable[[], datetime.datetime]) -> HostTLS:
    """The policy a ``security`` level alone gives ``host``."""
    if security == "verified":
        return HostTLS("verified", True, (pkix(trust, [host], clock),), host=host)
    return HostTLS(security, security in _MANDATORY, host=host)


def pkix(trust: Trust, names: Sequence[str], clock: Callable[[], datetime.datetime]) -> Check:
    return lambda chain: trust.problem(chain, names, clock())


def dane_check(records: Sequence[dane.TLSARecord], names: Sequence[str],
               clock: Callable[[], datetime.datetime]) -> Check:
    return lambda chain: dane.problem(records, chain, names, clock())


class TLSPolicies:
    """``for_host(domain, host, port, security)``: the :class:`HostTLS` for one MX host, or a
    :class:`HostRefused` failure.  ``sts`` None: MTA-STS is not looked at."""

    def __init__(self, lookup: SecureLookup | None, trust: Trust, sts: STSPolicies | None,
                 clock: Callable[[], float], *, dane: bool = True) -> None:
        self.lookup = lookup
        self.dane = dane and lookup is not None
        self.trust = trust
        self.sts = sts
        self.clock = clock
        #: TLSA owner name -> (until when, the records or None when not authenticated)
        self.tlsa: dict[str, tuple[float, list[dane.TLSARecord] | None]] = {}

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)

    def for_destination(self, kind: str, domain: str, host: str, port: int, security: str,
                        published: bool = True) -> Deferred[HostTLS]:
        """The policy for ``host`` (``kind`` ``mx``: an MX host of ``domain``; ``smarthost``: only
        the ``security`` level applies; ``published`` False: the domain's DANE and MTA-STS do not,
        as for a message with ``TLS-Required: No``).  Fires at once when no lookup is needed."""
        if kind != "mx" or not published:
            return defer.succeed(level(security, host, self.trust, self.now))
        return defer.ensureDeferred(self._for_host(domain, host, port, security))

    def strict(self, tls: HostTLS) -> HostTLS:
        """What REQUIRETLS makes of a host's policy (RFC 8689 §4.2.1): TLS mandatory and the
        certificate verified, by the host's DANE or MTA-STS policy, else by PKIX (``--tls-ca``)
        for the host name; a policy that only reports (MTA-STS testing) does not count."""
        if tls.checks and not tls.report_only:
            return attrs.evolve(tls, mandatory=True)
        return level("verified", tls.host, self.trust, self.now)

    async def _for_host(self, domain: str, host: str, port: int, security: str) -> HostTLS:
        base = level(security, host, self.trust, self.now)
        extra = base.checks  # ``verified`` adds PKIX on top of DANE or MTA-STS
        records = await self.tlsa_records(host, port) if self.dane else None
        if records is not None:
            return HostTLS("dane", True, (dane_check(records, [host, domain], self.now), *extra), host=host)
        policy = await self.sts.policy(domain) if self.sts is not None else None
        if policy is None or policy.mode == "none":
            return base
        if policy.mode == "testing":
            if base.checks:
                return base  # ``verified`` refuses what testing would only report
            if not policy.allows(host):
                log.warn("MTA-STS testing: {host} matches no mx pattern of {domain} ({mx}); delivering",
                         host=host, domain=domain, mx=", ".join(policy.mx))
            return HostTLS("mta-sts-testing", base.mandatory, (pkix(self.trust, [host], self.now),),
                           report_only=True, host=host)
        if not policy.allows(host):
            raise HostRefused("starttls", f"mta-sts: MX host {host} matches no mx pattern of {domain}'s "
                                          f"policy ({', '.join(policy.mx)})")
        return HostTLS("mta-sts", True, (pkix(self.trust, [host], self.now),), host=host)

    async def tlsa_records(self, host: str, port: int) -> list[dane.TLSARecord] | None:
        """The authenticated TLSA records of ``host``'s port (possibly none usable), or None when
        DANE does not apply (no records, or not authenticated)."""
        name = f"_{port}._tcp.{host}"
        now = self.clock()
        known = self.tlsa.get(name)
        if known is not None and now < known[0]:
            return known[1]
        assert self.lookup is not None
        try:
            answer = await self.lookup.lookup(name, TLSA)
        except LookupFailed as e:
            raise HostRefused("dns", f"dane: TLSA lookup {name} failed ({e.reason}); not delivering to {host} "
                                     f"until it answers", status="4.4.3", policy="dane") from None
        records = dane.records(tlsa_fields(answer)) if answer.authentic and answer.records else None
        self.tlsa[name] = (now + min(max(answer.ttl, 60), 3600), records)
        return records


def resolver_servers(resolver: Any) -> Callable[[], list[tuple[str, int]]] | None:
    """The DNS servers of a :class:`mqtwisted.dns.MXResolver`: its ``--dns-server``, else those
    twisted.names read from resolv.conf for it; None for a resolver that is no MXResolver (a
    test's table of hosts: there is no DNS to ask)."""
    if not hasattr(resolver, "servers"):
        return None

    def servers() -> list[tuple[str, int]]:
        if resolver.servers:
            return list(resolver.servers)
        chain = resolver.resolver
        for r in getattr(chain, "resolvers", [chain]):
            if hasattr(r, "dynServers"):
                return list(r.servers) + list(r.dynServers)
        return []

    return servers
