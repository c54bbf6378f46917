"""Delivery asking the shaper, deterministic: MemoryReactorClock, in-memory servers, fixed DNS."""

from __future__ import annotations

import textwrap

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.delivery.service import LEARN_AT_ONCE
from mqtwisted.dns import Target
from mqtwisted.queue import Publication
from tests.deliveryhelpers import doc, make
from tests.memqueue import MemoryQueue
from tests.smtppeers import ScriptedFactory


def publish(queue: MemoryQueue, *docs: dict) -> None:
    queue.publish([Publication("outbox", d) for d in docs])


def shaping_file(tmp_path, text: str) -> str:
    path = tmp_path / "shaping.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def ehlo_of(session) -> bytes:
    return next(c for c in session.commands if c.startswith(b"EHLO "))


def test_messages_bind_to_their_ips_or_pool_and_greet_with_its_name(tmp_path):
    path = shaping_file(tmp_path, """\
        [sources."127.0.0.2"]
        ehlo_domain = "mta2.example.org"
        [pools.bulk]
        sources = ["127.0.0.3"]
    """)
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, shaping=path, max_idle_time=0)
    svc.startService()
    publish(queue, doc("a@example.com", ips=["127.0.0.2"]))
    net.run()
    publish(queue, doc("b@example.com", pool="bulk"))
    net.run()
    publish(queue, doc("c@example.com"))
    net.run()
    assert len(queue.docs("success")) == 3
    assert [c[4] for c in reactor.tcpClients] == [("127.0.0.2", 0), ("127.0.0.3", 0), None]
    assert [ehlo_of(s) for s in server.sessions] == [b"EHLO mta2.example.org", b"EHLO mqmta.test", b"EHLO mqmta.test"]


def test_default_ips_option_applies_to_messages_without_ips_or_pool(tmp_path):
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, default_ips=("127.0.0.4",))
    svc.startService()
    publish(queue, doc())
    net.run()
    assert reactor.tcpClients[0][4] == ("127.0.0.4", 0)


def test_an_unknown_pool_waits_for_the_operator(tmp_path):
    svc, queue, net, reactor = make({"10.0.0.1": ScriptedFactory()})
    svc.startService()
    publish(queue, doc(pool="nope"))
    net.run()
    assert reactor.tcpClients == []
    (retry,) = queue.docs("retry")
    assert retry["results"][0]["code"] == 451 and "'nope'" in retry["results"][0]["description"]


def test_message_rate_spaces_messages_on_one_connection_with_timers(tmp_path):
    path = shaping_file(tmp_path, '["example.com"]\nmax_message_rate = "2/s"\n')
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, shaping=path)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(5)])
    times = []
    for _ in range(12):
        net.run()
        times += [reactor.seconds()] * (len(server.messages) - len(times))
        reactor.advance(0.25)
    assert times == [0, 0.5, 1.0, 1.5, 2.0]


def test_connection_limit_is_shared_by_domains_with_the_same_mx_hosts(tmp_path):
    path = shaping_file(tmp_path, '["example.com"]\nconnection_limit = 2\nmax_deliveries_per_connection = 1\n')
    table = {
        "example.com": [("mx1.provider.test", ["10.0.0.1"])],
        "other.org": [("mx1.provider.test", ["10.0.0.1"])],
    }
    server = ScriptedFactory()
    # One document per transaction: the test counts transactions at the receiver.
    svc, queue, net, reactor = make({"10.0.0.1": server}, table, shaping=path, max_recipients=1)
    svc.startService()  # learns example.com's MX hosts
    publish(queue, *[doc(f"u{i}@example.com") for i in range(3)], *[doc(f"u{i}@other.org") for i in range(3)])
    reactor.advance(0)
    assert len(reactor.tcpClients) == 2  # two connections for both domains together
    net.run()
    assert len(server.messages) == 6 and server.connections == 6
    # max_deliveries_per_connection = 1: every connection sent one message and quit.
    assert all(s.commands[-1] == b"QUIT" for s in server.sessions)


def test_a_matching_421_suspends_the_destination_and_messages_wait(tmp_path):
    path = shaping_file(tmp_path, """\
        ["example.com"]
        connection_limit = 1
        [["example.com".automation]]
        regex = '^421 4\\.7\\.0 .*rate limited'
        action = "suspend"
        duration = "30s"
    """)
    server = ScriptedFactory(replies={"MAIL": ["250 ok", "421-4.7.0 slow down\r\n421 4.7.0 rate limited"]})
    # One document per transaction: the test counts transactions at the receiver.
    svc, queue, net, reactor = make({"10.0.0.1": server}, shaping=path, retry_interval=(60,), max_recipients=1)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(4)])
    net.run()
    assert len(server.messages) == 1
    (retry,) = queue.docs("retry")  # the message that got the 421 is retried on its schedule
    assert retry["results"][0]["code"] == 421
    reactor.advance(29)
    net.run()
    assert server.connections == 1 and len(server.messages) == 1  # no attempt while suspended
    reactor.advance(1)
    net.run()
    assert len(server.messages) == 3 and server.connections == 2


