"""DKIM signing and ARC sealing (mqtwisted.signing): the keys file, MailerQ's ``dkim`` property,
the Signer and its cache, key generation.  Every signature is checked by dkimpy's verifier and, in
the DNS zone tests, by independent verifiers from Debian with the public keys served by a
twisted.names zone on loopback: OpenDKIM's milter in test mode (RSA and Ed25519) and Perl's
Mail::DKIM, the library of SpamAssassin and Amavis (RSA and ARC)."""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import dkim
import dns.exception
import dns.resolver
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization

from mqtwisted.options import ConfigError
from mqtwisted.signing import (
    ED25519,
    RSA,
    DkimPropertyError,
    KeyFormatError,
    KeyPair,
    Signer,
    SigningError,
    SigningKey,
    SigningRequest,
    from_domain,
    generate_key_pair,
    load_keys_file,
    parse_dkim_property,
    read_private_key,
    signing_requests,
    write_key_pair,
    zone_entry,
)
from mqtwisted.signing import signer as signer_module
from tests.conftest import in_thread
from tests.dnszone import DNSZone

HOST = "mx.example.org"
CANONICALIZATIONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed")

# A 768-bit RSA key: too short to sign with (made with `openssl genrsa 768`).
SHORT_RSA = b"""-----BEGIN PRIVATE KEY-----
MIIB5AIBADANBgkqhkiG9w0BAQEFAASCAc4wggHKAgEAAmEAxSisI9UzxDAak2Ff
UNaqnaAGh8jVJP65Rth1qgO+0rechInuaYkwFlNsMaUdNKDGbj88/AZh/Lherv6t
Q7Jr2Z1m7lnDxoQiZGiQjIloXZmXJUJ0HnzP1x9ObkyxR1o7AgMBAAECYQCl211U
l5qAxGbW7OcePjgxedmEiPKluJNsgdQaPiRdZ5EH/nDN31bQsUUnTluPVl+dBDw0
/pOADGma46qUsLOHFnsIwgIBNAyyIZvVJAugKU+lCNFKqtV/vTay3rOAr0ECMQDs
wamAT6k7YhLV5duDJ1Z0kvsoe5mfn9IZnTipwLSOl0sXeXLQpFaTcmtERaOnpxkC
MQDVLxQQB5bA2sYtUoVNL5uIxFn7ojI8L60v7RnbGFep/MgYl8Y0jDpvvOeyHB+M
2nMCMCHfEwDoZK26OjefyufYmOXUoVoJVNEhbE190L14dFxyCKwzE9oFqN0vYWlD
DUbPAQIwDbbRm5ZhZFaumQvN94EwiEPZZg6xHJ4Ujhi6qRWPzies16gr4AWFXNrS
LOsSPIVxAjBldoN55gGEnhp4pt1hZGeAZRRqUP2vtZESNR005GTcHaG8xevGh1ZZ
Z4S3CO69NeU=
-----END PRIVATE KEY-----
"""


# --- messages --------------------------------------------------------------------------------

