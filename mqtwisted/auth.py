"""Credential sources for ``--smtp-auth``: ``hardcoded://user:pass,…`` and ``file:///path``.

The file holds ``user:hash`` lines in crypt(3) format, as ``mkpasswd``, ``openssl passwd -6`` or
``htpasswd -B`` write them.  Lines starting with ``#`` are comments.  The schemes, by prefix, and
what verifies each (Python 3.13 has no ``crypt`` module, so none of them goes through it):

=====================  ==============  ===================================================
prefix                 scheme          verified by
=====================  ==============  ===================================================
``$6$``                sha512-crypt    libpass (the maintained passlib), in Python
``$5$``                sha256-crypt    libpass, in Python
``$2b$ $2a$ $2y$``     bcrypt          pyca's ``bcrypt``, first 72 bytes as crypt(3) does
``$y$``                yescrypt        the system's libxcrypt, through ``crypt_r``
=====================  ==============  ===================================================

Any other scheme (MD5-crypt ``$1$``, DES, …) is refused when the file is read, with its file and
line: it is weak, and accepting whatever the platform happens to support made the file mean
different things on different machines.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs
import bcrypt
from passlib.hash import bcrypt as bcrypt_format
from passlib.hash import sha256_crypt, sha512_crypt


class AuthConfigError(ValueError):
    pass


def _verify_bcrypt(password: str, stored: str) -> bool:
    # crypt(3), htpasswd and mkpasswd hash only a password's first 72 bytes; bcrypt >= 5 refuses
    # longer input instead of cutting it (and libpass 1.9.4's bcrypt.verify passes it through),
    # so cut here to accept what those tools accept
    return bcrypt.checkpw(password.encode()[:72], stored.encode())


def _crypt_r(password: str, setting: str) -> str | None:
    """The system's crypt_r(3) (libxcrypt: Debian's libcrypt1, Fedora's libxcrypt); None if refused.

    For yescrypt only: the PyPI packages that implement it themselves are GPL-licensed
    (pyxcrypt, pyyescrypt) or unmaintained (pyescrypt).  ``crypt_r`` is the copy of the removed
    ``crypt`` module that the Fedora Python maintainers keep; it calls libxcrypt.
    """
    import crypt_r  # imported here so that a host without it still reads the other schemes

    computed = crypt_r.crypt(password, setting)
    # libxcrypt answers a setting it cannot use with "*0" or "*1", never a valid hash
    return None if computed is None or computed.startswith("*") else computed


# A yescrypt hash of "s3cret" made by libxcrypt 4.4.33's crypt(3): whether this
# system computes the same tells whether it can verify $y$ hashes at all.
_YESCRYPT_KNOWN = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$8c0O2L8gFA3jUVvwMFdXpZKM78kTwpdGJswaLb6IRr/"
_YESCRYPT_FORMAT = re.compile(r"\$y\$[./0-9A-Za-z]+\$[./0-9A-Za-z]*\$[./0-9A-Za-z]{43}")


@functools.cache
def _yescrypt_unavailable() -> str | None:
    """Why this system cannot verify yescrypt hashes, or None if it can."""
    try:
        computed = _crypt_r("s3cret", _YESCRYPT_KNOWN)
    except ImportError:
        return "yescrypt needs the crypt-r package (and libxcrypt)"
    if computed != _YESCRYPT_KNOWN:
        return "this system's crypt_r(3) does not compute yescrypt (it needs libxcrypt)"
    return None


def _check_yescrypt(stored: str) -> None:
    if not _YESCRYPT_FORMAT.fullmatch(stored):
        raise ValueError("expected $y$params$salt$ and a 43-character hash")
    problem = _yescrypt_unavailable()
    if problem:
        raise ValueError(problem)


def _verify_yescrypt(password: str, stored: str) -> bool:
    computed = _crypt_r(password, stored)
    return computed is not None and hmac.compare_digest(computed.encode(), stored.encode())


@attrs.frozen
class Scheme:
    """A crypt(3) hash scheme: the prefixes that name it, how to check and to verify a hash."""

    name: str
    prefixes: tuple[str, ...]
    check: Callable[[str], None]  # raises ValueError, saying why, for a hash it cannot use
    verify: Callable[[str, str], bool]  # (password, stored), comparing in constant time


def _parsed_by(passlib_handler: Any) -> Callable[[str], None]:
    def check(stored: str) -> None:
        # from_string also admits a bare setting ($6$salt$), which no password matches
        if passlib_handler.from_string(stored).checksum is None:
            raise ValueError("it ends after the salt: no hash follows")

    return check


SCHEMES = (
    Scheme("sha512-crypt", ("$6$",), _parsed_by(sha512_crypt), sha512_crypt.verify),
    Scheme("sha256-crypt", ("$5$",), _parsed_by(sha256_crypt), sha256_crypt.verify),
    # libpass parses bcrypt strings; pyca's bcrypt verifies them (see _verify_bcrypt)
    Scheme("bcrypt", ("$2b$", "$2a$", "$2y$"), _parsed_by(bcrypt_format), _verify_bcrypt),
    Scheme("yescrypt", ("$y$",), _check_yescrypt, _verify_yescrypt),
)


def scheme_of(stored: str) -> Scheme | None:
    return next((s for s in SCHEMES if stored.startswith(s.prefixes)), None)


@attrs.frozen
class PasswordChecker:
    """Callable ``(login, password) -> bool``; pickles (it is plain data)."""

    plain: dict[str, str] = attrs.field(factory=dict)
    hashed: dict[str, str] = attrs.field(factory=dict)

    def __call__(self, login: str, password: str) -> bool:
        if login in self.plain:
            return hmac.compare_digest(self.plain[login].encode(), password.encode())
        stored = self.hashed.get(login)
        if stored is None:
            return False
        scheme = scheme_of(stored)
        if scheme is None:  # load_checker admits none, but a checker built by hand may hold one
            return False
        try:
            return scheme.verify(password, stored)
        except ValueError:
            # a password crypt(3) cannot take (a NUL byte, sent with AUTH LOGIN) is a wrong one
            return False


def read_hash_line(path: str, number: int, line: str) -> tuple[str, str] | None:
    """``(user, hash)`` of one line of a credentials file, None for a blank or comment line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    user, colon, digest = line.partition(":")
    if not colon or not user or not digest:
        raise AuthConfigError(f"{path}:{number}: expected user:crypt-hash")
    scheme = scheme_of(digest)
    if scheme is None:
        # name the scheme, but echo nothing else: the field may be a password written in clear
        found = digest.split("$")[1] if digest.count("$") >= 2 and digest.startswith("$") else None
        what = f"hash scheme ${found}$" if found else "hash (no $id$ prefix)"
        known = ", ".join(f"{s.prefixes[0]} {s.name}" for s in SCHEMES)
        raise AuthConfigError(f"{path}:{number}: user {user!r}: unsupported {what}; use {known}")
    try:
        scheme.check(digest)
    except ValueError as e:
        where = f"{path}:{number}: user {user!r}"
        raise AuthConfigError(f"{where}: unusable {scheme.name} hash: {e}") from e
    return user, digest


