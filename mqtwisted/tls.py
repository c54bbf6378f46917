"""Server certificates: the operator's, or a self-signed one made on first start so STARTTLS works
at once on the embedded default."""

from __future__ import annotations

import datetime
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from mqtwisted.options import ConfigError


def server_tls(options: Any) -> ServerTLS:
    """The server's certificate: ``--smtp-certificate``/``--smtp-key``, or one made once (and
    kept) in the data directory for ``--hostname``."""
    cert, key = options["smtp-certificate"], options["smtp-key"]
    if not cert:
        cert = os.path.join(options["data-dir"], "smtp-cert.pem")
        key = os.path.join(options["data-dir"], "smtp-key.pem")
        if not (os.path.exists(cert) and os.path.exists(key)):
            make_self_signed(cert, key, options["hostname"])
    tls = ServerTLS(cert, key)
    try:
        tls.context()  # at start-up, not at the first STARTTLS
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return tls


def make_self_signed(cert_path: str, key_path: str, hostname: str) -> None:
    """Write a self-signed certificate for ``hostname`` (key file mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """Certificate and key paths; the OpenSSL context is made on first use and never pickled."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._options: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cert_path": self.cert_path, "key_path": self.key_path, "_options": None}

    def reload(self, cert_path: str = "", key_path: str = "") -> None:
        """Read the files again (SIGHUP); new ones when ``cert_path`` is given.  ValueError, and
        the files in use are kept, when they cannot be used: STARTTLS goes on working."""
        fresh = ServerTLS(cert_path or self.cert_path, key_path or self.key_path)
        self._options = fresh.context()
        self.cert_path, self.key_path = fresh.cert_path, fresh.key_path

    def getContext(self) -> Any:
        """The old-style context factory interface (used by startTLS and listenSSL)."""
        return self.context().getContext()

    def context(self) -> Any:
        """The OpenSSL options; ValueError naming the files when they cannot be used."""
        if self._options is None:
            try:
                self._options = self._load()
            except (OSError, ValueError, crypto.Error) as e:
                # OpenSSL's and cryptography's errors name neither the file nor the option.
                raise ValueError(f"--smtp-certificate {self.cert_path} / --smtp-key {self.key_path}: "
                                 f"{e}") from e
        return self._options

    def _load(self) -> Any:
        with open(self.cert_path, "rb") as c, open(self.key_path, "rb") as k:
            certificates = c.read()
            pem = certificates + b"\n" + k.read()
        cert = ssl.PrivateCertificate.loadPEM(pem)
        # The certificates after the first (a fullchain.pem's intermediates) go with it: a
        # client that verifies (REQUIRETLS, MTA-STS) has only the root.
        chain = x509.load_pem_x509_certificates(certificates)[1:]
        return ssl.CertificateOptions(
            # pyOpenSSL deprecates its own PKey objects: hand it the cryptography key
            privateKey=cert.privateKey.original.to_cryptography_key(),
            certificate=cert.original.to_cryptography(),
            extraCertChain=chain,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