def test_automation_bounce_fails_a_temporary_reply_for_good(tmp_path):
    path = shaping_file(tmp_path, "[[default.automation]]\nregex = 'blocked'\naction = \"bounce\"\n")
    server = ScriptedFactory(replies={"RCPT": ["450 4.7.1 you are blocked"]})
    svc, queue, net, reactor = make({"10.0.0.1": server}, shaping=path)
    svc.startService()
    publish(queue, doc())
    net.run()
    assert queue.docs("retry") == []
    (failed,) = queue.docs("failure")
    assert failed["results"][0]["code"] == 450


def test_reload_with_a_bad_file_keeps_the_running_one(tmp_path):
    path = shaping_file(tmp_path, '["example.com"]\nconnection_limit = 1\n')
    svc, queue, net, reactor = make({"10.0.0.1": ScriptedFactory()}, shaping=path)
    svc.startService()
    (tmp_path / "shaping.toml").write_text('["example.com"]\nconnection_limit = "x"\n')
    options = {"shaping": path, "delivery-port": 25}
    svc.reconfigure(options)
    assert svc.shaper.config.domains["example.com"].limits.connection_limit == 1
    (tmp_path / "shaping.toml").write_text('["example.com"]\nconnection_limit = 3\n')
    svc.reconfigure(options)
    assert svc.shaper.config.domains["example.com"].limits.connection_limit == 3


def test_an_idle_connection_of_another_domain_at_the_site_gives_up_its_slot(tmp_path):
    path = shaping_file(tmp_path, '["example.com"]\nconnection_limit = 1\n')
    table = {
        "example.com": [("mx1.provider.test", ["10.0.0.1"])],
        "other.org": [("mx1.provider.test", ["10.0.0.1"])],
    }
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, table, shaping=path, max_idle_time=60)
    svc.startService()
    publish(queue, doc("a@example.com"))
    net.run()
    assert len(server.messages) == 1 and server.sessions[0].commands[-1] != b"QUIT"  # parked
    publish(queue, doc("b@other.org"))
    net.run()
    # other.org did not wait the minute example.com's connection may stay idle.
    assert server.sessions[0].commands[-1] == b"QUIT"
    assert len(server.messages) == 2 and server.connections == 2 and reactor.seconds() == 0


def test_warmup_through_delivery_sends_each_day_what_the_schedule_allows(tmp_path):
    """Simulated days on the test's clock: each day the warming IP sends its day's allowance and
    the rest waits, without an attempt, for the next UTC day; a day without mail does not count;
    an IP that is not warming is not held."""
    path = shaping_file(tmp_path, '[warmup."127.0.0.3"]\nschedule = ["2/day", "4/day", "6/day"]\n')
    server = ScriptedFactory()
    # One document per transaction: the test counts transactions at the receiver.
    svc, queue, net, reactor = make({"10.0.0.1": server}, shaping=path, max_recipients=1)
    reactor.advance(20 * 86400 + 3600)  # some day, 01:00 UTC
    svc.startService()

    def one_day() -> int:
        """Deliver what the day allows, then go to the same hour of the next day."""
        before = len(server.messages)
        net.run()
        sent = len(server.messages) - before
        reactor.advance(86400)
        return sent

    publish(queue, *[doc(f"u{i}@example.com", ips=["127.0.0.3"]) for i in range(3)])
    assert one_day() == 2
    assert one_day() == 1  # the one left, on the second day of sending (allowance 4)
    assert one_day() == 0  # nothing to send: this day does not count
    publish(queue, *[doc(f"v{i}@example.com", ips=["127.0.0.3"]) for i in range(20)])
    publish(queue, *[doc(f"w{i}@example.com", ips=["127.0.0.2"]) for i in range(5)])
    assert one_day() == 6 + 5  # the third sending day: 6; the other IP all of its 5
    assert one_day() == 6  # the last entry repeats
    assert one_day() == 6
    assert one_day() == 2
    # Held messages waited in the queue's lease: never attempted, never retried.
    assert queue.docs("retry") == [] and len(queue.docs("success")) == 28
    assert all(len(d["results"]) == 1 for d in queue.docs("success"))


class PendingResolver:
    """Answers only when the test says: what is in flight can be counted."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred]] = []

    def resolve(self, domain: str, port: int = 25) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((domain, d))
        return d


def test_the_shaping_files_domains_are_looked_up_a_few_at_a_time(tmp_path):
    """A file of many domains: their MX look-ups at start go a few at a time (all at once, a
    thousand overflowed the resolver's socket and stalled the worker), and every one is learned."""
    domains = [f"d{i}.test" for i in range(50)]
    path = shaping_file(tmp_path, "".join(f'["{d}"]\nconnection_limit = 2\n' for d in domains))
    resolver = PendingResolver()
    reactor = MemoryReactorClock()
    svc = DeliveryService(MemoryQueue(reactor), None, DeliveryOptions(helo="mqmta.test", shaping=path),
                          reactor=reactor, resolver=resolver)
    svc.startService()
    in_flight = []
    while resolver.pending:
        in_flight.append(len(resolver.pending))
        domain, d = resolver.pending.pop(0)
        d.callback([Target(f"mx.{domain}", ("10.0.0.1",), 25)])
    assert max(in_flight) == LEARN_AT_ONCE
    assert sorted(svc.shaper.site_domains.values()) == sorted(domains)
