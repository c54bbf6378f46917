"""Shaping over real sockets, end to end: smtp-source sends the farm's load by SMTP into an
in-process mqmta, which delivers it by the MX records of a twisted.names zone to the receiver farm
of bench/farm.py (loopback addresses 127.0.1.x, each receiver enforcing and recording limits of its
own), with the shaping file that fits the farm.

Every message is delivered exactly once (those to the host that is down are retried, then bounced),
no receiver sees a limit it was configured with broken, the 421 of ``suspend`` holds that
destination for the rule's second, greylisted and randomly refused messages come back on the retry
schedule, and messages with ``ips`` or a ``pool`` arrive from those addresses with their EHLO
names.  ``MQMTA_FARM_MESSAGES`` sets the load (1,000 in the suite; the bench's ``farm`` scenario
sends 5,000 through a twistd mqmta).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import threads

from bench.farm import (
    SHAPING,
    Farm,
    inject,
    limit_violations,
    plan,
    zone_records,
)
from mqtwisted.testing import start_mta
from tests.conftest import need, wait_until
from tests.dnszone import DNSZone

pytestmark = pytest.mark.slow

N = int(os.environ.get("MQMTA_FARM_MESSAGES", "1000"))


def by_domain(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["recipient"].rpartition("@")[2], []).append(d)
    return out


@pytest_twisted.ensureDeferred
async def test_the_farm_gets_everything_with_no_limit_broken(tmp_path) -> None:
    source = need("smtp-source")
    farm = Farm()
    port = farm.start()
    zone = DNSZone(zone_records())
    zone.start()
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(SHAPING)
    batches = plan(N)
    expected: dict[str, set[str]] = {}
    for b in batches:
        expected.setdefault(b.domain, set()).update(b.recipients())
    down = len(expected["down.test"])
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", dns_server=f"127.0.0.1:{zone.port}",
                          delivery_port=str(port), shaping=str(shaping), retry_interval="1",
                          smtp_connections_per_ip="0",
                          # The receivers count messages (transactions): one recipient each.
                          max_recipients_per_transaction="1")
    try:
        await threads.deferToThread(inject, mta.port, batches, str(tmp_path), source)

        async def settled() -> bool:
            stats = await mta.queue.stats()
            return stats.get("success", 0) == N - down and stats.get("failure", 0) == down and not stats.get("outbox")

        await wait_until(settled, 120, "every message delivered or bounced", step=0.2)
        stats = farm.stats()
        # No limit the sender was told about was broken anywhere.
        assert limit_violations(stats) == 0, stats
        success = by_domain(await mta.documents("success", N + 1))
        failure = by_domain(await mta.documents("failure", N + 1))

        # Each recipient accepted once, by the receiver its MX names, and nowhere else.
        for spec_name, domains in (("conc", ("conc.test", "conc2.test")), ("limit", ("limit.test",)),
                                   ("count", ("count.test",)), ("suspend", ("suspend.test",)),
                                   ("grey", ("grey.test",)), ("random", ("random.test",)), ("src", ("src.test",))):
            want = set().union(*(expected[d] for d in domains))
            assert set(farm[spec_name].accepted) == want, spec_name
            assert farm[spec_name].duplicates == 0, spec_name
            assert sum(len(success[d]) for d in domains) == len(want)
        assert set(failure) == {"down.test"}

        conc, limit, count, suspend = farm["conc"], farm["limit"], farm["count"], farm["suspend"]
        assert conc.max_open == 2
        assert limit.rate_limited == [] and len(limit.connections) >= len(limit.accepted) / 20
        # 45/s, evenly: the messages take their intervals of 1/45 s, however many connections.
        assert count.max_per_second <= 50
        assert count.mail_times[-1] - count.mail_times[0] >= (len(count.mail_times) - 1) / 45 - 0.05

        # suspend.test: each 421 held the destination for the rule's second (no connection, no
        # message), then delivery went on, the message that got the 421 on its retry.
        assert suspend.rate_limited
        for refused_at in suspend.rate_limited:
            quiet = [t for t in suspend.connections + suspend.mail_times if refused_at < t < refused_at + 1.0 - 0.05]
            assert quiet == [], refused_at
        assert max(suspend.mail_times) > suspend.rate_limited[-1] + 1.0 - 0.05
        retried = [d for d in success["suspend.test"] if len(d["results"]) > 1]
        assert len(retried) == len(suspend.rate_limited)
        assert {d["results"][0]["code"] for d in retried} == {421}

        # Greylisting: every recipient's first attempt refused, its retry accepted.
        grey = success["grey.test"]
        assert len(farm["grey"].greylisted) == len(grey)
        assert {(len(d["results"]), d["results"][0]["code"], d["results"][0]["classification"]) for d in grey} == {
            (2, 451, "greylisted")}
        # The random 4xx: one more attempt for each, about a tenth of the messages.
        transient = farm["random"].transient
        assert sum(len(d["results"]) - 1 for d in success["random.test"]) == transient
        assert 0.04 * len(success["random.test"]) < transient < 0.2 * len(success["random.test"])

        # The host that is down: three attempts each, then a bounce to the sender.
        for d in failure["down.test"]:
            assert [r["state"] for r in d["results"]][:3] == ["connect"] * 3, d["results"]
        assert (await mta.queue.stats()).get("dsn") == down

        # Sending addresses: ips and pool messages from theirs, with their EHLO names; the rest
        # from the system's choice with the MTA's name.
        src = farm["src"].accepted
        ips = [r for b in batches if "X-MQ-Ips" in dict(b.headers) for r in b.recipients()]
        pooled = [r for b in batches if "X-MQ-Pool" in dict(b.headers) for r in b.recipients()]
        assert {src[r] for r in ips} == {("127.0.0.2", "mta2.farm.test")}
        by_source = Counter(src[r] for r in pooled)
        assert set(by_source) == {("127.0.0.3", "mta3.farm.test"), ("127.0.0.4", "mta4.farm.test")}
        assert abs(by_source[("127.0.0.3", "mta3.farm.test")] - len(pooled) * 3 / 4) <= 1
        for name in ("conc", "limit", "count", "suspend", "grey", "random"):
            assert set(farm[name].accepted.values()) == {("127.0.0.1", "mx.test")}, name
    finally:
        await mta.stop()
        await farm.stop()
        await zone.stop()
