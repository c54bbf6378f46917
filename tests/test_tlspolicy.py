"""The TLS policies' pure parts, in memory: the MTA-STS TXT record and policy file, mx patterns,
TLSA matching (DANE-EE and DANE-TA) and PKIX checks on chains made by a test CA."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mqtwisted.tlspolicy import dane
from mqtwisted.tlspolicy.certs import Trust
from mqtwisted.tlspolicy.dane import TLSARecord
from mqtwisted.tlspolicy.mtasts import PolicyError, STSPolicy, mx_matches, parse_policy, parse_txt
from tests.tlsca import CA, self_signed

# -- MTA-STS -------------------------------------------------------------------------------------


def test_txt_record_gives_the_policy_id() -> None:
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["v=spf1 -all", "v=STSv1; id=x1"]) == "x1"
    assert parse_txt(["v=spf1 -all"]) is None
    assert parse_txt([]) is None
    assert parse_txt(["v=STSv10; id=x"]) is None  # not ours


@pytest.mark.parametrize("records, error", [
    (["v=STSv1; id=a", "v=STSv1; id=b"], "2 MTA-STS TXT records"),
    (["v=STSv1;"], "id must be"),
    (["v=STSv1; id=has-dash"], "id must be"),
    (["v=STSv1; id=" + "a" * 33], "id must be"),
])
def test_bad_txt_records(records: list[str], error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        parse_txt(records)


def test_policy_file() -> None:
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\nfoo: bar\r\n"
    policy = parse_policy(text)
    assert policy == STSPolicy("enforce", ("mail.example.com", "*.example.net"), 604800)
    assert parse_policy(policy.to_text()) == policy
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mode == "none"


@pytest.mark.parametrize("text, error", [
    ("mode: enforce\nmx: a.b\nmax_age: 1\n", "version must be STSv1"),
    ("version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n", "mode must be one of"),
    ("version: STSv1\nmode: enforce\nmx: a.b\n", "max_age must be"),
    ("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n", "max_age must be"),
    ("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n", "max_age must be"),
    ("version: STSv1\nmode: testing\nmax_age: 10\n", "needs at least one mx"),
    ("version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 10\n", "line 3: mx 'a..b'"),
    ("version: STSv1\nmode enforce\n", "line 2: expected 'key: value'"),
])
def test_bad_policy_files(text: str, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        parse_policy(text)


@pytest.mark.parametrize("pattern, host, match", [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.example.com.", True),
    ("mail.example.com", "mx.example.com", False),
    ("*.example.com", "mx1.example.com", True),
    ("*.example.com", "a.b.example.com", False),
    ("*.example.com", "example.com", False),
    ("*.example.com", "mx.example.com.evil.test", False),
    ("*.example.com", ".example.com", False),
])
def test_mx_patterns(pattern: str, host: str, match: bool) -> None:
    assert mx_matches(pattern, host) is match
    assert STSPolicy("enforce", ("other.test", pattern), 1).allows(host) is match


# -- PKIX ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


def trust_of(ca: CA, tmp_path) -> Trust:
    return Trust(ca.bundle(tmp_path / "ca.pem"))


def test_pkix_accepts_a_chain_to_the_ca_for_the_name(ca: CA, tmp_path) -> None:
    trust = trust_of(ca, tmp_path)
    leaf = ca.issue("mx.example.com", "*.mail.example.com")
    chain = [leaf.certificate, *leaf.chain]
    assert trust.problem(chain, ["mx.example.com"]) is None
    assert trust.problem(chain, ["a.mail.example.com"]) is None
    assert trust.problem(chain, ["other.test", "mx.example.com"]) is None


def test_pkix_refuses_another_name_a_self_signed_chain_and_another_ca(ca: CA, tmp_path) -> None:
    trust = trust_of(ca, tmp_path)
    leaf = ca.issue("mx.example.com")
    chain = [leaf.certificate, *leaf.chain]
    assert trust.problem(chain, ["mx.example.net"]) == "certificate is for mx.example.com, not mx.example.net"
    own = self_signed("mx.example.com")
    assert trust.problem([own.certificate], ["mx.example.com"]) == (
        "certificate chain not trusted: the certificate is self-signed")
    stranger = CA("another root").issue("mx.example.com")
    assert "certificate chain not trusted" in trust.problem([stranger.certificate, *stranger.chain], ["mx.example.com"])
    # Without the intermediate the leaf does not reach the root.
    assert "not trusted" in trust.problem([leaf.certificate], ["mx.example.com"])
    assert trust.problem([], ["mx.example.com"]) == "the server sent no certificate"


def test_pkix_checks_the_time(ca: CA, tmp_path) -> None:
    trust = trust_of(ca, tmp_path)
    leaf = ca.issue("mx.example.com")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=60)
    assert "not trusted" in trust.problem([leaf.certificate, *leaf.chain], ["mx.example.com"], later)


def test_the_system_trust_is_loaded_when_no_bundle_is_named(ca: CA) -> None:
    trust = Trust(None)
    assert len(trust.anchors) > 10  # Debian's ca-certificates
    leaf = ca.issue("mx.example.com")
    assert "not trusted" in trust.problem([leaf.certificate, *leaf.chain], ["mx.example.com"])
    assert trust.pem() is None


# -- DANE ----------------------------------------------------------------------------------------


def spki(cert) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_dane_ee_matches_the_key_or_the_certificate_with_no_name_or_ca(ca: CA) -> None:
    own = self_signed("anything.test")
    chain = [own.certificate]
    cert_der = own.certificate.public_bytes(Encoding.DER)
    for record in (
        TLSARecord(3, 1, 1, hashlib.sha256(spki(own.certificate)).digest()),
        TLSARecord(3, 0, 1, hashlib.sha256(cert_der).digest()),
        TLSARecord(3, 1, 2, hashlib.sha512(spki(own.certificate)).digest()),
        TLSARecord(3, 0, 0, cert_der),
    ):
        assert dane.problem([record], chain, ["mx.example.com"]) is None, record
    # Expired makes no difference to DANE-EE (RFC 7672 §3.1.1).
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    assert dane.problem([TLSARecord(3, 1, 1, hashlib.sha256(spki(own.certificate)).digest())], chain,
                        ["mx.example.com"], later) is None


def test_dane_ee_mismatch_names_the_records() -> None:
    own, other = self_signed("mx.example.com"), self_signed("mx.example.com")
    record = TLSARecord(3, 1, 1, hashlib.sha256(spki(other.certificate)).digest())
    why = dane.problem([record], [own.certificate], ["mx.example.com"])
    assert why is not None and why.startswith("no TLSA record matches") and record.data.hex() in why


def test_dane_ta_needs_the_anchor_in_the_chain_and_the_name(ca: CA) -> None:
    leaf = ca.issue("mx.example.com")
    chain = [leaf.certificate, *leaf.chain]
    intermediate = leaf.chain[0]
    ta = TLSARecord(2, 1, 1, hashlib.sha256(spki(intermediate)).digest())
    assert dane.problem([ta], chain, ["mx.example.com", "example.com"]) is None
    ta_full = TLSARecord(2, 0, 1, hashlib.sha256(intermediate.public_bytes(Encoding.DER)).digest())
    assert dane.problem([ta_full], chain, ["mx.example.com"]) is None
    # The recipient domain is a reference identifier too (RFC 7672 §3.2.2).
    domain_cert = ca.issue("example.com")
    assert dane.problem([ta], [domain_cert.certificate, *domain_cert.chain], ["mx.example.com", "example.com"]) is None
    why = dane.problem([ta], chain, ["mx.example.net"])
    assert why is not None and "certificate is for mx.example.com, not mx.example.net" in why
    # The anchor must be in the chain the server sent.
    assert dane.problem([ta], [leaf.certificate], ["mx.example.com"]) is not None
    # The root is not sent, so a TA record of the root is not found (no trust from elsewhere).
    root_ta = TLSARecord(2, 1, 1, hashlib.sha256(spki(ca.root.certificate)).digest())
    assert dane.problem([root_ta], chain, ["mx.example.com"]) is not None


def test_unusable_records_leave_only_mandatory_tls() -> None:
    own = self_signed("mx.example.com")
    unusable = [TLSARecord(1, 1, 1, b"x" * 32), TLSARecord(0, 0, 1, b"y" * 32), TLSARecord(3, 2, 1, b"z"),
                TLSARecord(3, 1, 9, b"z")]
    assert not any(r.usable for r in unusable)
    assert dane.problem(unusable, [own.certificate], ["mx.example.com"]) is None
    # One usable record among them decides.
    usable = TLSARecord(3, 1, 1, b"\0" * 32)
    assert dane.problem([*unusable, usable], [own.certificate], ["mx.example.com"]) is not None


def test_policy_cache_outlives_its_object_and_ignores_a_damaged_file(tmp_path, logged) -> None:
    from mqtwisted.tlspolicy.stsfetch import Cached, PolicyCache

    policy = STSPolicy("enforce", ("*.example.com",), 86400)
    PolicyCache(str(tmp_path)).put("example.com", Cached("id1", policy, 5000.0))
    assert PolicyCache(str(tmp_path)).get("example.com") == Cached("id1", policy, 5000.0)
    assert PolicyCache(str(tmp_path)).get("other.test") is None
    (tmp_path / "example.com.json").write_text('{"id": "id1", "policy": "version: STSv1\\nmode: bogus\\n"}')
    assert PolicyCache(str(tmp_path)).get("example.com") is None
    assert any("unreadable, ignored" in str(e.get("log_format")) for e in logged)
    # A domain that is no plain host name never names a path outside the directory.
    odd = PolicyCache(str(tmp_path)).path("../../etc/passwd")
    assert odd.startswith(str(tmp_path)) and "/../" not in odd
    assert PolicyCache(None).get("example.com") is None

