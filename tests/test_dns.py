"""MX resolution against a real twisted.names server on loopback."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import reactor

from mqtwisted.dns import DNSFailure, MXResolver
from mqtwisted.jsonvalues import parse_hostport
from tests.dnszone import DNSZone

RECORDS = {
    "example.com": [("MX", 20, "mx2.example.com"), ("MX", 10, "mx1a.example.com"), ("MX", 10, "mx1b.example.com")],
    "mx1a.example.com": [("A", "127.0.0.1")],
    "mx1b.example.com": [("A", "127.0.0.2"), ("AAAA", "::1")],
    "mx2.example.com": [("A", "127.0.0.3")],
    "nomx.example": [("A", "127.0.0.4")],
    "nullmx.example": [("MX", 0, "")],
    "dangling.example": [("MX", 10, "gone.example")],
    "bare.example": [],
}


@pytest.fixture
def zone():
    z = DNSZone(RECORDS, servfail={"broken.example"}, silent={"slow.example"})
    z.start()
    yield z
    pytest_twisted.blockon(z.stop())


def resolver(zone: DNSZone, seed: int = 0) -> MXResolver:
    return MXResolver([("127.0.0.1", zone.port)], timeout=(0.3, 0.3), rng=random.Random(seed))


def _leaks() -> list:
    return [c for c in reactor.getDelayedCalls() if c.active() and "Resolver" in repr(c.func)]


@pytest_twisted.ensureDeferred
async def test_preference_order_and_equal_shuffle(zone: DNSZone) -> None:
    orders = set()
    for seed in range(12):
        targets = await resolver(zone, seed).resolve("example.com")
        assert targets[-1].host == "mx2.example.com" and targets[-1].addresses == ("127.0.0.3",)
        orders.add(tuple(t.host for t in targets[:2]))
    assert orders == {("mx1a.example.com", "mx1b.example.com"), ("mx1b.example.com", "mx1a.example.com")}
    targets = await resolver(zone).resolve("EXAMPLE.com.")
    b = next(t for t in targets if t.host == "mx1b.example.com")
    assert b.addresses == ("127.0.0.2", "::1")


@pytest_twisted.ensureDeferred
async def test_a_fallback_without_mx(zone: DNSZone) -> None:
    (t,) = await resolver(zone).resolve("nomx.example", 2525)
    assert (t.host, t.addresses, t.port) == ("nomx.example", ("127.0.0.4",), 2525)


@pytest.mark.parametrize(
    "domain,permanent",
    [("nullmx.example", True), ("nxdomain.example", True), ("bare.example", True), ("broken.example", False), ("slow.example", False), ("dangling.example", True)],
)
@pytest_twisted.ensureDeferred
async def test_failures(zone: DNSZone, domain: str, permanent: bool) -> None:
    with pytest.raises(DNSFailure) as info:
        await resolver(zone).resolve(domain)
    assert info.value.permanent is permanent
    if domain == "nullmx.example":
        assert info.value.status == "5.1.10"
    assert not _leaks()


@pytest_twisted.ensureDeferred
async def test_ip_literals_and_smarthost(zone: DNSZone) -> None:
    (t,) = await resolver(zone).resolve("[127.0.0.9]")
    assert t.addresses == ("127.0.0.9",)
    (t,) = await resolver(zone).resolve_host("mx2.example.com", 587)
    assert t.addresses == ("127.0.0.3",) and t.port == 587
    assert parse_hostport("h:26", 25) == ("h", 26) and parse_hostport("[::1]:26", 25) == ("::1", 26)


def test_default_resolver_is_the_system_one_and_builds():
    """No --dns-server: the resolver comes from resolv.conf (built, not queried, here)."""
    from mqtwisted.dns import MXResolver

    resolver = MXResolver().resolver
    assert hasattr(resolver, "lookupMailExchange") and hasattr(resolver, "lookupAddress")
