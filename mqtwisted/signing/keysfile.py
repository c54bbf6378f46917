"""The keys file of ``--dkim-keys`` (TOML) and the choice of keys for a message without a ``dkim``
property: those of its ``From:`` domain, so that the signature aligns for DMARC.

.. code-block:: toml

    [[key]]
    domain = "example.org"
    selector = "rsa2026"
    file = "keys/example.org.rsa2026.pem"   # relative to the keys file
    algorithm = "rsa-sha256"                # or "ed25519-sha256"; default: the key's own
    headers = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
    canonicalization = "relaxed/relaxed"    # default; also simple/simple, relaxed/simple, simple/relaxed
    arc = false                             # true: also ARC-seal relayed mail from this domain

Every key is read and tried at start-up: a file that cannot be read, a key that is not RSA
(>= 1024 bits) or Ed25519, or a bad field stops the start with the file, line and key named.
"""

from __future__ import annotations

import email.utils
import functools
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mqtwisted.signing.keys import (
    ALGORITHMS,
    DEFAULT_CANONICALIZATION,
    ED25519,
    RSA,
    KeyFormatError,
    SigningRequest,
    check_canonicalization,
    check_domain,
    check_headers,
    check_selector,
    read_private_key,
)
from mqtwisted.signing.signer import dkim_signature

