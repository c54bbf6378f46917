"""Inbound authentication results (``--verify-inbound on``) with real parts: a twisted.names zone on
loopback serves SPF, DKIM key and DMARC records; smtplib sends from 127.0.0.x to an in-process MTA;
the documents it queued carry the ``auth`` property and the stored MIME the
``Authentication-Results`` header.  The fast tests at the top check the header handling alone.
"""

from __future__ import annotations

import email
import pickle
import re
import smtplib
import threading
from pathlib import Path
from typing import Any

import dkim
import pytest
import pytest_twisted
from twisted.internet import reactor

from mqtwisted.authcheck.dmarccheck import from_domains, organizational_domain
from mqtwisted.authcheck.header import claimed_by, stamp
from mqtwisted.authcheck.verifier import InboundVerifier
from mqtwisted.document import Document
from mqtwisted.signing import RSA, generate_key_pair, read_private_key
from mqtwisted.testing import start_mta
from tests.conftest import in_thread, wait_until
from tests.dnszone import DNSZone

HOST = "mx.test.example"

# -- the header, without the network ---------------------------------------------------------------


@pytest.mark.parametrize("value, claimed", [
    (b" mx.test.example; spf=pass smtp.mailfrom=a@b.example", "mx.test.example"),
    (b" (forged) MX.Test.Example 1;\r\n\tdkim=pass header.d=b.example", "mx.test.example"),
    (b" mx.test.example; !!not the syntax", "mx.test.example"),
    (b" mx.test.example; none", "mx.test.example"),
    (b" other.example; spf=fail smtp.mailfrom=a@b.example", "other.example"),
    (b" ", ""),
])
def test_the_authserv_id_a_field_claims(value: bytes, claimed: str) -> None:
    assert claimed_by(value) == claimed


def test_stamp_puts_ours_on_top_and_removes_only_fields_claiming_our_name() -> None:
    message = (b"Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=x@evil.example\r\n"
               b"Received: from a by b\r\n"
               b"authentication-results: (c) MX.TEST.EXAMPLE;\r\n\tdkim=pass header.d=evil.example\r\n"
               b"Authentication-Results: upstream.example; spf=fail smtp.mailfrom=x@evil.example\r\n"
               b"Subject: hi\r\n\r\n"
               b"Authentication-Results: mx.test.example; in the body, not a header\r\n")
    ours = b"Authentication-Results: mx.test.example;\r\n\tspf=none\r\n"
    out = stamp(message, ours, "MX.test.example")
    assert out == (ours + b"Received: from a by b\r\n"
                   b"Authentication-Results: upstream.example; spf=fail smtp.mailfrom=x@evil.example\r\n"
                   b"Subject: hi\r\n\r\nAuthentication-Results: mx.test.example; in the body, not a header\r\n")


def test_organizational_domains_come_from_the_public_suffix_list() -> None:
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("news.example.org.") == "example.org"
    assert organizational_domain("co.uk") == "co.uk"
    assert from_domains(b"From: A <a@News.Example.org>, b@example.org\r\nTo: x@y\r\n\r\nFrom: c@d.example\r\n") \
        == ["news.example.org", "example.org"]


def test_the_verifier_pickles_without_reactor_or_resolver() -> None:
    verifier = InboundVerifier(HOST, [("127.0.0.1", 53)], reactor=reactor, resolver=object())
    copy = pickle.loads(pickle.dumps(verifier))
    assert copy.servers == [("127.0.0.1", 53)] and copy.authserv_id == HOST
    assert copy.__dict__["_resolver"] is None and copy.__dict__["_reactor"] is None


# -- the real thing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"good": generate_key_pair(RSA), "other": generate_key_pair(RSA)}


