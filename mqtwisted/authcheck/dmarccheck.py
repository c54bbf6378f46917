"""DMARC (RFC 7489) of an arriving message: the policy of its ``From:`` domain, looked up through
:class:`~mqtwisted.authcheck.lookups.Lookups` (``_dmarc.<From domain>``, else
``_dmarc.<organizational domain>``, §6.6.3), parsed and evaluated against the SPF and DKIM
results by the ``dmarc`` package; organizational domains come from the Public Suffix List of the
``publicsuffixlist`` package (its bundled copy; nothing is fetched at run time).
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Sequence
from typing import Any

import attrs
import dkim
import dmarc
from publicsuffixlist import PublicSuffixList

from mqtwisted.authcheck.dkimcheck import DkimResult
from mqtwisted.authcheck.lookups import Lookups, TemporaryDNSError
from mqtwisted.authcheck.spfcheck import SpfResult
from mqtwisted.message import header_block


@attrs.frozen
class DmarcResult:
    """``result``: none (no policy, or no From domain to check), pass, fail, temperror or
    permerror; ``from_domain``: the ``From:`` domain; ``record_domain``: where the policy was
    found (that domain or its organizational domain); ``policy``: the ``p=`` (or ``sp=`` for a
    subdomain) that applies; ``disposition``: what the policy asks for this message (``none`` when
    it passed); ``aligned``: which of ``spf`` and ``dkim`` passed aligned."""

    result: str
    from_domain: str = ""
    record_domain: str = ""
    policy: str = ""
    disposition: str = ""
    aligned: tuple[str, ...] = ()
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "from": self.from_domain, "record": self.record_domain,
                "policy": self.policy, "disposition": self.disposition, "aligned": list(self.aligned),
                "reason": self.reason}


class _OrganizationalDomains:
    """The ``publicsuffix`` object ``dmarc`` asks for organizational domains."""

    def get_public_suffix(self, domain: str) -> str:
        return organizational_domain(domain)


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package, read once


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix and one label more (``a.b.example.co.uk`` ->
    ``example.co.uk``); a name that is itself a public suffix is its own."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def from_domains(message: bytes) -> list[str]:
    """The domains of the addresses in the ``From:`` header field(s), in order, unique."""
    headers, _ = dkim.rfc822_parse(header_block(message) + b"\r\n")
    domains: list[str] = []
    for name, value in headers:
        if name.lower() != b"from":
            continue
        text = re.sub(r"\r?\n", "", value.decode("utf-8", "replace"))
        for _, address in email.utils.getaddresses([text]):
            domain = address.rpartition("@")[2].strip().rstrip(">").lower().rstrip(".") if "@" in address else ""
            if domain and domain not in domains:
                domains.append(domain)
    return domains


def check_dmarc(message: bytes, spf_result: SpfResult, dkim_results: Sequence[DkimResult],
                lookups: Lookups) -> DmarcResult:
    """The DMARC result of ``message`` (in a worker thread)."""
    domains = from_domains(message)
    if not domains:
        return DmarcResult("permerror", reason="no From: domain")
    if len(domains) > 1:
        return DmarcResult("permerror", ",".join(domains), reason="From: names more than one domain")
    domain = domains[0]
    try:
        found = _policy_record(domain, lookups)
    except TemporaryDNSError as e:
        return DmarcResult("temperror", domain, reason=str(e))
    if found is None:
        return DmarcResult("none", domain, reason="no DMARC record")
    record_domain, record = found
    org = record_domain if record_domain != domain else None
    try:
        policy = dmarc.DMARCPolicy(record, domain, org, publicsuffix=_OrganizationalDomains(), strict=False)
    except dmarc.Error as e:
        return DmarcResult("permerror", domain, record_domain, reason=f"_dmarc.{record_domain}: {e}")
    identifiers = [dmarc.DKIM(r.domain, dmarc.DKIMResult(r.result)) for r in dkim_results if r.domain]
    if spf_result.domain:
        identifiers.append(dmarc.SPF(spf_result.domain, dmarc.SPFResult(spf_result.result)))
    try:
        policy.verify(auth_results=identifiers)
    except dmarc.PolicyError:
        pass  # a failing message: the result below says so
    outcome = policy.result
    aligned = tuple(name for name, value in (("dkim", outcome.dkim), ("spf", outcome.spf))
                    if value is dmarc.DMARCResult.PASS)
    applied = policy.policy.sp if org and policy.policy.sp is not dmarc.DMARCDisposition.UNSPECIFIED \
        else policy.policy.p
    result = "pass" if outcome.result is dmarc.DMARCResult.PASS else "fail"
    reason = ""
    if result == "fail":
        unsure = [r for r in (spf_result, *dkim_results) if r.result == "temperror"]
        result = "temperror" if unsure else "fail"
        reason = "an SPF or DKIM check failed for now" if unsure else "no aligned SPF or DKIM pass"
    return DmarcResult(result, domain, record_domain, applied.value or "", outcome.disposition.value or "",
                       aligned, reason)


def _policy_record(domain: str, lookups: Lookups) -> tuple[str, str] | None:
    """(where, record) of the policy that applies to ``domain``, or None."""
    for where in dict.fromkeys((domain, organizational_domain(domain))):
        records = [r.decode("utf-8", "replace") for r in lookups.txt(f"_dmarc.{where}")]
        policies = [r for r in records if re.match(r"v\s*=\s*DMARC1\s*(;|$)", r)]
        if len(policies) == 1:
            return where, policies[0]
        if len(policies) > 1:
            return None  # §6.6.3: several records are as none, and the search ends
    return None
