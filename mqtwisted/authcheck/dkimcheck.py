"""DKIM (RFC 6376, RFC 8463) and ARC (RFC 8617) verification of an arriving message, by dkimpy,
with the public keys looked up through :class:`~mqtwisted.authcheck.lookups.Lookups`.

dkimpy's ``verify`` answers only True or False; what went wrong is told to its logger.  The key
lookup function given to it (its ``dnsfunc``) notes whether a key was missing or could not be
looked up for now, so that each signature gets RFC 8601's result: ``pass``, ``fail`` (the
signature or body hash does not match), ``permerror`` (no key, a malformed signature or key)
or ``temperror`` (the key could not be fetched).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import attrs
import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from mqtwisted.authcheck.lookups import Lookups, TemporaryDNSError

#: Keys shorter than this do not verify (RFC 8301 §3.2; dkimpy's default too).
MIN_KEY_BITS = 1024


@attrs.frozen
class DkimResult:
    """One ``DKIM-Signature``: ``result``; the signing ``domain`` (d=), ``selector`` (s=),
    ``algorithm`` (a=) and the first characters of ``signature`` (b=, RFC 6008: which of several
    signatures); ``reason`` when it did not pass."""

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    signature: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "domain": self.domain, "selector": self.selector,
                "algorithm": self.algorithm, "signature": self.signature, "reason": self.reason}


@attrs.frozen
class ArcResult:
    """The message's ARC chain: ``none`` (no ARC set), ``pass`` or ``fail``; ``instances``: how
    many ARC sets it carries."""

    result: str
    instances: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "instances": self.instances, "reason": self.reason}


class _Notes:
    """dkimpy's logger: keeps the last error it reports (the reason a signature did not verify)."""

    def __init__(self) -> None:
        self.last = ""

    def error(self, message: Any, *args: Any) -> None:
        self.last = str(message)

    def debug(self, *args: Any) -> None:
        pass

    info = warning = debug


class _KeyLookup:
    """dkimpy's ``dnsfunc``: the TXT record at the key's name, noting a missing key and a
    temporary failure."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups
        self.missing = False
        self.temporary = ""

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.lookups.txt(text)
        except TemporaryDNSError as e:
            self.temporary = str(e)
            raise dkim.DnsTimeoutError(str(e)) from None
        if not records:
            self.missing = True
            return None
        return records[0]


def check_dkim(message: bytes, lookups: Lookups) -> tuple[DkimResult, ...]:
    """Each ``DKIM-Signature`` of ``message``, top down (in a worker thread)."""
    notes = _Notes()
    verifier = dkim.DKIM(message, logger=notes, minkey=MIN_KEY_BITS)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(count):
        notes.last = ""
        key = _KeyLookup(lookups)
        tags = _tags(verifier, index)
        try:
            ok = verifier.verify(idx=index, dnsfunc=key)
        except dkim.DKIMException as e:
            mismatch = isinstance(e, dkim.ValidationError) and "body hash" in str(e)
            results.append(_result("fail" if mismatch else "permerror", tags, str(e)))
            continue
        if ok:
            results.append(_result("pass", tags, ""))
        elif key.temporary:
            results.append(_result("temperror", tags, key.temporary))
        elif key.missing:
            results.append(_result("permerror", tags, "no key for signature"))
        elif notes.last:  # dkimpy logs what made the key unusable
            results.append(_result("permerror", tags, notes.last))
        else:
            results.append(_result("fail", tags, "signature did not verify"))
    return tuple(results)


def _tags(verifier: dkim.DKIM, index: int) -> dict[bytes, bytes]:
    values = [v for name, v in verifier.headers if name.lower() == b"dkim-signature"]
    try:
        return parse_tag_value(values[index])
    except (InvalidTagValueList, IndexError):
        return {}


def _result(result: str, tags: dict[bytes, bytes], reason: str) -> DkimResult:
    def text(tag: bytes) -> str:
        return re.sub(r"\s+", "", tags.get(tag, b"").decode("ascii", "replace"))

    signature = text(b"b")[:8]
    try:
        base64.b64decode(signature + "=" * (-len(signature) % 4))
    except ValueError:
        signature = ""
    return DkimResult(result, text(b"d").lower(), text(b"s"), text(b"a").lower(), signature, reason)


def check_arc(message: bytes, lookups: Lookups) -> ArcResult:
    """The ARC chain of ``message`` (in a worker thread)."""
    notes = _Notes()
    verifier = dkim.ARC(message, logger=notes, minkey=MIN_KEY_BITS)
    instances, _ = verifier.sorted_arc_headers()
    if instances == 0:
        return ArcResult("none")
    try:
        cv, _results, reason = verifier.verify(dnsfunc=_KeyLookup(lookups))
    except dkim.DKIMException as e:
        return ArcResult("fail", instances, str(e))
    # None: an earlier hop said the chain failed, so it has ended (RFC 8617 §5.2).
    result = "pass" if cv == dkim.CV_Pass else "fail"
    return ArcResult(result, instances, "" if result == "pass" else str(reason))
