"""TLS policies on real loopback parts: a twisted.names zone that sets the AD bit for the names it
"validates", an HTTPS server for MTA-STS policies, SMTP receivers with certificates from a test CA
(made with ``cryptography``) or self-signed, and the delivery service between them."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.names import dns
from twisted.web import resource, server

from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.queue import Publication
from mqtwisted.tlspolicy.dnsquery import TLSA, LookupFailed, SecureLookup, tlsa_fields, txt_strings
from tests.conftest import wait_until
from tests.deliveryhelpers import doc
from tests.dnszone import DNSZone
from tests.memqueue import MemoryQueue
from tests.smtppeers import ScriptedFactory
from tests.tlsca import CA, Issued, self_signed

pytestmark = pytest.mark.slow


def spki_sha256(issued: Issued) -> str:
    key = issued.certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(key).hexdigest()


class Policies(resource.Resource):
    """``/.well-known/mta-sts.txt`` per Host header; ``served`` counts the fetches per host."""

    isLeaf = True

    def __init__(self, texts: dict[str, str]) -> None:
        super().__init__()
        self.texts = texts
        self.served: dict[str, int] = {}

    def render_GET(self, request: Any) -> bytes:
        host = (request.getHeader("host") or "").split(":")[0]
        text = self.texts.get(host)
        if request.path != b"/.well-known/mta-sts.txt" or text is None:
            request.setResponseCode(404)
            return b"no policy"
        self.served[host] = self.served.get(host, 0) + 1
        request.setHeader("content-type", "text/plain; charset=utf-8")
        return text.encode()


def listen_same_port(factories: dict[str, Any]) -> tuple[int, list[Any]]:
    """Each factory on its loopback address, all on one port (delivery has one MX port)."""
    for _ in range(20):
        first_ip, *rest = factories
        first = reactor.listenTCP(0, factories[first_ip], interface=first_ip)
        port, ports = first.getHost().port, [first]
        try:
            for ip in rest:
                ports.append(reactor.listenTCP(port, factories[ip], interface=ip))
        except CannotListenError:
            for p in ports:
                p.stopListening()
            continue
        return port, ports
    raise RuntimeError("no port free on every address")


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "version: STSv1\n" + f"mode: {mode}\n" + "".join(f"mx: {m}\n" for m in mx) + f"max_age: {max_age}\n"


@pytest_twisted.ensureDeferred
async def test_lookups_ask_for_and_report_the_ad_bit() -> None:
    zone = DNSZone({
        "_mta-sts.a.test": [("TXT", "v=STSv1; id=1")],
        "_25._tcp.mx.a.test": [("TLSA", 3, 1, 1, "ab" * 32)],
        "_25._tcp.mx.b.test": [("TLSA", 3, 1, 1, "cd" * 32)],
        # Ten SHA-512 records do not fit in 512 bytes: the UDP answer is truncated, TCP asked.
        "_25._tcp.mx.big.test": [("TLSA", 3, 1, 2, f"{i:02x}" * 64) for i in range(10)],
    }, servfail={"_25._tcp.mx.c.test"}, authentic={"_25._tcp.mx.a.test", "_25._tcp.mx.big.test"})
    zone.start()
    try:
        lookup = SecureLookup([("127.0.0.1", zone.port)], timeout=(2,))
        txt = await lookup.lookup("_mta-sts.a.test", dns.TXT)
        assert txt_strings(txt) == ["v=STSv1; id=1"] and not txt.authentic
        signed = await lookup.lookup("_25._tcp.mx.a.test", TLSA)
        assert signed.authentic and tlsa_fields(signed) == [(3, 1, 1, bytes.fromhex("ab" * 32))]
        unsigned = await lookup.lookup("_25._tcp.mx.b.test", TLSA)
        assert not unsigned.authentic and tlsa_fields(unsigned) == [(3, 1, 1, bytes.fromhex("cd" * 32))]
        missing = await lookup.lookup("_25._tcp.mx.d.test", TLSA)
        assert missing.records == ()
        assert zone.tcp_queries == 0
        big = await lookup.lookup("_25._tcp.mx.big.test", TLSA)
        assert zone.tcp_queries == 1
        assert big.authentic and sorted(tlsa_fields(big)) == [(3, 1, 2, bytes([i]) * 64) for i in range(10)]
        with pytest.raises(LookupFailed, match="SERVFAIL"):
            await lookup.lookup("_25._tcp.mx.c.test", TLSA)
        assert zone.ad_asked and all(zone.ad_asked)  # RFC 6840 §5.7: every query asks for AD
    finally:
        await zone.stop()


class Net:
    """The zone, the policy server and the receivers of one test; ``service()`` delivers into it."""

    def __init__(self, tmp_path: Any, zone: DNSZone, receivers: dict[str, ScriptedFactory],
                 policies: dict[str, str], ca: CA) -> None:
        self.tmp_path, self.zone, self.receivers, self.ca = tmp_path, zone, receivers, ca
        self.policies = Policies(policies)
        self.ports: list[Any] = []

    def start(self) -> None:
        self.zone.start()
        self.smtp_port, self.ports = listen_same_port(self.receivers)
        web = self.ca.issue(*(self.policies.texts or ["mta-sts.none.test"]))
        self.https = reactor.listenSSL(0, server.Site(self.policies), web.server_options(), interface="127.0.0.1")
        self.ports.append(self.https)

    def options(self, **kw: Any) -> DeliveryOptions:
        base = dict(helo="mqmta.test", dns_server=f"127.0.0.1:{self.zone.port}", port=self.smtp_port,
                    mta_sts_port=self.https.getHost().port, tls_ca=self.ca.bundle(self.tmp_path / "ca.pem"),
                    data_dir=str(self.tmp_path / "data"), security="opportunistic", retry_interval=(3600,))
        return DeliveryOptions(**{**base, **kw})

    async def deliver(self, rcpts: list[str], **kw: Any) -> tuple[MemoryQueue, DeliveryService]:
        queue = MemoryQueue(reactor)
        svc = DeliveryService(queue, None, self.options(**kw))
        svc.startService()
        try:
            # "security=LEVEL:" in front of a recipient gives its message that security property.
            docs = [doc(r.partition(":")[2], security=r.partition(":")[0].removeprefix("security="))
                    if r.startswith("security=") else doc(r) for r in rcpts]
            await queue.publish([Publication("outbox", d) for d in docs])
            await wait_until(lambda: len(queue.docs("results")) + len(queue.docs("retry")) >= len(rcpts), 30,
                             "every message attempted")
        finally:
            await svc.stopService()
            svc.resolver.close()
            queue.stop()
        return queue, svc

    async def stop(self) -> None:
        for p in self.ports:
            await p.stopListening()
        await self.zone.stop()


def outcomes(queue: MemoryQueue) -> dict[str, dict[str, Any]]:
    """recipient -> its last attempt's record, with ``queue`` set to success or retry."""
    found = {}
    for role in ("success", "retry", "failure"):
        for d in queue.docs(role):
            found[d["recipient"]] = {**d["results"][-1], "queue": role}
    return found


