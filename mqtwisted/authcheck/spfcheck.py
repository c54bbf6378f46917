"""SPF (RFC 7208) of the client's address for the MAIL FROM domain, or for the HELO name when
MAIL FROM is empty, evaluated by pyspf.

pyspf asks DNS through its module function ``spf.DNSLookup(name, qtype, strict, timeout)``,
the hook its own test suite replaces.  It is replaced here once, by a function that answers
from the :class:`~mqtwisted.authcheck.lookups.Lookups` of the check running on the calling
thread (so each message's lookups go through the configured resolver, whatever thread runs
it), and from pyspf's own resolver for any other caller in the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import spf

from mqtwisted.authcheck.lookups import Lookups, TemporaryDNSError

#: RFC 7208 §4.6.4 and pyspf: the whole evaluation may take this long (seconds).
TIME_LIMIT = 20

_current = threading.local()
_library_lookup = spf.DNSLookup


def _lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None, *args: Any) -> Iterator[tuple[Any, Any]]:
    lookups: Lookups | None = getattr(_current, "lookups", None)
    if lookups is None:
        return _library_lookup(name, qtype, strict, timeout, *args)
    if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
        return iter(())  # type SPF (99): obsolete (RFC 7208 §3.1), asked only in pyspf's harsh mode
    try:
        records = lookups.records(name, qtype)
    except TemporaryDNSError as e:
        raise spf.TempError(f"DNS {e}") from None
    return iter(((owner, kind), value) for owner, kind, value in records)


spf.DNSLookup = _lookup


@attrs.frozen
class SpfResult:
    """``result``: none, neutral, pass, fail, softfail, temperror or permerror (RFC 8601 §2.7.2);
    ``scope``: ``mailfrom`` or ``helo``; ``identity``: the address or name checked, ``domain``
    its domain; ``reason``: pyspf's explanation."""

    result: str
    scope: str
    identity: str
    domain: str
    ip: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "scope": self.scope, "identity": self.identity, "domain": self.domain,
                "ip": self.ip, "reason": self.reason}


def check_spf(lookups: Lookups, ip: str, mail_from: str, helo: str | None, receiver: str) -> SpfResult:
    """The SPF result of a client at ``ip`` (in a worker thread)."""
    helo = (helo or "").strip().strip("[]")
    if mail_from:
        scope, identity = "mailfrom", mail_from
        domain = mail_from.rsplit("@", 1)[-1]
    else:
        scope, identity, domain = "helo", helo, helo
    if not ip or not domain:
        return SpfResult("none", scope, identity, domain, ip, "no identity to check" if ip else "no client address")
    _current.lookups = lookups
    try:
        query = spf.query(i=ip, s=mail_from, h=helo, receiver=receiver, querytime=TIME_LIMIT)
        result, _code, explanation = query.check()
    except Exception as e:  # pyspf's own errors are results; anything else must not lose the message
        result, explanation = "temperror", f"SPF check failed: {e}"
    finally:
        _current.lookups = None
    return SpfResult(str(result).lower(), scope, identity, domain.lower(), ip, str(explanation))
