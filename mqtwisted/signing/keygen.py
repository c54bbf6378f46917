"""New DKIM key pairs (``mqmta dkim keygen``): the private key as PEM and the DNS TXT record that
publishes its public half."""

from __future__ import annotations

import os

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mqtwisted.signing.keys import (
    ALGORITHMS,
    MIN_RSA_BITS,
    RECOMMENDED_RSA_BITS,
    RSA,
    read_private_key,
)


@attrs.frozen
class KeyPair:
    """``private_pem``: PKCS#8 PEM; ``record``: the TXT value (``v=DKIM1; k=...; p=...``)."""

    algorithm: str
    private_pem: bytes = attrs.field(repr=False)
    record: str


def generate_key_pair(algorithm: str = RSA, bits: int = RECOMMENDED_RSA_BITS) -> KeyPair:
    """A new key pair: RSA of ``bits`` bits, or Ed25519 (RFC 8463)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if algorithm == RSA:
        if bits < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {bits} bits is too short (at least {MIN_RSA_BITS}, "
                             f"{RECOMMENDED_RSA_BITS} recommended)")
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(65537, bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return KeyPair(algorithm, pem, read_private_key(pem).public_record)


def zone_entry(domain: str, selector: str, record: str, ttl: int = 3600) -> str:
    """The record as a zone-file line; split in strings of at most 255 characters, which a
    single TXT string cannot exceed (RFC 1035 §3.3.14) and a 2048-bit RSA key does."""
    chunks = [record[i : i + 255] for i in range(0, len(record), 255)]
    strings = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain.rstrip('.')}. {ttl} IN TXT ( {strings} )"


def write_key_pair(path: str, domain: str, selector: str, algorithm: str = RSA,
                   bits: int = RECOMMENDED_RSA_BITS) -> str:
    """Write a new private key to ``path`` (mode 0600; an existing file is never replaced) and
    return the zone entry to publish."""
    pair = generate_key_pair(algorithm, bits)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_pem)
    return zone_entry(domain, selector, pair.record)