def load_checker(spec: str, option: str = "smtp-auth") -> PasswordChecker:
    """Parse an ``--smtp-auth`` (or ``--www-auth``: ``option``) value."""
    if spec.startswith("hardcoded://"):
        plain = {}
        for pair in spec[len("hardcoded://") :].split(","):
            user, colon, password = pair.partition(":")
            if not colon or not user:
                raise AuthConfigError(f"--{option}: expected user:password, got {pair!r}")
            plain[urllib.parse.unquote(user)] = urllib.parse.unquote(password)
        return PasswordChecker(plain=plain)
    if spec.startswith("file://"):
        path = urllib.parse.urlparse(spec).path
        hashed = {}
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    entry = read_hash_line(path, number, line)
                    if entry is not None:
                        hashed[entry[0]] = entry[1]
        except OSError as e:
            raise AuthConfigError(f"--{option}: cannot read {path}: {e.strerror}") from e
        return PasswordChecker(hashed=hashed)
    raise AuthConfigError(f"--{option}: unknown scheme in {spec!r} (use hardcoded:// or file://)")


def load_tokens(spec: str) -> frozenset[bytes]:
    """``rest-tokens`` as the set of the tokens' SHA-256 digests."""
    if spec.startswith("hardcoded://"):
        tokens = [t for t in spec[len("hardcoded://"):].split(",") if t]
        return frozenset(hashlib.sha256(t.encode()).digest() for t in tokens)
    if not spec.startswith("file://"):
        raise AuthConfigError(f"--rest-tokens: expected hardcoded://TOKEN,... or file:///PATH, got {spec[:20]!r}")
    path = urllib.parse.unquote(urllib.parse.urlparse(spec).path)
    digests = set()
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("sha256:"):
                    try:
                        digest = bytes.fromhex(line[7:])
                    except ValueError:
                        digest = b""
                    if len(digest) != 32:
                        raise AuthConfigError(f"--rest-tokens: {path}:{number}: sha256: needs 64 hex digits")
                    digests.add(digest)
                else:
                    digests.add(hashlib.sha256(line.encode()).digest())
    except OSError as e:
        raise AuthConfigError(f"--rest-tokens: {path}: {e.strerror}") from e
    return frozenset(digests)
