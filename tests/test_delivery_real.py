"""Delivery over real loopback sockets: a twisted.names zone for MX, Postfix's smtp-sink as the
receiver, the SQLite spool as the queue, and scripted servers with a self-signed certificate."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl, task

from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.queue import Publication
from tests.conftest import wait_until
from tests.deliveryhelpers import StaticResolver, doc
from tests.dnszone import DNSZone
from tests.memqueue import MemoryQueue
from tests.smtppeers import ScriptedFactory

pytestmark = pytest.mark.slow


def open_connections(svc: DeliveryService) -> int:
    return sum(len(d.runners) for d in svc.destinations.values())


@pytest_twisted.ensureDeferred
async def test_end_to_end_spool_dns_smtp_sink(tmp_path, smtp_sink: int) -> None:
    from mqtwisted.queue.spool import SpoolQueue

    zone = DNSZone({"example.com": [("MX", 10, "mx.example.com")], "mx.example.com": [("A", "127.0.0.1")]})
    zone.start()
    queue = SpoolQueue(str(tmp_path / "spool.db"))
    queue.start()
    n = 300
    # Distinct messages (a transaction each), so connections must be reused for them.
    await queue.publish([Publication("outbox", doc(f"u{i}@example.com", mime=f"Subject: {i}\r\n\r\nhello\r\n"))
                         for i in range(n)])
    svc = DeliveryService(queue, None, DeliveryOptions(helo="mqmta.test", dns_server=f"127.0.0.1:{zone.port}", port=smtp_sink, security="none"))
    svc.startService()
    try:
        await wait_until(lambda: queue.stats().addCallback(lambda s: s.get("success", 0) >= n), 60,
                         f"{n} delivered", step=0.1)
        stats = await queue.stats()
        assert stats.get("success") == n and stats.get("results") == n and stats.get("outbox", 0) == 0, stats
        results = await queue.list("success", limit=n)
        assert max(d["results"][0]["messages"] for _, d in results) > 1
        assert all(d["results"][0]["to"] == "127.0.0.1" for _, d in results)
    finally:
        await svc.stopService()
        await wait_until(lambda: open_connections(svc) == 0)
        svc.resolver.close()
        await queue.stop()
        await zone.stop()


def _tls_server(**kw) -> ScriptedFactory:
    cert = ssl.KeyPair.generate().selfSignedCert(1, CN="mx.example.com")
    return ScriptedFactory(tls=cert.options(), **kw)


async def _deliver_one(server: ScriptedFactory, security: str, **extra) -> MemoryQueue:
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    queue = MemoryQueue(reactor)
    resolver = StaticResolver({"example.com": [("mx.example.com", ["127.0.0.1"])]})
    svc = DeliveryService(queue, None, DeliveryOptions(helo="mqmta.test", port=port.getHost().port, security=security, **extra), resolver=resolver)
    svc.startService()
    try:
        await queue.publish([Publication("outbox", doc())])
        await wait_until(lambda: queue.docs("results") or queue.docs("retry"), 20)
    finally:
        await svc.stopService()
        await wait_until(lambda: open_connections(svc) == 0)
        await port.stopListening()
        queue.stop()
    return queue


@pytest_twisted.ensureDeferred
async def test_opportunistic_tls_with_self_signed_certificate() -> None:
    server = _tls_server()
    queue = await _deliver_one(server, "opportunistic")
    (res,) = queue.docs("success")
    cipher = res["results"][0]["cipher"]
    assert cipher["name"] and cipher["version"].startswith("TLS")
    assert server.messages[0]["tls"] is True


@pytest_twisted.ensureDeferred
async def test_verified_rejects_self_signed_certificate() -> None:
    server = _tls_server()
    queue = await _deliver_one(server, "verified")
    (retry,) = queue.docs("retry")
    r = retry["results"][0]
    assert r["state"] == "starttls" and r["result"] in ("lost", "error")
    assert server.messages == []


@pytest_twisted.ensureDeferred
async def test_required_without_starttls_fails_in_starttls() -> None:
    server = ScriptedFactory()
    queue = await _deliver_one(server, "required")
    (retry,) = queue.docs("retry")
    assert retry["results"][0]["state"] == "starttls"
    assert server.messages == []


@pytest_twisted.ensureDeferred
async def test_optional_falls_back_to_plaintext_when_tls_breaks() -> None:
    server = ScriptedFactory(extensions=("STARTTLS",), replies={"STARTTLS": ["454 4.7.0 TLS not available"]})
    queue = await _deliver_one(server, "optional")
    assert queue.docs("success")
    assert server.messages[0]["tls"] is False


@pytest_twisted.ensureDeferred
async def test_trickle_reuses_the_parked_connection_until_max_idle_time(smtp_sink: int) -> None:
    # The cause of slow relaying under a trickle: one new connection per message.  A message
    # that comes within max-idle-time rides the parked connection; after it, a new one opens.
    queue = MemoryQueue(reactor)
    svc = DeliveryService(queue, None, DeliveryOptions(helo="mqmta.test", smarthost=f"127.0.0.1:{smtp_sink}",
                                                       security="none", max_idle_time=1.5))
    svc.startService()
    try:
        # Idle time of a real connection in real time: the pauses let it pass, well inside and
        # well past max-idle-time (wide margins, for a loaded machine).
        for n, pause in enumerate((0.0, 0.3, 0.3, 2.0)):
            await task.deferLater(reactor, pause, lambda: None)
            await queue.publish([Publication("outbox", doc(f"u{n}@example.com"))])
            await wait_until(lambda n=n: len(queue.docs("success")) > n, 10)
        counts = [d["results"][0]["messages"] for d in queue.docs("success")]
        assert counts == [1, 2, 3, 1]
    finally:
        await svc.stopService()
        await wait_until(lambda: open_connections(svc) == 0)
        queue.stop()


@pytest_twisted.ensureDeferred
async def test_smtp_client_timeout_not_smtp_timeout_bounds_the_wait_for_a_reply() -> None:
    from twisted.internet import protocol

    from mqtwisted.options import MQOptions

    silent = protocol.Factory.forProtocol(protocol.Protocol)  # accepts, never greets
    port = reactor.listenTCP(0, silent, interface="127.0.0.1")
    opts = MQOptions()
    opts.parseOptions(["--smtp-client-timeout", "0.5", "--smtp-timeout", "300", "--smtp-client-security", "none",
                       "--delivery-port", str(port.getHost().port), "--hostname", "mqmta.test"])
    queue = MemoryQueue(reactor)
    resolver = StaticResolver({"example.com": [("mx.example.com", ["127.0.0.1"])]})
    svc = DeliveryService(queue, None, DeliveryOptions.from_options(opts), resolver=resolver)
    svc.startService()
    try:
        await queue.publish([Publication("outbox", doc())])
        await wait_until(lambda: queue.docs("retry"), 20, "the outbound reply timeout")
    finally:
        await svc.stopService()
        await port.stopListening()
        queue.stop()
    (retry,) = queue.docs("retry")
    assert retry["results"][0]["result"] == "timeout"
