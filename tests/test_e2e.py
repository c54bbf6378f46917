"""End to end over real sockets and real peers: smtp-source sends 5000
messages for example.com to an in-process mqmta; example.com's MX comes from a twisted.names
server on loopback (``--dns-server``); delivery goes to Postfix's smtp-sink on a loopback port
(``--delivery-port``).  Every message must end in ``results`` and ``success`` with one
accepted attempt, and connections must have been reused (``messages`` > 1)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import threads

from mqtwisted.testing import start_mta
from tests.conftest import need, wait_until
from tests.dnszone import DNSZone

pytestmark = pytest.mark.slow

N = 5000


@pytest_twisted.ensureDeferred
async def test_smtp_source_5000_via_mx_from_dns_to_smtp_sink(tmp_path, smtp_sink: int) -> None:
    source = need("smtp-source")
    zone = DNSZone({
        "example.com": [("MX", 10, "mx1.example.com"), ("MX", 20, "mx2.example.com")],
        "mx1.example.com": [("A", "127.0.0.1")],
        "mx2.example.com": [("A", "127.0.0.1")],
    })
    zone.start()
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", dns_server=f"127.0.0.1:{zone.port}",
                          delivery_port=str(smtp_sink), smtp_connections_per_ip="0")
    try:
        started = time.monotonic()
        # smtp-source blocks: run it in a thread while the reactor serves both directions.
        done = await threads.deferToThread(
            subprocess.run,
            [source, "-s", "10", "-m", str(N), "-l", "2000", "-f", "a@example.org", "-t", "b@example.com",
             f"127.0.0.1:{mta.port}"],
            capture_output=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        accepted = time.monotonic() - started

        async def all_delivered() -> bool:
            return (await mta.queue.stats()).get("success", 0) >= N

        await wait_until(all_delivered, 60, 0.2)
        relayed = time.monotonic() - started
        print(f"\n{N} messages: accepted in {accepted:.1f}s, delivered in {relayed:.1f}s")

        stats = await mta.queue.stats()
        assert stats.get("success") == N and stats.get("results") == N
        assert not stats.get("outbox") and not stats.get("failure") and not stats.get("retry")
        success = await mta.documents("success", N + 1)
        assert all(len(d["results"]) == 1 for d in success)
        attempts = [d["results"][0] for d in success]
        assert {(a["state"], a["result"], a["code"]) for a in attempts} == {("message", "accepted", 250)}
        assert {a["to"] for a in attempts} == {"127.0.0.1"}
        assert all(a["mta"] for a in attempts)  # the name smtp-sink greets with
        assert "mime" not in success[0] and success[0]["recipient"] == "b@example.com"
        # Reuse: connections carried many messages; far fewer connections than messages.
        per_connection = Counter(a["messages"] for a in attempts)
        assert max(per_connection) > 1
        connections = per_connection[1]
        assert connections < N / 10, f"{connections} connections for {N} messages"
        # The MX really came from the zone.
        assert ("example.com", 15) in zone.resolver.queries
    finally:
        await mta.stop()
        await zone.stop()
