"""A test certificate authority made with ``cryptography``: a root CA, an intermediate, and server
certificates for given names, as PEM and as Twisted server TLS options.  Keys are EC P-256
(fast to make); each call makes fresh keys."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@attrs.define
class Issued:
    certificate: x509.Certificate
    key: Any
    #: the chain sent after it (intermediates), leaf not included
    chain: list[x509.Certificate] = attrs.field(factory=list)

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [self.certificate, *self.chain])

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def server_options(self) -> Any:
        """Twisted ``CertificateOptions`` serving this certificate and its chain."""
        from OpenSSL import crypto
        from twisted.internet import ssl

        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.certificate),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain],
        )


def _build(subject: str, issuer: Issued | None, *, ca: bool, names: tuple[str, ...] = (),
           not_after: datetime.datetime | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.certificate.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(not_after or now + 30 * _DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, hashes.SHA256())
    # A server sends its intermediates, never the self-signed root.
    chain = [c for c in ([issuer.certificate, *issuer.chain] if issuer else []) if c.subject != c.issuer]
    return Issued(cert, key, chain)


class CA:
    """``root`` signs ``intermediate``, which signs the server certificates ``issue`` makes."""

    def __init__(self, name: str = "mqmta test root") -> None:
        self.root = _build(name, None, ca=True)
        self.intermediate = _build(name + " intermediate", self.root, ca=True)

    def issue(self, *names: str, **kw: Any) -> Issued:
        return _build(names[0], self.intermediate, ca=False, names=names, **kw)

    def bundle(self, path: Any) -> str:
        """Write the root as a PEM bundle at ``path``; its name."""
        with open(path, "wb") as f:
            f.write(self.root.certificate.public_bytes(serialization.Encoding.PEM))
        return str(path)


def self_signed(*names: str) -> Issued:
    """A server certificate that signs itself (no CA trusts it)."""
    return _build(names[0], None, ca=False, names=names)
