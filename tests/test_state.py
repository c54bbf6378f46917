"""Pauses, suppressions and shaping state that survive a restart: the models and their lists on
the SQLite backend, the keeper, delivery holding paused messages and failing suppressed ones
(MemoryReactorClock, in-memory servers), and the ``mqmta pause``/``suppress`` commands."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from mqtwisted.cli import main
from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.queue import Publication
from mqtwisted.state.keeper import POLL_INTERVAL, PersistentStore, StateKeeper
from mqtwisted.state.pauses import PauseList
from mqtwisted.state.sqlite import SqliteBackend
from mqtwisted.state.suppression import SuppressionList, normalize
from tests.deliveryhelpers import Net, StaticResolver, doc
from tests.memqueue import MemoryQueue
from tests.smtppeers import ScriptedFactory


def inline(f, *args):
    return defer.maybeDeferred(f, *args)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the lists --------------------------------------------------------------------------------------


def test_pauses_are_added_listed_removed_and_expire(tmp_path):
    clock = Clock()
    pauses = PauseList(SqliteBackend(str(tmp_path / "s.sqlite3")), clock)
    a = pauses.add(source="127.0.0.2", domain="Example.NET.", duration=60, reason="complaints")
    b = pauses.add(tag="newsletter")
    assert (a.source, a.domain, a.tag, a.until) == ("127.0.0.2", "example.net", None, 1060.0)
    assert [p.id for p in pauses.list()] == [a.id, b.id]
    clock.t = 1060.0
    assert [p.id for p in pauses.list()] == [b.id]  # expired: gone, from the store too
    assert pauses.remove(b.id) is True and pauses.remove(b.id) is False
    assert pauses.list() == []
    with pytest.raises(ValueError, match="duration"):
        pauses.add(duration=0)
    # given empty, a field would match anything: a "domain" pause of every delivery
    for bad, field in [({"domain": ""}, "domain"), ({"domain": " . "}, "domain"), ({"source": ""}, "source"),
                       ({"tag": " "}, "tag"), ({"domain": "a b.example"}, "domain"), ({"tag": "a\x00"}, "tag")]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            pauses.add(**bad)
    assert pauses.list() == [] and pauses.add(tag="two words").tag == "two words"
    # an address as the shaping file's sources are written, so that it matches them
    assert pauses.add(source="2001:DB8:0::1").matches("2001:db8::1", None, "a.example", [])
    assert pauses.add(source="Pool-A").source == "pool-a"


def test_a_pause_matches_on_each_field_it_names():
    from mqtwisted.state.pauses import Pause, paused_by

    p = Pause("x", source="bulk", domain="example.net", tag="promo")
    assert p.matches("127.0.0.2", "bulk", "Example.net", ["promo", "x"])
    assert p.matches("127.0.0.2", "BULK", "example.net", ["promo"])
    assert not p.matches("127.0.0.2", "other", "example.net", ["promo"])
    assert not p.matches("127.0.0.2", "bulk", "example.com", ["promo"])
    assert not p.matches("127.0.0.2", "bulk", "example.net", [])
    ip = Pause("y", source="127.0.0.2")
    assert ip.matches("127.0.0.2", None, "any.example", []) and not ip.matches(None, None, "any.example", [])
    longer = Pause("z", until=2000.0)
    assert paused_by([Pause("w", until=1500.0), longer], 1000.0, None, None, "a.example", []) is longer
    assert paused_by([Pause("w", until=1500.0)], 1500.0, None, None, "a.example", []) is None


def test_suppressions_match_an_address_or_its_whole_domain(tmp_path):
    entries = SuppressionList(SqliteBackend(str(tmp_path / "s.sqlite3")), Clock())
    entries.add("Bob@Example.COM")
    entries.add("@spam.example", code=554, enhanced="5.7.0", text="  no   thanks ")
    assert entries.match("bob@example.com").code == 550
    assert entries.match("BOB@example.com.") is not None
    assert entries.match("alice@example.com") is None
    hit = entries.match("anyone@spam.example")
    assert (hit.pattern, hit.code, hit.enhanced, hit.text) == ("spam.example", 554, "5.7.0", "no thanks")
    assert [e.pattern for e in entries.list()] == ["bob@example.com", "spam.example"]
    assert entries.remove("BOB@example.com") and not entries.remove("bob@example.com")
    assert type(entries.add("f@example.com", code=551.0).code) is int  # JSON's 551.0
    for bad, field in [({"code": 450}, "code"), ({"enhanced": "4.7.1"}, "enhanced"), ({"duration": -1}, "duration"),
                       ({"enhanced": "5.7.1\n"}, "enhanced"), ({"code": 550.5}, "code"), ({"code": True}, "code")]:
        with pytest.raises(ValueError, match=field):
            entries.add("x@example.com", **bad)
    for bad in ["", "user@", "no spaces@example.com", "plainword"]:
        with pytest.raises(ValueError, match="expected an address"):
            normalize(bad)


# -- the keeper: state that survives a restart ------------------------------------------------------


def test_suspensions_and_warmup_days_survive_a_restart(tmp_path):
    path = str(tmp_path / "state.sqlite3")
    reactor = MemoryReactorClock()
    reactor.advance(86400 * 100 + 10)
    keeper = StateKeeper(SqliteBackend(path), inline, reactor)
    keeper.start()
    keeper.store.hold(("suspend", "127.0.0.2", "mx:a"), reactor.seconds() + 600, "421 too many")
    keeper.store.hold(("suspend", "127.0.0.2", "mx:b"), reactor.seconds() + 1, "421 briefly")
    for _ in range(3):
        keeper.store.count_day(("warmup", "127.0.0.2"), 100)
    keeper.store.count_day(("warmup", "127.0.0.2"), 99)
    reactor.advance(POLL_INTERVAL)  # one round writes them
    keeper.store.count_day(("warmup", "127.0.0.2"), 100)
    keeper.stop()  # the last round writes the rest

    reactor.advance(5)
    again = StateKeeper(SqliteBackend(path), inline, reactor)
    again.start()
    store = again.store
    assert store.held_until(("suspend", "127.0.0.2", "mx:a"), reactor.seconds()) == (86400 * 100 + 610, "421 too many")
    assert store.held_until(("suspend", "127.0.0.2", "mx:b"), reactor.seconds()) is None  # it ended
    assert store.days(("warmup", "127.0.0.2")) == {99: 1, 100: 4}
    again.stop()


def test_counts_made_while_the_backend_fails_are_written_later(tmp_path):
    class Flaky(SqliteBackend):
        broken = False

        def version(self):
            if self.broken:
                raise OSError("disk on fire")
            return super().version()

    backend = Flaky(str(tmp_path / "state.sqlite3"))
    reactor = MemoryReactorClock()
    keeper = StateKeeper(backend, inline, reactor)
    keeper.start()
    backend.broken = True
    keeper.store.count_day(("warmup", "a"), 7)
    reactor.advance(POLL_INTERVAL)
    assert keeper.failing
    backend.broken = False
    keeper.store.count_day(("warmup", "a"), 7)
    reactor.advance(POLL_INTERVAL)
    assert not keeper.failing
    assert backend.sync({}, {}, 0)[1] == {('["warmup", "a"]', 7): 2}
    assert keeper.store.days(("warmup", "a")) == {7: 2}


def test_a_persistent_store_merges_other_writers_counts():
    store = PersistentStore()
    store.count_day(("warmup", "a"), 5)
    holds, days = store.changes()
    assert days == {('["warmup", "a"]', 5): 1}
    store.count_day(("warmup", "a"), 5)  # after the round began
    store.merge({}, {('["warmup", "a"]', 5): 10})  # the backend: ours and another process's
    assert store.days(("warmup", "a")) == {5: 11}


# -- delivery ---------------------------------------------------------------------------------------


def make(tmp_path, servers, **opts):
    reactor = MemoryReactorClock()
    reactor.advance(1000)
    queue = MemoryQueue(reactor)
    backend = SqliteBackend(str(tmp_path / "state.sqlite3"))
    keeper = StateKeeper(backend, inline, reactor)
    opts.setdefault("helo", "mqmta.test")
    table = {d: [("mx1." + d, ["10.0.0.1"])] for d in ("example.com", "example.net")}
    svc = DeliveryService(queue, None, DeliveryOptions(**opts), reactor=reactor, resolver=StaticResolver(table),
                          state=keeper)
    clock = reactor.seconds
    return svc, queue, Net(reactor, servers), reactor, PauseList(backend, clock), SuppressionList(backend, clock)


def publish(queue, *docs):
    queue.publish([Publication("outbox", d) for d in docs])


def test_a_suppressed_recipient_fails_at_once_without_a_connection_and_bounces(tmp_path):
    server = ScriptedFactory()
    svc, queue, net, reactor, _, suppressions = make(tmp_path, {"10.0.0.1": server})
    suppressions.add("bob@example.com")
    suppressions.add("example.net", code=554, enhanced="5.7.0", text="Domain suppressed")
    svc.startService()
    publish(queue, doc("Bob@example.com"), doc("x@example.net", envelope=""), doc("alice@example.com"))
    net.run()
    assert [m["rcpt"] for m in server.messages] == [[b"RCPT TO:<alice@example.com>"]]
    assert len(reactor.tcpClients) == 1
    failed = {d["recipient"]: d["results"][-1] for d in queue.docs("failure")}
    assert failed["Bob@example.com"] == {**failed["Bob@example.com"], "state": "process", "code": 550,
                                         "status": "5.7.1", "description": "Recipient is on the suppression list"}
    assert (failed["x@example.net"]["code"], failed["x@example.net"]["status"]) == (554, "5.7.0")
    (dsn,) = queue.docs("dsn")  # the empty envelope gets none
    assert dsn["recipient"] == "sender@example.org" and "Recipient is on the suppression list" in dsn["mime"]


def test_a_suppression_added_while_running_is_seen_at_the_next_round(tmp_path):
    server = ScriptedFactory()
    svc, queue, net, reactor, _, suppressions = make(tmp_path, {"10.0.0.1": server}, max_idle_time=0)
    svc.startService()
    suppressions.add("example.com")
    publish(queue, doc("a@example.com"))
    net.run()
    assert len(queue.docs("success")) == 1  # not read yet
    reactor.advance(POLL_INTERVAL)
    publish(queue, doc("b@example.com"))
    net.run()
    assert [d["recipient"] for d in queue.docs("failure")] == ["b@example.com"]
    assert len(reactor.tcpClients) == 1


def test_a_paused_message_waits_without_an_attempt_until_the_pause_is_removed(tmp_path):
    server = ScriptedFactory()
    svc, queue, net, reactor, pauses, _ = make(tmp_path, {"10.0.0.1": server}, max_idle_time=0)
    held = pauses.add(domain="example.com")
    pauses.add(tag="promo", duration=30)
    svc.startService()
    publish(queue, doc("a@example.com"), doc("b@example.net", tags=["promo"]), doc("c@example.net"))
    net.run()
    assert [d["recipient"] for d in queue.docs("success")] == ["c@example.net"]
    assert queue.docs("retry") == [] and [d["recipient"] for d in queue.docs("results")] == ["c@example.net"]
    reactor.advance(29)
    net.run()
    assert len(queue.docs("success")) == 1  # both still held
    reactor.advance(1)  # the tag's pause ends: no removal needed
    net.run()
    assert sorted(d["recipient"] for d in queue.docs("success")) == ["b@example.net", "c@example.net"]
    for _ in range(5):
        reactor.advance(POLL_INTERVAL)
    net.run()
    assert len(queue.docs("success")) == 2  # example.com is paused until removed
    pauses.remove(held.id)
    reactor.advance(POLL_INTERVAL)
    net.run()
    assert sorted(d["recipient"] for d in queue.docs("success")) == ["a@example.com", "b@example.net", "c@example.net"]
    assert all(len(d["results"]) == 1 for d in queue.docs("success"))  # no attempt while paused


def test_a_pause_holds_messages_already_waiting_for_a_connection(tmp_path):
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('["example.com"]\nmax_message_rate = "1/min"\n')
    server = ScriptedFactory()
    svc, queue, net, reactor, pauses, _ = make(tmp_path, {"10.0.0.1": server}, shaping=str(shaping))
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(3)])
    net.run()
    assert len(queue.docs("success")) == 1  # the others wait for the rate
    pause = pauses.add(source="127.0.0.9")  # another sending IP: no effect
    pauses.add(domain="example.com")
    reactor.advance(POLL_INTERVAL)
    reactor.advance(120)
    net.run()
    assert len(queue.docs("success")) == 1
    assert len(svc.paused.held) == 2
    for p in pauses.list():
        if p.id != pause.id:
            pauses.remove(p.id)
    reactor.advance(POLL_INTERVAL)
    net.run()
    reactor.advance(60)
    net.run()
    assert len(queue.docs("success")) == 3


def test_stopping_gives_held_messages_back(tmp_path):
    svc, queue, net, reactor, pauses, _ = make(tmp_path, {"10.0.0.1": ScriptedFactory()})
    pauses.add()
    svc.startService()
    publish(queue, doc())
    net.run()
    assert len(svc.paused.held) == 1
    svc.stopService()
    assert svc.paused.held == [] and len(queue.docs("outbox")) == 1


# -- the commands -----------------------------------------------------------------------------------


def test_pause_and_suppress_commands_write_the_data_directorys_state(tmp_path, capsys):
    d = str(tmp_path)
    assert main(["pause", "add", "--data-dir", d, "--domain", "example.net", "--for", "2h", "--reason", "spike"]) == 0
    pause_id = capsys.readouterr().out.strip()
    assert main(["pause", "list", "--data-dir", d, "--json"]) == 0
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["id"] == pause_id and listed["domain"] == "example.net" and listed["reason"] == "spike"
    assert listed["until"] - listed["created"] == 7200
    assert main(["pause", "remove", pause_id, "--data-dir", d]) == 0
    assert main(["pause", "remove", pause_id, "--data-dir", d]) == 1
    assert main(["suppress", "add", "x@example.com", "--data-dir", d, "--code", "551", "--text", "gone"]) == 0
    assert main(["suppress", "list", "--data-dir", d]) == 0
    assert "x@example.com  551 5.7.1 gone" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="code: a suppressed recipient fails for good"):
        main(["suppress", "add", "y@example.com", "--data-dir", d, "--code", "450"])
    with pytest.raises(SystemExit, match="no data directory"):
        main(["pause", "list", "--data-dir", str(tmp_path / "nope")])
    with pytest.raises(SystemExit):
        main(["pause", "add", "--data-dir", d, "--for", "soon"])
    assert "expected a duration" in capsys.readouterr().err
    entries = SuppressionList(SqliteBackend(str(tmp_path / "state.sqlite3")))
    assert entries.match("X@example.com").code == 551


def test_paused_messages_beyond_half_the_prefetch_go_back_to_the_outbox(tmp_path):
    server = ScriptedFactory()
    svc, queue, net, reactor, pauses, _ = make(tmp_path, {"10.0.0.1": server}, prefetch=4, max_idle_time=0)
    pause = pauses.add(domain="example.com", duration=30)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(4)], doc("x@example.net"))
    net.run()
    assert len(svc.paused.held) == 2
    back = [d for d in queue.docs("outbox") if d.get("nextattempt")]
    assert len(back) == 2 and all(d["nextattempt"] == pause.until and "results" not in d for d in back)
    reactor.advance(POLL_INTERVAL)
    net.run()
    assert [d["recipient"] for d in queue.docs("success")] == ["x@example.net"]  # the rest flows
    reactor.advance(30)
    net.run()
    reactor.advance(1)
    net.run()
    assert len(queue.docs("success")) == 5
    assert all(len(d["results"]) == 1 for d in queue.docs("success"))


# -- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["--queue", "amqp://guest:guest@127.0.0.1:5672/%2F"], "per node"),
    (["--queue", "amqp://guest:guest@127.0.0.1:5672/%2F", "--delivery-processes", "2"], "per delivery process"),
    (["--queue", "amqp://guest:guest@127.0.0.1:5672/%2F", "--state", "redis://127.0.0.1:6379/0"], None),
    ([], None),
])
def test_nodes_on_a_broker_without_shared_state_say_their_limits_are_their_own(args, says, logged, tmp_path):
    from mqtwisted.options import MQOptions
    from mqtwisted.service import make_delivery
    from mqtwisted.wiring import make_queue

    options = MQOptions()
    options.parseOptions(["--data-dir", str(tmp_path), *args])
    make_delivery(options, make_queue(options), None)
    warnings = [e for e in logged if "enforced per" in e.get("log_format", "")]
    if says is None:
        assert warnings == []
    else:
        (event,) = warnings
        assert event["what"] == says.removeprefix("per ")


def test_a_state_url_that_is_not_redis_is_refused():
    from mqtwisted.options import MQOptions

    with pytest.raises(Exception, match="state.*expected redis://host:port/db"):
        MQOptions().parseOptions(["--state", "memcache://127.0.0.1"])