MX_ZONE = {
    "good.test": [("MX", 10, "mx.good.test")], "mx.good.test": [("A", "127.0.0.11")],
    "plain.test": [("MX", 10, "mx.plain.test")], "mx.plain.test": [("A", "127.0.0.12")],
    "self.test": [("MX", 10, "mx.self.test")], "mx.self.test": [("A", "127.0.0.13")],
    "wrong.test": [("MX", 10, "mx.wrong.test")], "mx.wrong.test": [("A", "127.0.0.14")],
    "outside.test": [("MX", 10, "mx.good.test")],
    "testing.test": [("MX", 10, "mx.self.test")],
    "nopolicy.test": [("MX", 10, "mx.self.test")],
}


def receivers(ca: CA) -> dict[str, ScriptedFactory]:
    return {
        "127.0.0.11": ScriptedFactory(tls=ca.issue("mx.good.test").server_options()),
        "127.0.0.12": ScriptedFactory(),
        "127.0.0.13": ScriptedFactory(tls=self_signed("mx.self.test").server_options()),
        "127.0.0.14": ScriptedFactory(tls=ca.issue("elsewhere.test").server_options()),
    }


@pytest_twisted.ensureDeferred
async def test_mta_sts_enforce_testing_cache_and_refetch(tmp_path, logged) -> None:
    ca = CA()
    sts = {"good.test": policy("enforce", "*.good.test"), "plain.test": policy("enforce", "mx.plain.test"),
           "self.test": policy("enforce", "mx.self.test"), "wrong.test": policy("enforce", "mx.wrong.test"),
           "outside.test": policy("enforce", "mx.other.test"), "testing.test": policy("testing", "mx.self.test")}
    records = {name: list(rrs) for name, rrs in MX_ZONE.items()}
    for domain in sts:
        records[f"_mta-sts.{domain}"] = [("TXT", "v=STSv1; id=1")]
        records[f"mta-sts.{domain}"] = [("A", "127.0.0.1")]
    net = Net(tmp_path, DNSZone(records), receivers(ca), {f"mta-sts.{d}": t for d, t in sts.items()}, ca)
    net.start()
    try:
        rcpts = [f"u@{d}" for d in [*sts, "nopolicy.test"]]
        queue, _ = await net.deliver(rcpts)
        got = outcomes(queue)
        good = got["u@good.test"]
        assert (good["queue"], good["tls_policy"]) == ("success", "mta-sts")
        assert good["cipher"]["version"].startswith("TLS")
        assert net.receivers["127.0.0.11"].messages[0]["tls"] is True
        for rcpt, why in [
            ("u@plain.test", "server does not offer STARTTLS and the TLS policy (mta-sts) requires it"),
            ("u@self.test", "mta-sts: certificate chain not trusted: the certificate is self-signed"),
            ("u@wrong.test", "mta-sts: certificate is for elsewhere.test, not mx.wrong.test"),
            ("u@outside.test", "mta-sts: MX host mx.good.test matches no mx pattern of outside.test's policy"),
        ]:
            r = got[rcpt]
            assert (r["queue"], r["state"], r["result"], r["tls_policy"]) == ("retry", "starttls", "error", "mta-sts"), r
            assert r["description"].startswith(why), r
        assert net.receivers["127.0.0.12"].messages == [] and net.receivers["127.0.0.14"].messages == []
        testing = got["u@testing.test"]
        assert (testing["queue"], testing["tls_policy"]) == ("success", "mta-sts-testing")
        warned = [e for e in logged if "would be refused" in str(e.get("log_format"))]
        assert warned and warned[0]["host"] == "mx.self.test" and "not trusted" in warned[0]["why"]
        assert got["u@nopolicy.test"]["tls_policy"] == "opportunistic" and got["u@nopolicy.test"]["queue"] == "success"
        lines = [e["line"] for e in logged if e.get("tls_policy") == "mta-sts" and e.get("recipient") == "u@good.test"]
        assert lines and "(tls=mta-sts TLSv1" in lines[0]
        assert all(n == 1 for n in net.policies.served.values()), net.policies.served
        assert (tmp_path / "data" / "mta-sts" / "self.test.json").exists()

        # A restart: the cache is read from the data directory.  self.test publishes a new id but
        # its policy cannot be fetched (the cached one still applies); testing.test's new id
        # fetches a new policy (enforce now); good.test's unchanged id fetches nothing.
        net.zone.resolver.records["_mta-sts.self.test"] = [("TXT", "v=STSv1; id=2")]
        net.zone.resolver.records["_mta-sts.testing.test"] = [("TXT", "v=STSv1; id=2")]
        del net.policies.texts["mta-sts.self.test"]
        net.policies.texts["mta-sts.testing.test"] = policy("enforce", "mx.self.test")
        logged.clear()
        queue, _ = await net.deliver(["u@good.test", "u@self.test", "u@testing.test"])
        got = outcomes(queue)
        assert got["u@good.test"]["queue"] == "success"
        assert got["u@self.test"]["queue"] == "retry" and "not trusted" in got["u@self.test"]["description"]
        assert got["u@testing.test"]["queue"] == "retry" and got["u@testing.test"]["tls_policy"] == "mta-sts"
        assert net.policies.served == {**{f"mta-sts.{d}": 1 for d in sts}, "mta-sts.testing.test": 2}
        assert any("the cached one applies" in str(e.get("what")) and e.get("domain") == "self.test" for e in logged)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_dane_match_mismatch_servfail_no_ad_and_dane_over_mta_sts(tmp_path) -> None:
    ca = CA()
    own, stranger = self_signed("mx.dane.test"), self_signed("mx.dane.test")
    hosts = {"dane": ".21", "mismatch": ".21", "servfail": ".21", "noad": ".21", "both": ".21", "ta": ".22",
             "notls": ".23"}
    records: dict[str, list[tuple]] = {}
    for name, ip in hosts.items():
        records[f"{name}.test"] = [("MX", 10, f"mx.{name}.test")]
        records[f"mx.{name}.test"] = [("A", "127.0.0" + ip)]
    records["_mta-sts.both.test"] = [("TXT", "v=STSv1; id=1")]
    records["mta-sts.both.test"] = [("A", "127.0.0.1")]
    zone = DNSZone(records)
    net = Net(tmp_path, zone, {
        "127.0.0.21": ScriptedFactory(tls=own.server_options()),
        "127.0.0.22": ScriptedFactory(tls=ca.issue("mx.ta.test").server_options()),
        "127.0.0.23": ScriptedFactory(),
    }, {"mta-sts.both.test": policy("enforce", "mx.both.test")}, ca)
    net.start()
    try:
        port = net.smtp_port
        intermediate = Issued(ca.intermediate.certificate, None)
        tlsa = {
            "dane": [("TLSA", 3, 1, 1, spki_sha256(own))],
            "mismatch": [("TLSA", 3, 1, 1, spki_sha256(stranger))],
            "noad": [("TLSA", 3, 1, 1, spki_sha256(stranger))],
            "both": [("TLSA", 3, 1, 1, spki_sha256(own))],
            "ta": [("TLSA", 2, 1, 1, spki_sha256(intermediate))],
            "notls": [("TLSA", 3, 1, 1, spki_sha256(own))],
        }
        for name, rrs in tlsa.items():
            zone.resolver.records[f"_{port}._tcp.mx.{name}.test"] = rrs
            if name != "noad":
                zone.authentic.add(f"_{port}._tcp.mx.{name}.test")
        zone.resolver.servfail.add(f"_{port}._tcp.mx.servfail.test")
        queue, _ = await net.deliver([f"u@{name}.test" for name in hosts] + ["security=verified:v@dane.test"])
        got = outcomes(queue)
        # A message's own ``verified`` adds PKIX on top of DANE: the matching self-signed key is
        # not enough for it.
        verified = got["v@dane.test"]
        assert (verified["queue"], verified["state"], verified["tls_policy"]) == ("retry", "starttls", "dane")
        assert verified["description"] == "dane: certificate chain not trusted: the certificate is self-signed"
        for name in ("dane", "both", "ta"):
            r = got[f"u@{name}.test"]
            assert (r["queue"], r["tls_policy"]) == ("success", "dane"), r
            assert r["cipher"]["version"].startswith("TLS")
        mismatch = got["u@mismatch.test"]
        assert (mismatch["queue"], mismatch["state"], mismatch["tls_policy"]) == ("retry", "starttls", "dane")
        assert mismatch["description"].startswith("dane: no TLSA record matches the certificate chain")
        servfail = got["u@servfail.test"]
        assert (servfail["queue"], servfail["state"], servfail["tls_policy"]) == ("retry", "dns", "dane")
        assert servfail["description"].startswith(f"dane: TLSA lookup _{port}._tcp.mx.servfail.test failed (SERVFAIL)")
        notls = got["u@notls.test"]
        assert (notls["queue"], notls["state"]) == ("retry", "starttls")
        assert "the TLS policy (dane) requires it" in notls["description"]
        noad = got["u@noad.test"]
        assert (noad["queue"], noad["tls_policy"]) == ("success", "opportunistic")
        delivered = sorted(m["rcpt"][0].decode() for m in net.receivers["127.0.0.21"].messages)
        assert delivered == ["RCPT TO:<u@both.test>", "RCPT TO:<u@dane.test>", "RCPT TO:<u@noad.test>"]
        assert net.policies.served == {}  # DANE won: both.test's MTA-STS policy was never needed
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_twistd_mqmta_follows_mta_sts_in_its_delivery_process(tmp_path) -> None:
    # As an operator runs it: options on the command line, delivery in a worker process, the
    # policy cached in the data directory, the policy named in the log line.
    from tests.conftest import in_thread, send_mail
    from tests.realmta import MTAProcess, spool_documents

    ca = CA()
    sts = {"good.test": policy("enforce", "mx.good.test"), "self.test": policy("enforce", "mx.self.test")}
    records = {name: list(rrs) for name, rrs in MX_ZONE.items()}
    for domain in sts:
        records[f"_mta-sts.{domain}"] = [("TXT", "v=STSv1; id=1")]
        records[f"mta-sts.{domain}"] = [("A", "127.0.0.1")]
    net = Net(tmp_path, DNSZone(records), {k: v for k, v in receivers(ca).items() if k in ("127.0.0.11", "127.0.0.13")},
              {f"mta-sts.{d}": t for d, t in sts.items()}, ca)
    net.start()
    data = str(tmp_path / "mta")
    # A generous silence limit: a worker that starts slowly on a loaded machine is not replaced.
    mta = MTAProcess(data, "--delivery-processes=1", "--delivery-silence-limit=120", f"--dns-server=127.0.0.1:{net.zone.port}",
                     f"--delivery-port={net.smtp_port}", f"--mta-sts-port={net.https.getHost().port}",
                     f"--smtp-client-ca={ca.bundle(tmp_path / 'ca.pem')}", "--retry-interval=3600").start()
    try:
        await in_thread(send_mail, mta.port, rcpts=["u@good.test", "u@self.test"])

        def settled() -> bool:
            done = spool_documents(data, "results")
            waiting = [d for d in spool_documents(data, "outbox") if d.get("results")]
            return len(done) + len(waiting) >= 2

        await wait_until(settled, 120, "both messages attempted")
        (done,) = spool_documents(data, "success")
        assert done["recipient"] == "u@good.test" and done["results"][-1]["tls_policy"] == "mta-sts"
        (waiting,) = [d for d in spool_documents(data, "outbox") if d.get("results")]
        last = waiting["results"][-1]
        assert waiting["recipient"] == "u@self.test"
        assert (last["state"], last["tls_policy"]) == ("starttls", "mta-sts")
        assert last["description"] == "mta-sts: certificate chain not trusted: the certificate is self-signed"
        assert os.path.exists(os.path.join(data, "mta-sts", "good.test.json"))
        await wait_until(lambda: "(tls=mta-sts TLSv1" in mta.output(), 10, "the policy in the log line")
    finally:
        await in_thread(mta.stop)  # the receivers run on this reactor: the worker's QUIT needs them
        await net.stop()
