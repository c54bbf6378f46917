"""MailerQ's per-message ``dkim`` property, read into :class:`SigningRequest` values.

The property is one object or a list of them::

    {"domain": "example.org", "selector": "s1", "key": "-----BEGIN PRIVATE KEY-----\\n...",
     "headers": ["list-unsubscribe"], "canonicalization": "relaxed/relaxed",
     "expire": 604800, "protocols": ["dkim", "arc"]}

``headers`` are signed in addition to the usual ones; ``expire`` is the number of seconds the
signature is valid (``x=``); ``protocols`` (default ``["dkim"]``) asks for a DKIM signature, an ARC
seal, or both.  ``key`` is PEM text (base64 DER without the PEM lines is read too); the algorithm
is the key's: RSA (rsa-sha256) or Ed25519 (ed25519-sha256).
"""

from __future__ import annotations

import functools
from typing import Any

from mqtwisted.signing.keys import (
    DEFAULT_CANONICALIZATION,
    RSA,
    KeyFormatError,
    SigningKey,
    SigningRequest,
    check_canonicalization,
    check_domain,
    check_headers,
    check_selector,
    read_private_key,
)
from mqtwisted.signing.keysfile import KeyTable

FIELDS = ("domain", "selector", "key", "headers", "canonicalization", "expire", "protocols")
PROTOCOLS = ("dkim", "arc")


class DkimPropertyError(ValueError):
    """The ``dkim`` property of a message is unusable; the text says which object and field."""


def parse_dkim_property(value: Any) -> tuple[SigningRequest, ...]:
    """The signing requests of a ``dkim`` property (an object or a list of objects)."""
    objects = value if isinstance(value, list) else [value]
    if not objects:
        raise DkimPropertyError("dkim: an empty list (leave the property out to use the keys file)")
    requests = tuple(_one(item, f"dkim[{i}]" if isinstance(value, list) else "dkim")
                     for i, item in enumerate(objects))
    if sum(r.arc for r in requests) > 1:
        raise DkimPropertyError("dkim: more than one object asks for ARC; a message gets one ARC seal")
    return requests


def _one(item: Any, where: str) -> SigningRequest:
    if not isinstance(item, dict):
        raise DkimPropertyError(f"{where}: expected an object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise DkimPropertyError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    for field in ("domain", "selector", "key"):
        if field not in item:
            raise DkimPropertyError(f"{where}: {field} is missing")
    try:
        domain = check_domain(item["domain"])
        selector = check_selector(item["selector"])
        extra = check_headers(_header_list(item.get("headers", [])), need_from=False)
        canonicalization = check_canonicalization(item.get("canonicalization", DEFAULT_CANONICALIZATION))
        expire = _expire(item.get("expire"))
        protocols = _protocols(item.get("protocols", ["dkim"]))
    except ValueError as e:
        raise DkimPropertyError(f"{where}: {e}") from e
    pem = item["key"]
    if not isinstance(pem, str) or not pem.strip():
        raise DkimPropertyError(f"{where}: key: expected the private key as PEM text")
    try:
        key = _read_key(pem.encode())
    except KeyFormatError as e:
        raise DkimPropertyError(f"{where}: key: {e}") from e
    if "arc" in protocols and key.algorithm != RSA:
        raise DkimPropertyError(f"{where}: protocols: ARC needs an RSA key, this one is {key.algorithm}")
    return SigningRequest(domain, selector, key, extra_headers=extra, canonicalization=canonicalization,
                          expire=expire, dkim="dkim" in protocols, arc="arc" in protocols,
                          origin=where + " property")


@functools.lru_cache(maxsize=64)
def _read_key(pem: bytes) -> SigningKey:
    # A campaign carries the same key in every message: read (and check) it once.
    return read_private_key(pem)


def _header_list(value: Any) -> Any:
    if isinstance(value, str):  # "list-unsubscribe:list-id", as in a DKIM h= tag
        return [h for h in value.replace(",", ":").split(":") if h.strip()]
    return value


def _expire(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expire: expected a number of seconds greater than 0, got {value!r}")
    return value


def _protocols(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or any(p not in PROTOCOLS for p in value):
        raise ValueError(f"protocols: expected a list of {' and '.join(PROTOCOLS)}, got {value!r}")
    return tuple(value)


def signing_requests(dkim_property: Any, message: bytes, keys: KeyTable | None, *,
                     relayed: bool = False) -> tuple[SigningRequest, ...]:
    """What to sign ``message`` with: its ``dkim`` property when it has one (``None``: it has
    not), else the keys of its ``From:`` domain in ``keys`` (see :meth:`KeyTable.for_message`
    for ``relayed``), else nothing."""
    if dkim_property is not None:
        return parse_dkim_property(dkim_property)
    return keys.for_message(message, relayed=relayed) if keys is not None else ()
