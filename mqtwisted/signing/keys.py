"""What one signature needs: the :class:`SigningRequest` type, and private keys read into the form
dkimpy signs with.

Keys are read with pyca/cryptography, which accepts every usual PEM form (PKCS#1 ``BEGIN RSA
PRIVATE KEY``, PKCS#8 ``BEGIN PRIVATE KEY``), and handed to dkimpy in the one form each of its
signers reads: PKCS#1 PEM for RSA, the base64 32-byte seed for Ed25519 (dkimpy's own ``dknewkey``
key files hold that seed, so they are accepted too).
"""

from __future__ import annotations

import base64
import binascii
import re

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
ALGORITHMS = (RSA, ED25519)
CANONICALIZATIONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed")
DEFAULT_CANONICALIZATION = "relaxed/relaxed"

#: Shorter RSA keys are refused: verifiers (dkimpy's default, Gmail) reject them (RFC 8301 §3.2).
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048

#: Header fields RFC 6376 §5.4 says not to sign: they change in transit.  dkimpy refuses them.
UNSIGNABLE_HEADERS = frozenset(
    {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"}
)

_DOMAIN = re.compile(r"^(?=.{1,253}$)([^.\s@;=]{1,63}\.)*[^.\s@;=]{1,63}$")
_SELECTOR = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


class SigningError(Exception):
    """A message could not be signed or sealed; the text says which signature and why.

    Delivery reports it as a temporary failure and sends nothing (never an unsigned message).
    """


class KeyFormatError(ValueError):
    """A private key that cannot be used; the text says why (the caller adds where it came from)."""


@attrs.frozen
class SigningKey:
    """A private key checked for use: ``secret`` is in the form dkimpy's signer for
    ``algorithm`` reads; ``public_record`` is the DNS TXT value that publishes it; ``rsa`` is
    the RSA key loaded once into OpenSSL, which signs with it (see :mod:`.signer`)."""

    algorithm: str
    secret: bytes = attrs.field(repr=False)
    bits: int
    public_record: str
    rsa: rsa.RSAPrivateKey | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class SigningRequest:
    """One signature to add: DKIM (``dkim``) and/or an ARC set (``arc``) for ``domain`` with the
    key of ``selector``.

    ``headers``: the header fields to sign, in order; ``None`` means dkimpy's choice (those of
    RFC 6376 §5.4.1 present in the message, ``From`` signed twice so none can be added), to which
    ``extra_headers`` are added.
    ``expire``: seconds the signature stays valid (``x=``), or ``None`` for no ``x=``.
    ``origin`` names where the request came from, for error texts.
    """

    domain: str
    selector: str
    key: SigningKey
    headers: tuple[str, ...] | None = None
    extra_headers: tuple[str, ...] = ()
    canonicalization: str = DEFAULT_CANONICALIZATION
    expire: int | None = None
    dkim: bool = True
    arc: bool = False
    origin: str = attrs.field(default="", eq=False)

    @property
    def algorithm(self) -> str:
        return self.key.algorithm

    def describe(self) -> str:
        return f"{self.algorithm} d={self.domain} s={self.selector}" + (
            f" ({self.origin})" if self.origin else ""
        )


def check_domain(value: object) -> str:
    if not isinstance(value, str) or not _DOMAIN.match(value.strip().rstrip(".")):
        raise ValueError(f"domain: expected a domain name, got {value!r}")
    return value.strip().rstrip(".")


def check_selector(value: object) -> str:
    if not isinstance(value, str) or not _SELECTOR.match(value):
        raise ValueError(f"selector: expected letters, digits, '-', '_' and dots, got {value!r}")
    return value


def check_canonicalization(value: object) -> str:
    if value not in CANONICALIZATIONS:
        raise ValueError(f"canonicalization: expected one of {', '.join(CANONICALIZATIONS)}, got {value!r}")
    return str(value)


def check_headers(value: object, *, need_from: bool) -> tuple[str, ...]:
    """Header names, lower-cased; ``need_from``: RFC 6376 §5.4 requires ``From`` to be signed."""
    if not isinstance(value, list | tuple) or not all(isinstance(h, str) for h in value):
        raise ValueError(f"headers: expected a list of header names, got {value!r}")
    names = tuple(h.strip().lower() for h in value)
    for name in names:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"headers: {name!r} is not a header field name")
        if name in UNSIGNABLE_HEADERS:
            raise ValueError(f"headers: {name!r} must not be signed (it changes in transit, RFC 6376 §5.4)")
    if need_from and "from" not in names:
        raise ValueError("headers: 'from' must be among the signed headers (RFC 6376 §5.4)")
    return names


def read_private_key(data: bytes) -> SigningKey:
    """The key in ``data``, checked for DKIM use: PEM; base64 DER, as a key pasted without its PEM
    lines is; or dkimpy's base64 Ed25519 seed."""
    text = data.strip()
    try:
        if b"-----BEGIN" in text:
            key = serialization.load_pem_private_key(text, password=None)
        else:
            der = _base64(text)
            if len(der) == 32:
                return _ed25519(der)
            key = serialization.load_der_private_key(der, password=None)
    except TypeError as e:
        raise KeyFormatError("the key is encrypted; DKIM keys must be stored without a passphrase") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFormatError(f"not a readable private key (PEM, base64 DER or an Ed25519 seed): {e}") from e
    if isinstance(key, rsa.RSAPrivateKey):
        return _rsa(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        return _ed25519(seed)
    raise KeyFormatError(f"a {type(key).__name__.removeprefix('_')} key; DKIM signs with RSA or Ed25519")


def _base64(text: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error as e:
        raise KeyFormatError(f"not a readable private key (PEM, base64 DER or an Ed25519 seed): {e}") from e


def _rsa(key: rsa.RSAPrivateKey) -> SigningKey:
    if key.key_size < MIN_RSA_BITS:
        raise KeyFormatError(
            f"RSA key of {key.key_size} bits is too short: at least {MIN_RSA_BITS} "
            f"({RECOMMENDED_RSA_BITS} recommended), receivers reject shorter ones"
        )
    # dkimpy's RSA signer reads PKCS#1 ("BEGIN RSA PRIVATE KEY") only.
    pkcs1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
    return SigningKey(RSA, pkcs1, key.key_size, record, rsa=key)


def _ed25519(seed: bytes) -> SigningKey:
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # RFC 8463 §4.2: p= is the raw 32-byte public key, not a SubjectPublicKeyInfo.
    record = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    return SigningKey(ED25519, base64.b64encode(seed), 256, record)