def crlf(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return re.sub(rb"\r?\n", b"\r\n", data)


HEAD = """From: Alice <alice@example.org>
To: Bob <bob@example.net>
Subject: Hello
Date: Sun, 29 Nov 2026 12:00:00 +0000
Message-ID: <1@example.org>
MIME-Version: 1.0
"""

LONG_SUBJECT = "Subject: " + " ".join(f"word{i}" for i in range(120))
FOLDED = "\n\t".join(LONG_SUBJECT[i : i + 70] for i in range(0, len(LONG_SUBJECT), 70))


@functools.cache
def big_message() -> bytes:
    attachment = base64.encodebytes(os.urandom(7_600_000))
    return crlf(HEAD + 'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\nContent-Type: text/plain\n\n'
                "see attachment\n--b1\nContent-Type: application/octet-stream\n"
                "Content-Transfer-Encoding: base64\n\n") + crlf(attachment) + b"--b1--\r\n"


MESSAGES: dict[str, bytes] = {
    "plain": crlf(HEAD + "Content-Type: text/plain\n\nHello Bob.\n"),
    "trailing-blank-lines": crlf(HEAD + "Content-Type: text/plain\n\nHello Bob.\n\n\n\n\n"),
    "long-folded-headers": crlf(
        HEAD.replace("Subject: Hello\n", "") + FOLDED + "\n"
        + "Cc: " + ",\n  ".join(f"person{i} <p{i}@example.net>" for i in range(40)) + "\n"
        + "X-Spaces:   lots   of\t \t whitespace   \n"
        + "Content-Type: text/plain\n\nbody\n"),
    "8bit": crlf(HEAD + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n")
    + "Grüße, ¡hola!, 日本語\r\nlatin-1: ".encode() + b"\xe9t\xe9\r\n",
    "smtputf8": crlf("From: Jörg <jörg@example.org>\nTo: 张三 <张三@例子.测试>\nSubject: Grüße 🎉\n"
                     "Date: Sun, 29 Nov 2026 12:00:00 +0000\nMessage-ID: <ü@example.org>\nMIME-Version: 1.0\n"
                     "Content-Type: text/plain; charset=utf-8\n\nTschüß 🎉\n"),
    "lf-line-endings": (HEAD + "Content-Type: text/plain\n\nLF only.\n\n").encode(),
    # A bare LF in a CRLF body: a line end for the verifier, as it will be on the wire.
    "mixed-line-endings": crlf(HEAD + "Content-Type: text/plain\n\n") + b"one\ntwo\r\nthree\n",
}


# --- keys and their publication ----------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_pair() -> KeyPair:
    return generate_key_pair(RSA)


@pytest.fixture(scope="module")
def ed_pair() -> KeyPair:
    return generate_key_pair(ED25519)


class Published:
    """Public keys by DNS name: dkimpy's ``dnsfunc``, and the records of a DNSZone."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}

    def add(self, domain: str, selector: str, key: SigningKey) -> None:
        self.records[f"{selector}._domainkey.{domain}"] = key.public_record

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        name = name.decode() if isinstance(name, bytes) else name
        record = self.records.get(name.rstrip("."))
        return record.encode() if record is not None else None

    def zone(self) -> dict[str, list[tuple]]:
        return {name: [("TXT", record)] for name, record in self.records.items()}


@pytest.fixture
def published() -> Published:
    return Published()


def make_request(published: Published, pair: KeyPair, domain: str = "example.org", **kw: Any) -> SigningRequest:
    key = read_private_key(pair.private_pem)
    selector = kw.pop("selector", "rsa1" if key.algorithm == RSA else "ed1")
    published.add(domain, selector, key)
    return SigningRequest(domain, selector, key, **kw)


def dkim_headers(message: bytes) -> list[bytes]:
    return [value for name, value in dkim.rfc822_parse(message)[0] if name.lower() == b"dkim-signature"]


def verify_each(message: bytes, dnsfunc: Callable[..., Any]) -> list[bool]:
    """dkimpy's verdict on every DKIM-Signature of ``message``, top first."""
    return [verify_one(message, i, dnsfunc) for i in range(len(dkim_headers(message)))]


def verify_one(message: bytes, idx: int, dnsfunc: Callable[..., Any]) -> bool:
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError:  # dkim.verify() says False for it; DKIM.verify() raises
        return False


def tag(header: bytes, name: str) -> str:
    tags = dict(dkim.util.parse_tag_value(header))
    return re.sub(r"\s+", "", tags[name.encode()].decode())


# --- signing verifies ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in MESSAGES])
@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS)
def test_rsa_and_ed25519_signatures_verify(name: str, canonicalization: str, rsa_pair: KeyPair,
                                           ed_pair: KeyPair, published: Published) -> None:
    requests = [make_request(published, rsa_pair, canonicalization=canonicalization),
                make_request(published, ed_pair, canonicalization=canonicalization)]
    message = MESSAGES[name]
    signed = Signer(HOST).sign(message, requests)
    assert signed.endswith(message)
    headers = dkim_headers(signed)
    assert [tag(h, "a") for h in headers] == [RSA, ED25519]
    assert all(tag(h, "c") == canonicalization for h in headers)
    assert verify_each(signed, published.dnsfunc) == [True, True]
    # A receiver sees CRLF whatever the spool held: the signature must survive that.
    assert verify_each(crlf(signed), published.dnsfunc) == [True, True]
    # And the verifier can say no: one changed body byte breaks both.
    tampered = signed[:-3] + (b"X" if signed[-3:-2] != b"X" else b"Y") + signed[-2:]
    assert verify_each(tampered, published.dnsfunc) == [False, False]


def test_added_headers_match_the_message_line_endings(rsa_pair: KeyPair, published: Published) -> None:
    request = make_request(published, rsa_pair)
    lf = Signer(HOST).sign(MESSAGES["lf-line-endings"], [request])
    assert b"\r" not in lf
    crlf_signed = Signer(HOST).sign(MESSAGES["plain"], [request])
    assert b"\n" not in crlf_signed.replace(b"\r\n", b"")


@pytest.mark.slow
@pytest.mark.parametrize("canonicalization", ["simple/simple", "relaxed/relaxed"])
def test_a_10_mb_attachment_is_signed_and_verifies(canonicalization: str, rsa_pair: KeyPair,
                                                   ed_pair: KeyPair, published: Published) -> None:
    message = big_message()
    assert len(message) > 10_000_000
    requests = [make_request(published, rsa_pair, canonicalization=canonicalization),
                make_request(published, ed_pair, canonicalization=canonicalization)]
    signed = Signer(HOST).sign(message, requests)
    assert verify_each(signed, published.dnsfunc) == [True, True]


def test_headers_chosen_signed_and_extra_headers(rsa_pair: KeyPair, published: Published) -> None:
    message = crlf(HEAD + "X-Campaign: 42\nContent-Type: text/plain\n\nx\n")
    default = dkim_headers(Signer(HOST).sign(message, [make_request(published, rsa_pair)]))[0]
    signed = tag(default, "h").split(":")
    assert signed.count("from") == 2  # From over-signed: no second From can be added
    assert {"to", "subject", "date", "message-id", "content-type"} <= set(signed)
    assert "x-campaign" not in signed

    extra = make_request(published, rsa_pair, extra_headers=("x-campaign",))
    out = Signer(HOST).sign(message, [extra])
    assert "x-campaign" in tag(dkim_headers(out)[0], "h").split(":")
    assert verify_each(out, published.dnsfunc) == [True]
    assert verify_each(out.replace(b"X-Campaign: 42", b"X-Campaign: 43"), published.dnsfunc) == [False]

    exact = make_request(published, rsa_pair, headers=("from", "subject"))
    out = Signer(HOST).sign(message, [exact])
    assert tag(dkim_headers(out)[0], "h") == "from:subject"
    assert verify_each(out, published.dnsfunc) == [True]


def test_expire_sets_x_and_the_verifier_honours_it(rsa_pair: KeyPair, published: Published,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    signed = Signer(HOST).sign(MESSAGES["plain"], [make_request(published, rsa_pair, expire=3600)])
    header = dkim_headers(signed)[0]
    assert int(tag(header, "x")) == int(tag(header, "t")) + 3600
    assert verify_each(signed, published.dnsfunc) == [True]
    now = time.time()
    slop = 36000  # dkimpy allows 10 hours of clock skew
    monkeypatch.setattr(time, "time", lambda: now + 3600 + slop + 60)
    assert verify_each(signed, published.dnsfunc) == [False]


def test_rsa_is_signed_by_openssl(rsa_pair: KeyPair, published: Published, monkeypatch: pytest.MonkeyPatch) -> None:
    digests: list[bytes] = []
    original = signer_module.OpenSSLRSA.sign

    def counting(self: Any, digest: bytes) -> Any:
        digests.append(digest)
        return original(self, digest)

    monkeypatch.setattr(signer_module.OpenSSLRSA, "sign", counting)
    signed = Signer(HOST).sign(MESSAGES["plain"], [make_request(published, rsa_pair, arc=True)])
    # One DKIM-Signature, then the ARC-Message-Signature and the ARC-Seal: all through OpenSSL.
    assert len(digests) == 3 and all(len(d) == 32 for d in digests)
    assert verify_each(signed, published.dnsfunc) == [True]
    assert arc_results(signed, published)[0] == b"pass"
    # dkimpy's own RSA (Python integers) signs the same bytes to the same signature: PKCS#1 v1.5
    # is deterministic, so OpenSSL changed the speed and nothing else.
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)  # the same t= for both
    request = make_request(published, rsa_pair)
    ours = dkim_headers(Signer(HOST).sign(MESSAGES["plain"], [request]))[0]
    theirs = dkim.DKIM(MESSAGES["plain"]).sign(b"rsa1", b"example.org", request.key.secret,
                                              canonicalize=(b"relaxed", b"relaxed")).split(b":", 1)[1]
    assert tag(ours, "t") == tag(theirs, "t") and len(digests) == 4
    assert tag(ours, "b") == tag(theirs, "b")


# --- signing failures ---------------------------------------------------------------------------

def broken_key() -> SigningKey:
    return SigningKey(RSA, b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                      2048, "")


def test_a_signing_failure_raises_and_returns_nothing(rsa_pair: KeyPair, published: Published) -> None:
    good = make_request(published, rsa_pair)
    bad = SigningRequest("example.org", "broken", broken_key(), origin="test")
    signer = Signer(HOST)
    with pytest.raises(SigningError, match=r"rsa-sha256 d=example.org s=broken \(test\)"):
        signer.sign(MESSAGES["plain"], [good, bad])
    # Nothing half-signed was cached either: the good key alone still signs.
    assert verify_each(signer.sign(MESSAGES["plain"], [good]), published.dnsfunc) == [True]


@pytest.mark.parametrize("message, request_kw, match", [
    (b"no header separator \x00\xff here", {}, "DKIM signing"),
    (MESSAGES["plain"], {"headers": ("subject",)}, "From header field MUST be signed"),
    (MESSAGES["plain"], {"headers": ("from", "received")}, "SHOULD NOT be signed"),
])
def test_dkimpy_refusals_become_signing_errors(message: bytes, request_kw: dict, match: str,
                                               rsa_pair: KeyPair, published: Published) -> None:
    with pytest.raises(SigningError, match=match):
        Signer(HOST).sign(message, [make_request(published, rsa_pair, **request_kw)])


def test_no_request_leaves_the_message_as_it_is() -> None:
    assert Signer(HOST).sign(MESSAGES["plain"], []) is MESSAGES["plain"]


# --- signed once per message --------------------------------------------------------------------

@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = signer_module.dkim_signatures

    def counting(message: bytes, requests: Sequence[SigningRequest], *args: Any) -> list[bytes]:
        calls.extend(request.selector for request in requests)
        return original(message, requests, *args)

    monkeypatch.setattr(signer_module, "dkim_signatures", counting)
    return calls


def test_100_recipients_are_signed_once(counted: list[str], rsa_pair: KeyPair, ed_pair: KeyPair,
                                        published: Published) -> None:
    requests = [make_request(published, rsa_pair), make_request(published, ed_pair)]
    signer = Signer(HOST)
    outputs = {signer.sign(MESSAGES["plain"], requests) for _ in range(100)}
    assert len(outputs) == 1 and sorted(counted) == ["ed1", "rsa1"]
    assert signer.signatures_made == 2
    assert verify_each(outputs.pop(), published.dnsfunc) == [True, True]


def test_100_recipients_in_threads_are_signed_once(counted: list[str], rsa_pair: KeyPair,
                                                   ed_pair: KeyPair, published: Published) -> None:
    requests = [make_request(published, rsa_pair), make_request(published, ed_pair)]
    message = big_message()[:1_000_000]  # large enough that the threads overlap while it is signed
    signer = Signer(HOST)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        outputs = set(pool.map(lambda _: signer.sign(message, requests), range(100)))
    assert len(outputs) == 1 and sorted(counted) == ["ed1", "rsa1"]


def test_keys_are_not_parsed_again_and_a_body_is_canonicalized_once(rsa_pair: KeyPair, ed_pair: KeyPair,
                                                                    published: Published,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # dkimpy's sign would parse the PEM (in Python) for every signature: the key read at start-up
    # signs instead.  Two signatures of a message, and two messages that differ only in their
    # headers (a campaign's copies for two recipients), canonicalize the body once.
    def no_parsing(*args: Any) -> Any:
        raise AssertionError("dkimpy parsed the private key")

    monkeypatch.setattr(dkim, "parse_pem_private_key", no_parsing)
    bodies: list[bytes] = []
    original = dkim.CanonicalizationPolicy.canonicalize_body

    def counting(self: Any, body: bytes) -> bytes:
        bodies.append(body)
        return original(self, body)

    monkeypatch.setattr(dkim.CanonicalizationPolicy, "canonicalize_body", counting)
    requests = [make_request(published, rsa_pair), make_request(published, ed_pair)]
    signer = Signer(HOST)
    first = signer.sign(MESSAGES["plain"], requests)
    second = signer.sign(MESSAGES["plain"].replace(b"To: Bob", b"To: Carol"), requests)
    simple = make_request(published, rsa_pair, selector="rsa2", canonicalization="relaxed/simple")
    third = signer.sign(MESSAGES["plain"], [simple])
    assert len(bodies) == 2  # once for relaxed, once more for the simple body canonicalization
    assert verify_each(first, published.dnsfunc) == [True, True]
    assert verify_each(second, published.dnsfunc) == [True, True]
    assert verify_each(third, published.dnsfunc) == [True]


def test_signed_if_cached_answers_only_from_the_cache(counted: list[str], rsa_pair: KeyPair,
                                                       published: Published) -> None:
    requests = [make_request(published, rsa_pair)]
    signer = Signer(HOST)
    assert signer.signed_if_cached(MESSAGES["plain"], requests) is None and counted == []
    signed = signer.sign(MESSAGES["plain"], requests)
    assert signer.signed_if_cached(MESSAGES["plain"], requests) == signed and counted == ["rsa1"]
    assert signer.signed_if_cached(MESSAGES["plain"], requests, f"{HOST}; spf=pass") is None
    assert signer.signed_if_cached(MESSAGES["plain"], []) == MESSAGES["plain"]


def test_a_changed_message_old_entry_or_full_cache_signs_again(counted: list[str], rsa_pair: KeyPair,
                                                               published: Published) -> None:
    request = [make_request(published, rsa_pair)]
    now = [1000.0]
    signer = Signer(HOST, cache_size=2, max_age=600, clock=lambda: now[0])
    a, b, c = (MESSAGES["plain"].replace(b"Hello Bob", x) for x in (b"A", b"B", b"C"))
    signer.sign(a, request)
    signer.sign(a.replace(b"To: Bob", b"To: Carol"), request)  # a header edit per recipient
    assert len(counted) == 2
    now[0] += 601
    signer.sign(a, request)
    assert len(counted) == 3
    signer.sign(b, request)
    signer.sign(c, request)  # evicts a (least recently used)
    signer.sign(c, request)
    assert len(counted) == 5
    signer.sign(a, request)
    assert len(counted) == 6


def test_a_cached_signature_is_not_reused_past_half_its_validity(counted: list[str], rsa_pair: KeyPair,
                                                                 published: Published) -> None:
    now = [1000.0]
    signer = Signer(HOST, clock=lambda: now[0])
    request = [make_request(published, rsa_pair, expire=100)]
    signer.sign(MESSAGES["plain"], request)
    now[0] += 40
    signer.sign(MESSAGES["plain"], request)
    now[0] += 20
    signer.sign(MESSAGES["plain"], request)
    assert len(counted) == 2


# --- ARC ---------------------------------------------------------------------------------------

def arc_results(message: bytes, published: Published) -> tuple[bytes, list[dict], str]:
    return dkim.arc_verify(message, dnsfunc=published.dnsfunc)


def test_arc_seal_of_the_inbound_results_validates(rsa_pair: KeyPair, published: Published) -> None:
    message = crlf(f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=alice@example.org\n").decode()
    message = crlf(message + MESSAGES["plain"].decode())
    request = make_request(published, rsa_pair, arc=True)
    signed = Signer(HOST).sign(message, [request])
    assert signed.startswith(b"ARC-Seal: i=1; cv=none")
    cv, results, _ = arc_results(signed, published)
    assert cv == b"pass", results
    assert b"spf=pass" in results[0]["aar-value"]
    # The header the message carries wins over results handed in (they would say the same twice).
    again = Signer(HOST).sign(message, [request], f"{HOST}; dkim=pass header.d=example.org")
    assert b"dkim=pass" not in arc_results(again, published)[1][0]["aar-value"]
    assert verify_each(signed, published.dnsfunc) == [True]  # the DKIM signature under the ARC set


def test_arc_seal_with_results_given_or_none(rsa_pair: KeyPair, published: Published) -> None:
    request = make_request(published, rsa_pair, arc=True, dkim=False)
    given = Signer(HOST).sign(MESSAGES["plain"], [request], f"{HOST}; dkim=pass header.d=example.org")
    assert dkim_headers(given) == []
    cv, results, _ = arc_results(given, published)
    assert cv == b"pass" and b"dkim=pass" in results[0]["aar-value"]
    assert b"Authentication-Results: " + HOST.encode() not in given  # input to the seal, not added
    nothing = Signer(HOST).sign(MESSAGES["plain"], [request])
    assert arc_results(nothing, published)[0] == b"pass"
    with pytest.raises(SigningError, match="not mx.example.org's"):
        Signer(HOST).sign(MESSAGES["plain"], [request], "other.example; spf=pass")


def test_arc_chain_of_two_hops_validates(rsa_pair: KeyPair, published: Published) -> None:
    first = Signer("mx1.example.org").sign(MESSAGES["plain"], [make_request(published, rsa_pair, arc=True)])
    relayed = crlf("Authentication-Results: mx2.example.net; arc=pass; dkim=pass header.d=example.org\n") + first
    second = make_request(published, rsa_pair, domain="example.net", arc=True, dkim=False)
    sealed = Signer("mx2.example.net").sign(relayed, [second])
    assert sealed.startswith(b"ARC-Seal: i=2; cv=pass")
    cv, results, _ = arc_results(sealed, published)
    assert cv == b"pass" and [r["instance"] for r in results] == [2, 1]


def test_arc_refuses_what_it_cannot_seal_truthfully(rsa_pair: KeyPair, ed_pair: KeyPair,
                                                    published: Published) -> None:
    first = Signer("mx1.example.org").sign(MESSAGES["plain"], [make_request(published, rsa_pair, arc=True)])
    second = make_request(published, rsa_pair, domain="example.net", arc=True)
    with pytest.raises(SigningError, match="no arc= result"):
        Signer("mx2.example.net").sign(first, [second])
    with pytest.raises(SigningError, match="ARC needs an RSA key"):
        Signer(HOST).sign(MESSAGES["plain"], [make_request(published, ed_pair, arc=True)])
    with pytest.raises(SigningError, match="more than one ARC seal"):
        Signer(HOST).sign(MESSAGES["plain"], [make_request(published, rsa_pair, arc=True),
                                              make_request(published, rsa_pair, selector="r2", arc=True)])


# --- the keys file -------------------------------------------------------------------------------

@pytest.fixture
def keydir(tmp_path: Any, rsa_pair: KeyPair, ed_pair: KeyPair) -> Any:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "rsa.pem").write_bytes(rsa_pair.private_pem)
    (tmp_path / "keys" / "ed.pem").write_bytes(ed_pair.private_pem)
    (tmp_path / "keys" / "short.pem").write_bytes(SHORT_RSA)
    (tmp_path / "keys" / "garbage.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(rsa_pair.private_pem, None)
    (tmp_path / "keys" / "encrypted.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return tmp_path


GOOD_KEYS = """\
# keys of example.org
[[key]]
domain = "example.org"
selector = "ed2026"
file = "keys/ed.pem"
algorithm = "ed25519-sha256"

[[key]]
domain = "example.org"
selector = "rsa2026"
file = "keys/rsa.pem"
algorithm = "rsa-sha256"
headers = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
canonicalization = "relaxed/simple"
arc = true

[[key]]
domain = "例子.测试"
selector = "idn"
file = "keys/rsa.pem"
"""


def test_keys_file_chooses_the_from_domain_keys(keydir: Any, published: Published) -> None:
    path = keydir / "dkim.toml"
    path.write_text(GOOD_KEYS)
    table = load_keys_file(str(path))
    chosen = table.for_message(MESSAGES["plain"], relayed=True)
    assert [(r.selector, r.algorithm) for r in chosen] == [("rsa2026", RSA), ("ed2026", ED25519)]
    rsa_request = chosen[0]
    assert rsa_request.arc and rsa_request.canonicalization == "relaxed/simple"
    assert rsa_request.headers == ("from", "to", "subject", "date", "message-id", "mime-version", "content-type")
    assert chosen[1].headers is None and chosen[1].canonicalization == "relaxed/relaxed" and not chosen[1].arc
    # DMARC relaxed alignment: a subdomain's From takes the parent's keys; strangers get none.
    assert table.for_domain("News.Example.ORG.") == chosen
    # Mail this host originates is signed, not sealed: arc = true is for relayed mail.
    assert [(r.dkim, r.arc) for r in table.for_message(MESSAGES["plain"])] == [(True, False), (True, False)]
    assert table.for_domain("example.com") == () and table.for_domain("org") == ()
    assert table.for_message(b"Subject: no from\r\n\r\nx\r\n") == ()
    # A From in Unicode finds the key configured in Unicode (compared as A-labels).
    assert [r.selector for r in table.for_domain("xn--fsqu00a.xn--0zwm56d")] == ["idn"]
    for r in chosen:
        published.add(r.domain, r.selector, r.key)
    signed = Signer(HOST).sign(MESSAGES["plain"], chosen)
    assert verify_each(signed, published.dnsfunc) == [True, True]
    assert arc_results(signed, published)[0] == b"pass"


def test_from_domain() -> None:
    assert from_domain(MESSAGES["plain"]) == "example.org"
    assert from_domain(MESSAGES["smtputf8"]) == "example.org"
    assert from_domain(crlf('From: "a@b.example, x" <real@sender.example>,\n other@c.example\n\nx\n')) == "sender.example"
    assert from_domain(crlf("From: undisclosed\n\nx\n")) is None


KEY = '[[key]]\ndomain = "example.org"\nselector = "s1"\nfile = "keys/rsa.pem"\n'


@pytest.mark.parametrize("text, line, match", [
    ('[[key]\ndomain = "x"\n', 1, "not valid TOML"),
    ('title = "keys"\n' + KEY, 1, "unknown table or key 'title'"),
    ("# nothing\n", None, "no \\[\\[key\\]\\] tables"),
    (KEY + '\n[[key]]\ndomain = "example.net"\nfile = "keys/rsa.pem"\n', 6, "key #2: selector is missing"),
    (KEY + 'colour = "blue"\n', 5, "unknown field 'colour'"),
    (KEY.replace('"example.org"', '"bad domain"'), 2, "domain: expected a domain name"),
    (KEY.replace('"s1"', '"s 1"'), 3, "selector: expected"),
    (KEY + 'algorithm = "rsa-sha1"\n', 5, "algorithm: expected one of rsa-sha256, ed25519-sha256"),
    (KEY + 'algorithm = "ed25519-sha256"\n', 5, "holds a rsa-sha256 key"),
    (KEY + 'canonicalization = "relaxed"\n', 5, "canonicalization: expected one of"),
    (KEY + 'headers = ["to", "subject"]\n', 5, "'from' must be among the signed headers"),
    (KEY + 'headers = ["from", "received"]\n', 5, "'received' must not be signed"),
    (KEY + 'arc = "yes"\n', 5, "arc: expected true or false"),
    (KEY.replace("rsa.pem", "ed.pem") + "arc = true\n", 5, "arc = true needs an RSA key"),
    (KEY.replace('"keys/rsa.pem"', "5"), 4, "file: expected a path, got 5"),
    (KEY.replace("rsa.pem", "missing.pem"), 4, "cannot read the key file .*missing.pem: No such file"),
    (KEY.replace("rsa.pem", "garbage.pem"), 4, "garbage.pem: not a readable private key"),
    (KEY.replace("rsa.pem", "short.pem"), 4, "short.pem: RSA key of 768 bits is too short: at least 1024"),
    (KEY.replace("rsa.pem", "encrypted.pem"), 4, "encrypted.pem: the key is encrypted"),
    (KEY + "\n" + KEY.replace("example.org", "EXAMPLE.org."), 6, "key #2 .*a second key with this domain and selector"),
    (KEY + "arc = true\n\n" + KEY.replace("s1", "s2") + "arc = true\n", 7, "key #2 .*arc = true on a second key"),
])
def test_keys_file_errors_name_file_and_line(keydir: Any, text: str, line: int | None, match: str) -> None:
    path = keydir / "dkim.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_keys_file(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:" if line else f"{path}:"), message
    assert re.search(match, message), message


def test_an_unreadable_keys_file_is_named(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path}/absent.toml: cannot read the DKIM keys file"):
        load_keys_file(str(tmp_path / "absent.toml"))


def test_dkimpy_seed_files_are_keys_too(ed_pair: KeyPair) -> None:
    key = serialization.load_pem_private_key(ed_pair.private_pem, None)
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    assert read_private_key(base64.b64encode(seed) + b"\n") == read_private_key(ed_pair.private_pem)
    with pytest.raises(KeyFormatError, match="not a readable private key"):
        read_private_key(b"c2hvcnQ=")
    with pytest.raises(KeyFormatError, match="not a readable private key"):
        read_private_key(b"not base64 at all!")


def test_base64_der_keys_without_pem_lines(rsa_pair: KeyPair) -> None:
    key = serialization.load_pem_private_key(rsa_pair.private_pem, None)
    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, form, serialization.NoEncryption())
        pasted = base64.encodebytes(der)  # in lines of 76, as copied from a PEM file
        assert read_private_key(pasted) == read_private_key(rsa_pair.private_pem)


# --- the dkim property ---------------------------------------------------------------------------

def test_dkim_property_object_and_list(rsa_pair: KeyPair, ed_pair: KeyPair, published: Published) -> None:
    one = parse_dkim_property({"domain": "example.org", "selector": "rsa1", "key": rsa_pair.private_pem.decode()})
    assert len(one) == 1 and one[0].dkim and not one[0].arc and one[0].canonicalization == "relaxed/relaxed"
    both = parse_dkim_property([
        {"domain": "example.org", "selector": "rsa1", "key": rsa_pair.private_pem.decode(),
         "headers": ["List-Unsubscribe"], "canonicalization": "simple/simple", "expire": "86400",
         "protocols": ["dkim", "arc"]},
        {"domain": "example.org", "selector": "ed1", "key": ed_pair.private_pem.decode(), "headers": "list-id:x-campaign"},
    ])
    assert [r.algorithm for r in both] == [RSA, ED25519]
    assert both[0].extra_headers == ("list-unsubscribe",) and both[0].expire == 86400 and both[0].arc
    assert both[1].extra_headers == ("list-id", "x-campaign") and not both[1].arc
    for r in both:
        published.add(r.domain, r.selector, r.key)
    signed = Signer(HOST).sign(MESSAGES["plain"], both)
    assert verify_each(signed, published.dnsfunc) == [True, True]
    assert arc_results(signed, published)[0] == b"pass"


@pytest.mark.parametrize("value, match", [
    ("example.org", r"^dkim: expected an object, got str"),
    ([], "an empty list"),
    ({"domain": "example.org", "selector": "s"}, "^dkim: key is missing"),
    ([{"selector": "s", "key": "K"}], r"^dkim\[0\]: domain is missing"),
    ({"domain": "example.org", "selector": "s", "key": "K", "algo": "x"}, "unknown field\\(s\\) algo"),
    ({"domain": "example.org", "selector": "s", "key": "not a key"}, "key: not a readable private key"),
    ({"domain": "example.org", "selector": "s", "key": SHORT_RSA.decode()}, "key: RSA key of 768 bits is too short"),
    ({"domain": "example.org", "selector": "s", "key": "K", "protocols": ["dkim", "spf"]}, "protocols: expected"),
    ({"domain": "example.org", "selector": "s", "key": "K", "protocols": []}, "protocols: expected"),
    ({"domain": "example.org", "selector": "s", "key": "K", "expire": -5}, "expire: expected a number of seconds"),
    ({"domain": "example.org", "selector": "s", "key": "K", "expire": True}, "expire: expected"),
    ({"domain": "example.org", "selector": "s", "key": "K", "headers": ["bcc"]}, "'bcc' must not be signed"),
    ({"domain": "example.org", "selector": "s", "key": "K", "canonicalization": "loose"}, "canonicalization: expected"),
    ({"domain": "example.org", "selector": "s", "key": 42}, "key: expected the private key as PEM text"),
])
def test_dkim_property_errors(value: Any, match: str) -> None:
    with pytest.raises(DkimPropertyError, match=match):
        parse_dkim_property(value)


def test_dkim_property_arc_rules(rsa_pair: KeyPair, ed_pair: KeyPair) -> None:
    ed = {"domain": "example.org", "selector": "s", "key": ed_pair.private_pem.decode(), "protocols": ["arc"]}
    with pytest.raises(DkimPropertyError, match="ARC needs an RSA key"):
        parse_dkim_property(ed)
    rsa = {"domain": "example.org", "selector": "s", "key": rsa_pair.private_pem.decode(), "protocols": ["arc"]}
    with pytest.raises(DkimPropertyError, match="more than one object asks for ARC"):
        parse_dkim_property([rsa, dict(rsa, selector="t")])


def test_the_property_wins_over_the_keys_file(keydir: Any, ed_pair: KeyPair) -> None:
    path = keydir / "dkim.toml"
    path.write_text(GOOD_KEYS)
    table = load_keys_file(str(path))
    prop = {"domain": "example.org", "selector": "prop", "key": ed_pair.private_pem.decode()}
    assert [r.selector for r in signing_requests(prop, MESSAGES["plain"], table)] == ["prop"]
    assert [(r.selector, r.arc) for r in signing_requests(None, MESSAGES["plain"], table)] == [
        ("rsa2026", False), ("ed2026", False)]
    assert [(r.selector, r.arc) for r in signing_requests(None, MESSAGES["plain"], table, relayed=True)] == [
        ("rsa2026", True), ("ed2026", False)]
    assert signing_requests(None, MESSAGES["plain"], None) == ()


# --- key generation ---------------------------------------------------------------------------

def test_generated_keys_publish_the_right_records(rsa_pair: KeyPair, ed_pair: KeyPair) -> None:
    assert rsa_pair.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    p = rsa_pair.record.split("p=")[1]
    public = serialization.load_der_public_key(base64.b64decode(p))
    assert public.key_size == 2048 and rsa_pair.record.startswith("v=DKIM1; k=rsa; ")
    # RFC 8463: p= is the raw 32-byte Ed25519 key.
    raw = base64.b64decode(ed_pair.record.split("p=")[1])
    private = serialization.load_pem_private_key(ed_pair.private_pem, None)
    assert raw == private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert ed_pair.record.startswith("v=DKIM1; k=ed25519; ")
    with pytest.raises(ValueError, match="too short"):
        generate_key_pair(RSA, 768)
    with pytest.raises(ValueError, match="algorithm"):
        generate_key_pair("dsa")


def test_zone_entry_splits_long_records(rsa_pair: KeyPair) -> None:
    entry = zone_entry("example.org", "s1", rsa_pair.record)
    assert entry.startswith("s1._domainkey.example.org. 3600 IN TXT ( ")
    strings = re.findall(r'"([^"]*)"', entry)
    assert len(strings) > 1 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == rsa_pair.record


def test_write_key_pair_writes_a_private_file_once(tmp_path: Any, published: Published) -> None:
    path = tmp_path / "ed.pem"
    entry = write_key_pair(str(path), "example.org", "ed9", ED25519)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = read_private_key(path.read_bytes())
    assert "".join(re.findall(r'"([^"]*)"', entry)) == key.public_record
    with pytest.raises(FileExistsError):
        write_key_pair(str(path), "example.org", "ed9", ED25519)
    published.records["ed9._domainkey.example.org"] = key.public_record
    signed = Signer(HOST).sign(MESSAGES["plain"], [SigningRequest("example.org", "ed9", key)])
    assert verify_each(signed, published.dnsfunc) == [True]


def test_mqmta_dkim_keygen(tmp_path: Any, capsys: pytest.CaptureFixture[str], published: Published,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mqtwisted.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["dkim", "keygen", "--domain", "example.org", "--selector", "ed7", "--algorithm", ED25519]) == 0
    out, err = capsys.readouterr()
    assert "wrote example.org.ed7.pem" in err
    key = read_private_key((tmp_path / "example.org.ed7.pem").read_bytes())
    assert out.startswith("ed7._domainkey.example.org. 3600 IN TXT")
    assert "".join(re.findall(r'"([^"]*)"', out)) == key.public_record
    published.records["ed7._domainkey.example.org"] = key.public_record
    signed = Signer(HOST).sign(MESSAGES["plain"], [SigningRequest("example.org", "ed7", key)])
    assert verify_each(signed, published.dnsfunc) == [True]
    assert main(["dkim", "keygen", "--domain", "example.org", "--selector", "r", "-o", "rsa.pem"]) == 0
    assert read_private_key((tmp_path / "rsa.pem").read_bytes()).bits == 2048
    with pytest.raises(SystemExit, match="rsa.pem: .*File exists"):
        main(["dkim", "keygen", "--domain", "example.org", "--selector", "r", "-o", "rsa.pem"])
    with pytest.raises(SystemExit, match="too short"):
        main(["dkim", "keygen", "--domain", "example.org", "--selector", "r", "--bits", "512", "-o", "short.pem"])
    assert not (tmp_path / "short.pem").exists()


def test_signing_imports_no_twisted() -> None:
    code = ("import sys, mqtwisted.signing; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'pika') "
            "or m.startswith(('mqtwisted.smtp', 'mqtwisted.queue', 'mqtwisted.delivery'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- keys served by a DNS zone on loopback; a second verifier -------------------------------------

def zone_dnsfunc(port: int) -> Callable[..., bytes | None]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        name = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(name, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as e:
            raise dkim.DnsTimeoutError(str(e)) from e
        return b"".join(answer[0].strings)

    return get_txt


# Mail::DKIM with its resolver pointed at the zone; prints the verdict on every signature.
MAIL_DKIM = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::ARC::Verifier; use Net::DNS::Resolver;
my ($port, $mode) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port,
    recurse => 0, udp_timeout => 5, tcp_timeout => 5));
local $/; my $text = <STDIN>; $text =~ s/\r?\n/\r\n/g;
my $v = $mode eq 'arc' ? Mail::DKIM::ARC::Verifier->new() : Mail::DKIM::Verifier->new();
$v->PRINT($text); $v->CLOSE;
print "result ", $v->result, "\n";
if ($mode ne 'arc') { print "signature ", $_->algorithm, " ", $_->result, "\n" for $v->signatures; }
"""


def mail_dkim_available() -> bool:
    perl = shutil.which("perl")
    if perl is None:
        return False
    check = subprocess.run([perl, "-MMail::DKIM::ARC::Verifier", "-e1"],
                           capture_output=True)
    return check.returncode == 0


def mail_dkim(message: bytes, port: int, mode: str = "dkim") -> list[str]:
    result = subprocess.run(["perl", "-e", MAIL_DKIM, str(port), mode], input=message,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


@pytest.fixture
def zone_keys(rsa_pair: KeyPair, ed_pair: KeyPair) -> Any:
    published = Published()
    requests = {c: [make_request(published, rsa_pair, canonicalization=c),
                    make_request(published, ed_pair, canonicalization=c)] for c in CANONICALIZATIONS}
    arc = make_request(published, rsa_pair, selector="arc1", arc=True, dkim=False)
    zone = DNSZone(published.zone())
    zone.start()
    yield zone, requests, arc
    pytest_twisted.blockon(zone.stop())


@pytest_twisted.ensureDeferred
async def test_signatures_verify_with_keys_from_the_dns_zone(zone_keys: Any) -> None:
    zone, requests, arc = zone_keys
    dnsfunc = zone_dnsfunc(zone.port)
    signer = Signer(HOST)
    for name, message in MESSAGES.items():
        for canonicalization, pair in requests.items():
            signed = signer.sign(message, pair)
            assert await in_thread(verify_each, signed, dnsfunc) == [True, True], (name, canonicalization)
    sealed = signer.sign(MESSAGES["8bit"], [arc])
    cv, results, reason = await in_thread(dkim.arc_verify, sealed, dnsfunc=dnsfunc)
    assert cv == b"pass", reason
    assert ("arc1._domainkey.example.org", 16) in zone.resolver.queries


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_second_verifier_mail_dkim_agrees(zone_keys: Any) -> None:
    if not mail_dkim_available():
        pytest.skip("Perl's Mail::DKIM is not installed (Debian: libmail-dkim-perl)")
    zone, requests, arc = zone_keys
    signer = Signer(HOST)
    for name, message in [*MESSAGES.items(), ("10 MB attachment", big_message())]:
        for canonicalization in ("relaxed/relaxed", "simple/simple") if name == "10 MB attachment" else CANONICALIZATIONS:
            # Debian 12's Mail::DKIM predates Ed25519 (it says "unsupported algorithm"): RSA only.
            signed = signer.sign(message, requests[canonicalization][:1])
            lines = await in_thread(mail_dkim, signed, zone.port)
            assert lines == ["result pass", "signature rsa-sha256 pass"], (name, canonicalization, lines)
    tampered = signer.sign(MESSAGES["plain"], requests["relaxed/relaxed"][:1]).replace(b"Hello Bob", b"Hello Eve")
    assert (await in_thread(mail_dkim, tampered, zone.port))[0] == "result fail"
    sealed = signer.sign(MESSAGES["plain"], [arc], f"{HOST}; spf=pass smtp.mailfrom=example.org")
    assert await in_thread(mail_dkim, sealed, zone.port, "arc") == ["result pass"]


def opendkim_verdicts(message: bytes, port: int, workdir: Any) -> list[tuple[str, str]]:
    """OpenDKIM's own milter in test mode (``opendkim -t``): (algorithm, result) of each signature,
    keys looked up through its Unbound resolver, forwarded to the zone."""
    (workdir / "unbound.conf").write_text(
        'server:\n  do-not-query-localhost: no\n  module-config: "iterator"\n'
        f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{port}\n')
    (workdir / "opendkim.conf").write_text(
        f"Syslog no\nMode v\nResolverConfiguration {workdir / 'unbound.conf'}\n")
    (workdir / "message").write_bytes(message)
    result = subprocess.run(["opendkim", "-x", str(workdir / "opendkim.conf"), "-t", str(workdir / "message"), "-vvv"],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    # The Authentication-Results it would add, one "dkim=RESULT ... header.a=ALGORITHM" per signature.
    return [(a, r) for r, a in re.findall(r"\bdkim=(\w+).*?header\.a=([\w-]+)", result.stdout.decode(), re.S)]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_second_verifier_opendkim_agrees(zone_keys: Any, tmp_path: Any) -> None:
    if shutil.which("opendkim") is None:
        pytest.skip("OpenDKIM is not installed (Debian: opendkim)")
    zone, requests, _ = zone_keys
    signer = Signer(HOST)
    for name, message in [*MESSAGES.items(), ("10 MB attachment", big_message())]:
        for canonicalization in ("relaxed/relaxed", "simple/simple") if name == "10 MB attachment" else CANONICALIZATIONS:
            signed = signer.sign(message, requests[canonicalization])
            verdicts = await in_thread(opendkim_verdicts, signed, zone.port, tmp_path)
            assert verdicts == [(RSA, "pass"), (ED25519, "pass")], (name, canonicalization, verdicts)
    tampered = signer.sign(MESSAGES["plain"], requests["relaxed/relaxed"]).replace(b"Hello Bob", b"Hello Eve")
    assert await in_thread(opendkim_verdicts, tampered, zone.port, tmp_path) == [(RSA, "fail"), (ED25519, "fail")]