@pytest.fixture(scope="module")
def zone(keys: dict[str, Any]) -> Any:
    z = DNSZone({
        "example.org": [("TXT", "v=spf1 ip4:127.0.0.5 -all"), ("TXT", "google-site-verification=x")],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject; sp=quarantine")],
        "s1._domainkey.example.org": [("TXT", keys["good"].record)],
        "mail.example.org": [("TXT", "v=spf1 include:_spf.example.org -all")],
        "_spf.example.org": [("TXT", "v=spf1 a:out.example.org mx:example.net -all")],
        "out.example.org": [("A", "127.0.0.8")],
        "example.net": [("MX", 10, "mx1.example.net")],
        "mx1.example.net": [("A", "127.0.0.9")],
        "soft.example": [("TXT", "v=spf1 ip4:127.0.0.5 ~all")],
        "nospf.example": [("A", "127.0.0.1")],
        "helo.example.org": [("TXT", "v=spf1 ip4:127.0.0.7 -all")],
        "strict.example": [("TXT", "v=spf1 -all")],
        "_dmarc.strict.example": [("TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")],
        "mail.strict.example": [("TXT", "v=spf1 ip4:127.0.0.5 -all")],
        "s1._domainkey.other.example": [("TXT", keys["other"].record)],
        "other.example": [("TXT", "v=spf1 ip4:127.0.0.5 -all")],
    }, servfail={"broken.example", "_dmarc.broken.example", "s9._domainkey.example.org"})
    z.start()
    yield z
    pytest_twisted.blockon(z.stop())


@pytest.fixture(scope="module")
def mta(zone: Any, tmp_path_factory: Any) -> Any:
    running = pytest_twisted.blockon(start_mta(
        str(tmp_path_factory.mktemp("verify")), delivery="off", verify_inbound="on", hostname=HOST,
        dns_server=f"127.0.0.1:{zone.port}"))
    yield running
    pytest_twisted.blockon(running.stop())


_counter = iter(range(1_000_000))
_lock = threading.Lock()


def message(from_: str = "Alice <alice@example.org>", body: str = "Hello.\r\n", extra: str = "") -> tuple[str, bytes]:
    with _lock:
        n = next(_counter)
    msgid = f"<auth{n}@test>"
    text = (f"{extra}From: {from_}\r\nTo: bob@example.com\r\nSubject: test {n}\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: {msgid}\r\n\r\n{body}")
    return msgid, text.encode()