_KEY_TABLE = re.compile(r"^\s*\[\[\s*key\s*\]\]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
#: a From: field, unfolded by the caller (RFC 5322 §2.2: a field starts at a line's start)
_FROM = re.compile(rb"^from[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_PROBE = b"From: probe@example.org\r\nSubject: key check\r\n\r\nkey check\r\n"


def normal_domain(domain: str) -> str:
    """The form domains are compared in: lower case, no final dot, IDNA A-labels where possible."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


@attrs.frozen
class KeyTable:
    """The keys of a keys file, by signing domain (normalised), RSA before Ed25519."""

    path: str
    by_domain: Mapping[str, tuple[SigningRequest, ...]]

    def for_domain(self, domain: str) -> tuple[SigningRequest, ...]:
        """The keys of ``domain``, else of its nearest parent domain that has keys (DMARC's
        relaxed alignment accepts a parent's signature), else none."""
        labels = normal_domain(domain).split(".")
        for start in range(len(labels) - 1):
            found = self.by_domain.get(".".join(labels[start:]))
            if found:
                return found
        return ()

    def for_message(self, message: bytes, *, relayed: bool = False) -> tuple[SigningRequest, ...]:
        """The keys for the ``From:`` domain of ``message`` (none if it has no usable From).

        ``arc = true`` keys ARC-seal only ``relayed`` mail (mail that arrived from another
        server): a seal on mail this host originates would vouch for nothing.
        """
        domain = from_domain(message)
        chosen = self.for_domain(domain) if domain else ()
        return chosen if relayed else tuple(attrs.evolve(r, arc=False) if r.arc else r for r in chosen)


def from_domain(message: bytes) -> str | None:
    """The domain of the first address of the ``From:`` header, or None."""
    # Only the header section, and the field's value parsed once per distinct value: a sender's
    # messages share their From:, and choosing keys happens for every recipient of every message.
    end = _HEADER_END.search(message)
    field = _FROM.search(message, 0, end.end() if end else len(message))
    return _domain_of(field.group(1)) if field else None


@functools.lru_cache(maxsize=1024)
def _domain_of(value: bytes) -> str | None:
    text = re.sub(r"\r?\n", "", value.decode("utf-8", "replace"))
    for _, address in email.utils.getaddresses([text]):
        if "@" in address:
            return address.rpartition("@")[2].strip().rstrip(">") or None
    return None


def load_keys_file(path: str) -> KeyTable:
    """Read and check the keys file at ``path``; raises ConfigError naming file, line and key."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise _config_error(f"{path}: cannot read the DKIM keys file: {e.strerror}") from e
    text = raw.decode("utf-8", "replace")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = re.search(r"at line (\d+)", str(e))
        raise _config_error(f"{path}:{line.group(1) if line else 1}: not valid TOML: {e}") from e
    lines = text.splitlines()
    for name in document:
        if name != "key":
            raise _config_error(f"{path}:{_line_of(lines, name, 0, len(lines))}: unknown table or "
                                f"key {name!r} (expected [[key]] tables)")
    entries = document.get("key")
    if not isinstance(entries, list) or not entries:
        raise _config_error(f"{path}: no [[key]] tables")
    starts = [number for number, line in enumerate(lines, 1) if _KEY_TABLE.match(line)]
    by_domain: dict[str, list[SigningRequest]] = {}
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        start = starts[index] if index < len(starts) else 1
        end = starts[index + 1] if index + 1 < len(starts) else len(lines) + 1
        request = _entry(path, lines, start, end, index + 1, entry)
        where = f"{path}:{start}: key #{index + 1} ({request.domain} {request.selector})"
        domain = normal_domain(request.domain)
        if (domain, request.selector) in seen:
            raise _config_error(f"{where}: a second key with this domain and selector")
        seen.add((domain, request.selector))
        same = by_domain.setdefault(domain, [])
        if request.arc and any(other.arc for other in same):
            raise _config_error(f"{where}: arc = true on a second key of {request.domain}; "
                                f"one ARC seal per message")
        same.append(request)
    ordered = {d: tuple(sorted(rs, key=lambda r: r.algorithm == ED25519)) for d, rs in by_domain.items()}
    return KeyTable(path, ordered)


def _check_arc(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"arc: expected true or false, got {value!r}")
    return value


def _check_algorithm(value: object) -> str:
    if value not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {value!r}")
    return str(value)


def _check_file(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"file: expected a path, got {value!r}")
    return value


#: The fields of a [[key]] table and how each is checked (a ValueError's text starts with the field).
_FIELDS: dict[str, Callable[[object], object]] = {
    "domain": check_domain,
    "selector": check_selector,
    "file": _check_file,
    "algorithm": _check_algorithm,
    "headers": lambda value: check_headers(value, need_from=True),
    "canonicalization": check_canonicalization,
    "arc": _check_arc,
}
_REQUIRED = ("domain", "selector", "file")


def _entry(path: str, lines: list[str], start: int, end: int, number: int, entry: object) -> SigningRequest:
    def fail(field: str, message: str) -> Exception:
        return _config_error(f"{path}:{_line_of(lines, field, start, end)}: key #{number}: {message}")

    if not isinstance(entry, dict):
        raise _config_error(f"{path}:{start}: key #{number}: expected a [[key]] table")
    values: dict[str, Any] = {}
    for field, value in entry.items():
        check = _FIELDS.get(field)
        if check is None:
            raise fail(field, f"unknown field {field!r} (known: {', '.join(_FIELDS)})")
        try:
            values[field] = check(value)
        except ValueError as e:
            raise fail(field, str(e)) from e
    for field in _REQUIRED:
        if field not in values:
            raise _config_error(f"{path}:{start}: key #{number}: {field} is missing")
    key_path = os.path.join(os.path.dirname(os.path.abspath(path)), values["file"])
    try:
        with open(key_path, "rb") as f:
            key = read_private_key(f.read())
    except OSError as e:
        raise fail("file", f"cannot read the key file {key_path}: {e.strerror}") from e
    except KeyFormatError as e:
        raise fail("file", f"{key_path}: {e}") from e
    algorithm = values.get("algorithm", key.algorithm)
    if algorithm != key.algorithm:
        raise fail("algorithm", f"algorithm is {algorithm} but {key_path} holds a {key.algorithm} key")
    arc = values.get("arc", False)
    if arc and key.algorithm != RSA:
        raise fail("arc", "arc = true needs an RSA key (ARC seals with rsa-sha256 only)")
    request = SigningRequest(values["domain"], values["selector"], key, headers=values.get("headers"),
                             canonicalization=values.get("canonicalization", DEFAULT_CANONICALIZATION),
                             arc=arc, origin=f"{path} key #{number}")
    try:
        dkim_signature(_PROBE, request)
    except Exception as e:
        raise fail("file", f"{key_path}: the key does not sign: {e}") from e
    return request


def _line_of(lines: list[str], field: str, start: int, end: int) -> int:
    """The line (1-based) in [start, end) where ``field`` is set, else ``start``."""
    pattern = re.compile(rf"^\s*{re.escape(field)}\s*=|^\s*\[+\s*{re.escape(field)}\s*\]")
    for number in range(max(start, 1), min(end, len(lines) + 1)):
        if pattern.match(lines[number - 1]):
            return number
    return start


def _config_error(message: str) -> Exception:
    # Imported here so that signing in a delivery thread never loads the options machinery.
    from mqtwisted.options import ConfigError

    return ConfigError(message)
