"""What inbound verification found, in the two forms it is recorded in: the ``auth`` property of
the JSON document and the ``Authentication-Results:`` header field (RFC 8601) this MTA adds; and
its removal from where others wrote it is :mod:`.header`.

The ``auth`` property (README: "Inbound authentication results")::

    {"authserv-id": "mx.example.net",
     "header": "mx.example.net; spf=pass smtp.mailfrom=a@example.org; dkim=pass header.d=...",
     "spf": {"result": "pass", "scope": "mailfrom", "identity": "a@example.org",
             "domain": "example.org", "ip": "192.0.2.1", "reason": "..."},
     "dkim": [{"result": "pass", "domain": "example.org", "selector": "s1",
               "algorithm": "rsa-sha256", "signature": "AbCdEfGh", "reason": ""}],
     "dmarc": {"result": "pass", "from": "example.org", "record": "example.org", "policy": "reject",
               "disposition": "none", "aligned": ["dkim", "spf"], "reason": ""},
     "arc": {"result": "none", "instances": 0, "reason": ""}}

``header`` is the header field's value unfolded: delivery hands it to ARC sealing as this hop's
results (``ARC-Authentication-Results``).
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import authres
import authres.arc
import authres.dmarc

from mqtwisted.authcheck.dkimcheck import ArcResult, DkimResult
from mqtwisted.authcheck.dmarccheck import DmarcResult
from mqtwisted.authcheck.header import HEADER
from mqtwisted.authcheck.spfcheck import SpfResult


@attrs.frozen
class AuthResults:
    """One message's results, as ``authserv_id`` (this MTA's host name) found them."""

    authserv_id: str
    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult
    arc: ArcResult

    def header_value(self) -> str:
        """The ``Authentication-Results`` value, unfolded (authres writes the syntax)."""
        return "; ".join([self.authserv_id, *self._results()])

    def header_field(self, linesep: bytes = b"\r\n") -> bytes:
        """The whole header field, one result per line (each well under 998 octets)."""
        body = (b";" + linesep + b"\t").join(r.encode("utf-8") for r in self._results())
        return HEADER + b": " + self.authserv_id.encode("utf-8") + b";" + linesep + b"\t" + body + linesep

    def _results(self) -> list[str]:
        spf = self.spf
        identity = {"smtp_mailfrom": spf.identity} if spf.scope == "mailfrom" else {"smtp_helo": spf.identity}
        results: list[Any] = [authres.SPFAuthenticationResult(result=spf.result, **_present(identity))]
        if not self.dkim:
            results.append(authres.DKIMAuthenticationResult(result="none"))
        for sig in self.dkim:
            properties = [authres.AuthenticationResultProperty("header", "b", sig.signature)] if sig.signature else []
            results.append(authres.DKIMAuthenticationResult(
                result=sig.result, reason=_reason(sig.reason), properties=properties,
                **_present({"header_d": sig.domain, "header_s": sig.selector, "header_a": sig.algorithm})))
        dmarc = self.dmarc
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, **_present({"header_from": dmarc.from_domain, "policy": dmarc.policy})))
        results.append(authres.arc.ARCAuthenticationResult(result=self.arc.result))
        return [str(r) for r in results]

    def to_json(self) -> dict[str, Any]:
        """The ``auth`` property (a new dict each call: one per recipient's document)."""
        return {"authserv-id": self.authserv_id, "header": self.header_value(), "spf": self.spf.to_json(),
                "dkim": [d.to_json() for d in self.dkim], "dmarc": self.dmarc.to_json(), "arc": self.arc.to_json()}


def _present(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


def _reason(text: str) -> str | None:
    # A reason is a quoted string in the header; keep it short and printable.
    text = re.sub(r"[^\x20-\x7e]+", " ", text).replace('"', "'").strip()
    return text[:120] or None
