"""DANE for SMTP (RFC 7672): which TLSA records are usable, and whether a certificate chain
matches them.  Pure: the records come from :mod:`.dnsquery`, the chain from the handshake.

* DANE-EE (usage 3): the server's own certificate (selector 0) or public key (selector 1) matches;
  no name, chain or expiry check (RFC 7672 §3.1.1).
* DANE-TA (usage 2): a certificate of the chain the server sent is the trust anchor (matched the
  same way), and the leaf chains to it and is valid for the MX host name (or the recipient domain,
  RFC 7672 §3.2.2), checked by :func:`.certs.chain_problem`.
* PKIX-TA and PKIX-EE (usages 0 and 1), unknown selectors and matching types are unusable
  (RFC 7672 §3.1.3); TLS is still mandatory when every record is unusable.

Hashes: SHA-256 (matching type 1) and SHA-512 (2) from ``cryptography``; 0 is the full data.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mqtwisted.tlspolicy.certs import chain_problem, matching_name, mismatch

DANE_TA = 2
DANE_EE = 3
_HASHES = {1: hashes.SHA256, 2: hashes.SHA512}


@attrs.frozen
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def association(certificate: x509.Certificate, selector: int, mtype: int) -> bytes:
    """What a TLSA record with ``selector`` and ``mtype`` holds for ``certificate``."""
    if selector == 0:
        data = certificate.public_bytes(Encoding.DER)
    else:
        data = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mtype == 0:
        return data
    digest = hashes.Hash(_HASHES[mtype]())
    digest.update(data)
    return digest.finalize()


def matches(record: TLSARecord, certificate: x509.Certificate) -> bool:
    return record.usable and association(certificate, record.selector, record.mtype) == record.data


def problem(
    records: Sequence[TLSARecord], chain: Sequence[x509.Certificate], names: Sequence[str],
    now: datetime.datetime | None = None,
) -> str | None:
    """Why ``chain`` (leaf first) does not satisfy ``records``; None when one record matches (or no
    record is usable: then TLS is all DANE asks).  ``names``: the MX host, then the domain."""
    usable = [r for r in records if r.usable]
    if not usable:
        return None
    if not chain:
        return "the server sent no certificate"
    leaf = chain[0]
    if any(r.usage == DANE_EE and matches(r, leaf) for r in usable):
        return None
    why = []
    for record in (r for r in usable if r.usage == DANE_TA):
        anchor = next((c for c in chain if matches(record, c)), None)
        if anchor is None:
            continue
        name = matching_name(leaf, names)
        if name is None:
            why.append(mismatch(leaf, names))
            continue
        trouble = chain_problem(chain, [anchor], name, now)
        if trouble is None:
            return None
        why.append(trouble)
    detail = f" ({'; '.join(why)})" if why else ""
    return f"no TLSA record matches the certificate chain{detail}; records: {', '.join(str(r) for r in usable)}"


def records(fields: Sequence[tuple[int, int, int, bytes]]) -> list[TLSARecord]:
    return [TLSARecord(*f) for f in fields]
