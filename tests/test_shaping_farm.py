"""Shaping over real loopback sockets: mqmta's delivery against a farm of receivers that enforce
limits of their own (tests/receiverfarm.py), MX records from a twisted.names zone, sending
addresses bound on loopback.  With a shaping file that matches the receivers' limits, every
message is delivered and no receiver sees its limit broken; the one that answers ``421 4.7.0
rate limited`` suspends its destination for the rule's duration; messages with ``ips`` or a
``pool`` arrive from those addresses with their EHLO names."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest
import pytest_twisted

from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.queue import Publication
from tests.conftest import wait_until
from tests.deliveryhelpers import doc
from tests.dnszone import DNSZone
from tests.memqueue import MemoryQueue
from tests.receiverfarm import Receiver, listen_farm

pytestmark = pytest.mark.slow

SHAPING = r"""
[default]
connection_limit = 4
idle_timeout = "2s"

["conc.test"]                  # conc2.test has the same MX host: the two share this limit
connection_limit = 2

["limit.test"]
max_deliveries_per_connection = 20

["count.test"]
max_message_rate = "20/s"

["suspend.test"]
connection_limit = 1
[["suspend.test".automation]]
regex = '^421 4\.7\.0 .*rate limited'
action = "suspend"
duration = "1s"

[sources."127.0.0.2"]
ehlo_domain = "mta2.farm.test"
[sources."127.0.0.3"]
ehlo_domain = "mta3.farm.test"
[sources."127.0.0.4"]
ehlo_domain = "mta4.farm.test"
[pools.bulk]
sources = ["127.0.0.3:3", "127.0.0.4"]
"""


@pytest_twisted.ensureDeferred
async def test_a_farm_of_limited_receivers_sees_no_violation(tmp_path) -> None:
    farm = {
        "127.0.1.1": Receiver("mx.conc.farm", max_connections=2),
        "127.0.1.2": Receiver("mx.limit.farm", messages_per_connection=20),
        "127.0.1.3": Receiver("mx.count.farm", per_second=25),
        "127.0.1.4": Receiver("mx.suspend.farm", messages_per_connection=20),
        "127.0.1.5": Receiver("mx.src.farm"),
    }
    conc, limit, count, suspend, src = farm.values()
    port, listening = listen_farm(farm)
    zone = DNSZone({
        "conc.test": [("MX", 10, "mx.conc.farm")],
        "conc2.test": [("MX", 10, "mx.conc.farm")],
        "limit.test": [("MX", 10, "mx.limit.farm")],
        "count.test": [("MX", 10, "mx.count.farm")],
        "suspend.test": [("MX", 10, "mx.suspend.farm")],
        "src.test": [("MX", 10, "mx.src.farm")],
        **{f"mx.{name}.farm": [("A", address)] for name, address in
           zip(("conc", "limit", "count", "suspend", "src"), farm, strict=True)},
    })
    zone.start()
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(textwrap.dedent(SHAPING))
    from twisted.internet import reactor

    queue = MemoryQueue(reactor)
    svc = DeliveryService(queue, None, DeliveryOptions(
        helo="mqmta.test", dns_server=f"127.0.0.1:{zone.port}", port=port, security="none",
        shaping=str(shaping), retry_interval=(1,), ipv6=False,
    ))
    svc.startService()
    try:
        # The configured domains' MX hosts are looked up at start: conc2.test shares conc.test's.
        await wait_until(lambda: len(svc.shaper.site_domains) == 4, 10, "configured domains resolved")
        docs = (
            [doc(f"u{i}@conc.test") for i in range(60)] + [doc(f"u{i}@conc2.test") for i in range(40)]
            + [doc(f"u{i}@limit.test") for i in range(100)] + [doc(f"u{i}@count.test") for i in range(60)]
            + [doc(f"u{i}@suspend.test") for i in range(30)]
            + [doc(f"ip{i}@src.test", ips=["127.0.0.2"]) for i in range(8)]
            + [doc(f"pool{i}@src.test", pool="bulk") for i in range(16)]
        )
        await queue.publish([Publication("outbox", d) for d in docs])
        await wait_until(lambda: len(queue.docs("success")) == len(docs), 20, "every message delivered", step=0.05)

        assert queue.docs("failure") == []
        for receiver in (conc, limit, count, src):
            assert receiver.violations() == {"refused": 0, "rate limited": 0, "too fast": 0}, receiver.name
        assert conc.max_open == 2 and len(conc.messages) == 100
        assert len(limit.messages) == 100 and len(limit.connections) >= 5
        # 20/s, evenly: 60 messages take 59 intervals of 50 ms, whatever the connections.
        assert count.mail_times[-1] - count.mail_times[0] >= 59 / 20 - 0.05

        # suspend.test: the 21st message on the connection got the 421; nothing was sent there
        # for the rule's second; then the rest and the retried one went.
        (refused_at,) = suspend.rate_limited
        after = [t for t in suspend.connections if t > refused_at]
        assert after and min(after) - refused_at >= 1.0 - 0.05
        assert len(suspend.messages) == 30 and len(suspend.connections) == 2
        retried = [d for d in queue.docs("success") if d["recipient"].endswith("@suspend.test") and len(d["results"]) == 2]
        assert len(retried) == 1 and retried[0]["results"][0]["code"] == 421

        by_source = Counter((peer, ehlo) for peer, ehlo, rcpt in src.messages)
        assert by_source == {
            ("127.0.0.2", "mta2.farm.test"): 8, ("127.0.0.3", "mta3.farm.test"): 12, ("127.0.0.4", "mta4.farm.test"): 4,
        }
        assert {peer for peer, _, rcpt in src.messages if rcpt.startswith("ip")} == {"127.0.0.2"}
    finally:
        await svc.stopService()
        svc.resolver.close()
        for p in listening:
            await p.stopListening()
        await zone.stop()