def signed(keys: dict[str, Any], raw: bytes, domain: str = "example.org", key: str = "good",
           selector: str = "s1") -> bytes:
    secret = read_private_key(keys[key].private_pem).secret
    return dkim.sign(raw, selector.encode(), domain.encode(), secret,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw


def _send(port: int, ip: str, sender: str, raw: bytes, helo: str, rcpt: str = "bob@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, source_address=(ip, 0), timeout=30) as s:
        s.sendmail(sender, [rcpt], raw)


async def deliver(mta: Any, msgid: str, raw: bytes, *, ip: str = "127.0.0.5", sender: str = "alice@example.org",
                  helo: str = "client.test") -> tuple[dict[str, Any], email.message.Message, bytes]:
    """Send from ``ip``; the queued document (its ``auth``), its MIME parsed and as bytes."""
    await in_thread(_send, mta.port, ip, sender, raw, helo)
    docs = [d for d in await mta.documents("outbox") if d.get("message-id") == msgid]
    assert len(docs) == 1, msgid
    mime = Document.of(docs[0]).mime
    return docs[0]["auth"], email.message_from_bytes(mime), mime


def ours(parsed: email.message.Message) -> str:
    values = parsed.get_all("Authentication-Results") or []
    assert values, "no Authentication-Results"
    return " ".join(values[0].split())


@pytest_twisted.ensureDeferred
async def test_spf_dkim_dmarc_pass(mta: Any, keys: Any) -> None:
    msgid, raw = message()
    original = signed(keys, raw)
    auth, parsed, mime = await deliver(mta, msgid, original)
    assert mime.startswith(b"Authentication-Results: " + HOST.encode() + b";\r\n\t")
    header = ours(parsed)
    assert header.startswith(f"{HOST}; spf=pass smtp.mailfrom=alice@example.org;")
    b = auth["dkim"][0]["signature"]
    # A value with a tspecial (base64's "/" or "=") is written as a quoted string (RFC 8601 §2.2,
    # RFC 2045's token); which one a signature starts with depends on its time stamp.
    shown = b if re.fullmatch(r'[^\s()<>@,;:\\"/\[\]?=]+', b) else f'"{b}"'
    assert f"dkim=pass header.b={shown} header.d=example.org header.a=rsa-sha256 header.s=s1;" in header
    assert "dmarc=pass header.from=example.org policy.dmarc=reject;" in header
    assert header.endswith("arc=none")
    assert auth["authserv-id"] == HOST and " ".join(auth["header"].split()) == header
    assert auth["spf"] == {"result": "pass", "scope": "mailfrom", "identity": "alice@example.org",
                           "domain": "example.org", "ip": "127.0.0.5", "reason": auth["spf"]["reason"]}
    (sig,) = auth["dkim"]
    assert (sig["result"], sig["domain"], sig["selector"], sig["algorithm"]) == ("pass", "example.org", "s1", "rsa-sha256")
    assert auth["dmarc"] == {"result": "pass", "from": "example.org", "record": "example.org", "policy": "reject",
                             "disposition": "none", "aligned": ["dkim", "spf"], "reason": ""}
    assert auth["arc"]["result"] == "none"
    # The message itself is stored as it came, under our field.
    added = mime[: -len(original)]
    assert mime.endswith(original) and added.count(b"\r\n\t") == added.count(b"\r\n") - 1


@pytest_twisted.ensureDeferred
async def test_spf_fail_with_an_aligned_signature_still_passes_dmarc(mta: Any, keys: Any) -> None:
    msgid, raw = message()
    auth, parsed, _ = await deliver(mta, msgid, signed(keys, raw), ip="127.0.0.6")
    assert auth["spf"]["result"] == "fail" and "spf=fail smtp.mailfrom=alice@example.org" in ours(parsed)
    assert auth["dmarc"]["result"] == "pass" and auth["dmarc"]["aligned"] == ["dkim"]


@pytest_twisted.ensureDeferred
async def test_spf_softfail_and_none(mta: Any) -> None:
    msgid, raw = message(from_="x@soft.example")
    auth, parsed, _ = await deliver(mta, msgid, raw, ip="127.0.0.6", sender="x@soft.example")
    assert auth["spf"]["result"] == "softfail" and "spf=softfail" in ours(parsed)
    msgid, raw = message(from_="x@nospf.example")
    auth, parsed, _ = await deliver(mta, msgid, raw, sender="x@nospf.example")
    assert auth["spf"]["result"] == "none" and auth["dkim"] == [] and auth["dmarc"]["result"] == "none"
    assert "spf=none smtp.mailfrom=x@nospf.example; dkim=none; dmarc=none header.from=nospf.example" in ours(parsed)


@pytest_twisted.ensureDeferred
async def test_include_a_and_mx_mechanisms_are_looked_up_through_the_zone(mta: Any, zone: Any) -> None:
    for ip in ("127.0.0.8", "127.0.0.9"):
        msgid, raw = message(from_="n@news.example.org")
        auth, _, _ = await deliver(mta, msgid, raw, ip=ip, sender="bounce@mail.example.org")
        assert auth["spf"]["result"] == "pass", auth["spf"]
        # Relaxed alignment by organizational domain; the policy found there, sp= for a subdomain.
        assert auth["dmarc"] == {"result": "pass", "from": "news.example.org", "record": "example.org",
                                 "policy": "quarantine", "disposition": "none", "aligned": ["spf"], "reason": ""}
    asked = {name for name, _ in zone.resolver.queries}
    assert {"_spf.example.org", "out.example.org", "example.net", "mx1.example.net",
            "_dmarc.news.example.org"} <= asked


@pytest_twisted.ensureDeferred
async def test_dkim_fail_and_dmarc_fail(mta: Any, keys: Any) -> None:
    msgid, raw = message()
    tampered = signed(keys, raw).replace(b"Hello.", b"Hellp.")
    auth, parsed, _ = await deliver(mta, msgid, tampered, ip="127.0.0.6")
    (sig,) = auth["dkim"]
    assert sig["result"] == "fail" and "body hash" in sig["reason"]
    assert auth["dmarc"]["result"] == "fail" and auth["dmarc"]["disposition"] == "reject"
    header = ours(parsed)
    assert "dkim=fail" in header and "dmarc=fail" in header


@pytest_twisted.ensureDeferred
async def test_strict_alignment_and_an_unaligned_signature_fail_dmarc(mta: Any, keys: Any) -> None:
    # SPF passes for mail.strict.example and DKIM for other.example: neither is strict.example.
    msgid, raw = message(from_="a@strict.example")
    auth, _, _ = await deliver(mta, msgid, signed(keys, raw, "other.example", "other"), sender="b@mail.strict.example")
    assert auth["spf"]["result"] == "pass" and auth["dkim"][0]["result"] == "pass"
    assert auth["dmarc"]["result"] == "fail" and auth["dmarc"]["aligned"] == []


@pytest_twisted.ensureDeferred
async def test_an_empty_mail_from_checks_the_helo_name(mta: Any) -> None:
    msgid, raw = message(from_="postmaster@helo.example.org")
    auth, parsed, _ = await deliver(mta, msgid, raw, ip="127.0.0.7", sender="", helo="helo.example.org")
    assert auth["spf"]["scope"] == "helo" and auth["spf"]["result"] == "pass"
    assert "spf=pass smtp.helo=helo.example.org" in ours(parsed)


@pytest_twisted.ensureDeferred
async def test_dns_failures_are_temperrors_and_the_message_is_accepted(mta: Any, keys: Any) -> None:
    msgid, raw = message(from_="x@broken.example")
    auth, parsed, _ = await deliver(mta, msgid, signed(keys, raw, selector="s9"), sender="x@broken.example")
    assert auth["spf"]["result"] == "temperror"
    assert auth["dkim"][0]["result"] == "temperror" and "SERVFAIL" in auth["dkim"][0]["reason"]
    assert auth["dmarc"]["result"] == "temperror"
    assert "spf=temperror" in ours(parsed)
    msgid, raw = message()
    auth, _, _ = await deliver(mta, msgid, signed(keys, raw, selector="nokey"))
    assert auth["dkim"][0]["result"] == "permerror" and auth["dkim"][0]["reason"] == "no key for signature"


@pytest_twisted.ensureDeferred
async def test_spoofed_results_are_removed_others_kept(mta: Any, keys: Any) -> None:
    spoof = (f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=alice@example.org\r\n"
             f"Authentication-Results: (yes, us) {HOST.upper()};\r\n dkim=pass header.d=example.org\r\n"
             "Authentication-Results: upstream.example; spf=pass smtp.mailfrom=alice@example.org\r\n")
    msgid, raw = message(extra=spoof)
    auth, parsed, _ = await deliver(mta, msgid, raw, ip="127.0.0.6")
    values = [" ".join(v.split()) for v in parsed.get_all("Authentication-Results")]
    assert len(values) == 2 and values[1].startswith("upstream.example;")
    assert values[0].startswith(f"{HOST}; spf=fail") and auth["spf"]["result"] == "fail"


@pytest_twisted.ensureDeferred
async def test_a_large_spilled_message_is_verified_and_stamped(mta: Any, keys: Any) -> None:
    msgid, raw = message(body="x" * 998 + "\r\n" * 1 + ("y" * 76 + "\r\n") * 30000)
    auth, parsed, mime = await deliver(mta, msgid, signed(keys, raw))
    assert len(mime) > 2_000_000 and auth["dkim"][0]["result"] == "pass"
    assert mime.startswith(b"Authentication-Results: " + HOST.encode())


@pytest_twisted.ensureDeferred
async def test_off_by_default_adds_nothing(tmp_path: Path, zone: Any) -> None:
    plain = await start_mta(str(tmp_path), delivery="off", hostname=HOST, dns_server=f"127.0.0.1:{zone.port}")
    try:
        msgid, raw = message()
        await in_thread(_send, plain.port, "127.0.0.5", "alice@example.org", raw, "client.test")
        (doc,) = await plain.documents("outbox")
        assert "auth" not in doc and b"Authentication-Results" not in Document.of(doc).mime
    finally:
        await plain.stop()


@pytest_twisted.ensureDeferred
async def test_the_checks_run_off_the_reactor_thread(mta: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mqtwisted.authcheck import verifier

    threads_seen: list[threading.Thread] = []
    original = verifier.check_message

    def recording(*args: Any, **kw: Any) -> Any:
        threads_seen.append(threading.current_thread())
        return original(*args, **kw)

    monkeypatch.setattr(verifier, "check_message", recording)
    msgid, raw = message()
    auth, _, _ = await deliver(mta, msgid, raw)
    assert auth["spf"]["result"] == "pass"
    assert threads_seen and threading.main_thread() not in threads_seen


ARC_PLUGIN = '''
from mqtwisted import api as mq

KEY = {key!r}

def mq_version():
    return mq.MQ_API_VERSION

def mq_smtp_in_message(ctx, conn, message):
    mq.MQ_json(message)["dkim"] = {{"domain": "example.org", "selector": "s1", "key": KEY,
                                    "protocols": ["dkim", "arc"]}}
    return False
'''


@pytest_twisted.ensureDeferred
async def test_an_arc_seal_carries_the_inbound_results_and_validates(tmp_path: Path, zone: Any, keys: Any) -> None:
    from tests.smtppeers import ScriptedFactory
    from tests.test_dkim import zone_dnsfunc

    receiver = ScriptedFactory(name="mx.arc.example")
    port = reactor.listenTCP(0, receiver, interface="127.0.0.1")
    zone.resolver.records.update({"arc.example": [("MX", 10, "mx.arc.example")],
                                  "mx.arc.example": [("A", "127.0.0.1")]})
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "arcseal.py").write_text(ARC_PLUGIN.format(key=keys["good"].private_pem.decode()))
    sealing = await start_mta(str(tmp_path / "mta"), verify_inbound="on", hostname=HOST, delivery="on",
                              retry_interval="3600",
                              dns_server=f"127.0.0.1:{zone.port}", delivery_port=str(port.getHost().port),
                              plugin_directory=str(plugins))
    try:
        msgid, raw = message()
        original = signed(keys, raw)
        await in_thread(_send, sealing.port, "127.0.0.5", "alice@example.org", original, "client.test",
                        "carol@arc.example")
        await wait_until(lambda: receiver.messages, what="the sealed message delivered")
        sealed = receiver.messages[0]["body"]
        parsed = email.message_from_bytes(sealed)
        aar = " ".join(parsed["ARC-Authentication-Results"].split())
        assert aar.startswith(f"i=1; {HOST}; spf=pass smtp.mailfrom=alice@example.org;")
        assert "dkim=pass" in aar and "dmarc=pass header.from=example.org" in aar and aar.endswith("arc=none")
        cv, results, reason = await in_thread(dkim.arc_verify, sealed, dnsfunc=zone_dnsfunc(zone.port))
        assert cv == b"pass", reason
        # Both DKIM signatures verify too: the sender's and the one added on the way out.
        assert all(await in_thread(lambda: [dkim.DKIM(sealed).verify(idx=i, dnsfunc=zone_dnsfunc(zone.port))
                                            for i in range(2)]))
    finally:
        await sealing.stop()
        await port.stopListening()


def test_only_this_hosts_recorded_results_go_into_a_seal() -> None:
    from mqtwisted.delivery.signing import inbound_results
    from mqtwisted.document import OutgoingDocument

    header = f"{HOST}; spf=pass smtp.mailfrom=a@example.org; dkim=none; dmarc=none; arc=none"
    doc = OutgoingDocument({"auth": {"authserv-id": HOST, "header": header}})
    assert inbound_results(doc, HOST) == header
    assert inbound_results(doc, "other.example") is None
    assert inbound_results(OutgoingDocument({"auth": {"authserv-id": HOST, "header": "x; spf=pass"}}), HOST) is None
    assert inbound_results(OutgoingDocument({"auth": "not an object"}), HOST) is None
    assert inbound_results(OutgoingDocument({}), HOST) is None
