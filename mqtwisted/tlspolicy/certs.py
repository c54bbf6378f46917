"""Whether a receiver's certificate chain is trusted for a host name (PKIX, RFC 5280 and RFC 6125),
checked on the chain the TLS handshake brought: ``service_identity`` for the name, the
``cryptography`` package's X.509 verifier for the chain up to a trusted CA.

The CAs are the ``--tls-ca`` PEM bundle, else the system's (the bundle OpenSSL would load by
default).  Checked after the handshake rather than inside it so that a refusal says why (which
names the certificate has, which CA is missing) and so that one step serves ``verified``, MTA-STS
and DANE-TA alike.
"""

from __future__ import annotations

import datetime
import os
import ssl
import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from service_identity import VerificationError as NameMismatch
from service_identity.cryptography import verify_certificate_hostname


class TrustError(Exception):
    """The CA bundle cannot be read; the message names the file."""


def load_bundle(path: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle."""
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            # Some system CAs have a non-positive serial; cryptography warns and loads them.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certificates = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise TrustError(f"{path}: cannot read the CA bundle: {e.strerror}") from None
    except ValueError as e:
        raise TrustError(f"{path}: not a PEM certificate bundle: {e}") from None
    return certificates


def system_bundle() -> list[x509.Certificate]:
    """The system's CAs: the file (else the directory) OpenSSL loads by default."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path and os.path.isfile(path):
            return load_bundle(path)
    found: list[x509.Certificate] = []
    directory = paths.capath or paths.openssl_capath
    if directory and os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith((".pem", ".crt")) or name[-2:-1] == ".":
                try:
                    found += load_bundle(os.path.join(directory, name))
                except TrustError:
                    continue
    return found


def names_of(certificate: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for (its subjectAltName, else its common name)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


def matching_name(leaf: x509.Certificate, names: Sequence[str]) -> str | None:
    """The first of ``names`` that ``leaf`` is valid for (wildcards as RFC 6125 allows), or None."""
    for name in names:
        try:
            verify_certificate_hostname(leaf, name)
            return name
        except NameMismatch:
            continue
    return None


def mismatch(leaf: x509.Certificate, names: Sequence[str]) -> str:
    return f"certificate is for {', '.join(names_of(leaf)) or 'no name'}, not {' or '.join(names)}"


def chain_problem(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], name: str,
    now: datetime.datetime | None = None,
) -> str | None:
    """None when ``chain`` (leaf first, as the server sent it) leads from its leaf, valid for
    ``name`` and for ``now``, to one of ``anchors``."""
    if not anchors:
        return "no trusted CA to verify the certificate with"
    leaf = chain[0]
    if leaf.issuer == leaf.subject and not any(a == leaf for a in anchors):
        return "certificate chain not trusted: the certificate is self-signed"
    builder = verification.PolicyBuilder().store(verification.Store(list(anchors)))
    if now is not None:
        builder = builder.time(now)
    try:
        verifier = builder.build_server_verifier(verification.DNSName(name))
        verifier.verify(chain[0], list(chain[1:]))
    except (verification.VerificationError, ValueError) as e:
        return f"certificate chain not trusted: {e}"
    return None


class Trust:
    """The CAs that verify receivers and MTA-STS policy hosts: ``path`` (``--tls-ca``) or the
    system's, read once when first needed (a bad bundle: :class:`TrustError`)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._anchors: list[x509.Certificate] | None = None

    @property
    def anchors(self) -> list[x509.Certificate]:
        if self._anchors is None:
            self._anchors = load_bundle(self.path) if self.path else system_bundle()
        return self._anchors

    def problem(self, chain: Sequence[x509.Certificate], names: Sequence[str],
                now: datetime.datetime | None = None) -> str | None:
        """Why ``chain`` is not a trusted certificate for one of ``names``; None when it is."""
        if not chain:
            return "the server sent no certificate"
        name = matching_name(chain[0], names)
        if name is None:
            return mismatch(chain[0], names)
        return chain_problem(chain, self.anchors, name, now)

    def pem(self) -> bytes | None:
        """The bundle as PEM for TLS clients that verify during the handshake (the MTA-STS policy
        fetch); None means the platform's trust."""
        if not self.path:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        return b"".join(c.public_bytes(Encoding.PEM) for c in self.anchors)
