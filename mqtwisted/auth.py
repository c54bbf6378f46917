"""Credential sources for ``--smtp-auth``: ``hardcoded://user:pass,…`` and ``file:///path``.

The file holds ``user:hash`` lines, where ``hash`` is a crypt(3) string (``$6$…``, ``$5$…``,
``$2b$``… whatever the system's crypt supports), as ``mkpasswd -m sha-512`` or ``openssl passwd
-6`` write them.  Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import hmac
import urllib.parse
import warnings

import attrs

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


class AuthConfigError(ValueError):
    pass


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
        computed = crypt.crypt(password, stored)
        return computed is not None and hmac.compare_digest(computed.encode(), stored.encode())


def load_checker(spec: str) -> PasswordChecker:
    """Parse an ``--smtp-auth`` value."""
    if spec.startswith("hardcoded://"):
        plain = {}
        for pair in spec[len("hardcoded://") :].split(","):
            user, colon, password = pair.partition(":")
            if not colon or not user:
                raise AuthConfigError(f"--smtp-auth: expected user:password, got {pair!r}")
            plain[urllib.parse.unquote(user)] = urllib.parse.unquote(password)
        return PasswordChecker(plain=plain)
    if spec.startswith("file://"):
        path = urllib.parse.urlparse(spec).path
        hashed = {}
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    user, colon, digest = line.partition(":")
                    if not colon or not user or not digest:
                        raise AuthConfigError(f"{path}:{number}: expected user:crypt-hash")
                    hashed[user] = digest
        except OSError as e:
            raise AuthConfigError(f"--smtp-auth: cannot read {path}: {e.strerror}") from e
        return PasswordChecker(hashed=hashed)
    raise AuthConfigError(f"--smtp-auth: unknown scheme in {spec!r} (use hardcoded:// or file://)")
