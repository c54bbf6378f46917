"""The state in a real Redis (``--state redis://…``): the backend the lists and the keeper use,
and the store whose connection slots and rates two nodes share (two stores in this process,
each with its own thread, as two nodes would be).  Skipped when no Redis answers."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mqtwisted.cli import main
from mqtwisted.state.keeper import StateKeeper
from mqtwisted.state.opening import OwnThread
from mqtwisted.state.pauses import PauseList
from mqtwisted.state.redis import RedisBackend, split_url
from mqtwisted.state.redisstore import RedisStore
from mqtwisted.state.suppression import SuppressionList
from tests.conftest import sleep, wait_until
from tests.conftest_redis import redis_url  # noqa: F401  (a fixture)

KEY = ("connections", "127.0.0.2", "mx:mx.example.net")


def test_the_url_keeps_redis_options_and_takes_our_prefix():
    assert split_url("redis://h:1/2?prefix=a:&socket_keepalive=1") == ("redis://h:1/2?socket_keepalive=1", "a:")
    assert split_url("redis://h:1/2") == ("redis://h:1/2", "mqmta:")


def test_pauses_suppressions_holds_and_days_in_redis(redis_url):  # noqa: F811
    backend = RedisBackend(redis_url)
    v0 = backend.version()
    pauses, entries = PauseList(backend), SuppressionList(backend)
    p = pauses.add(domain="example.net", duration=60)
    entries.add("@example.org", code=551)
    assert backend.version() == v0 + 2
    assert [x.id for x in pauses.list()] == [p.id] and entries.match("a@example.org").code == 551
    assert pauses.remove(p.id) and not pauses.remove(p.id) and backend.version() == v0 + 3
    now = time.time()
    holds, days = backend.sync({"a": (now + 60, "421 first")}, {("w", 5): 2}, now)
    assert holds == {"a": (pytest.approx(now + 60), "421 first")} and days == {("w", 5): 2}
    # another node: a shorter hold does not shorten it, a longer one lengthens; counts add up
    holds, days = backend.sync({"a": (now + 30, "421 short"), "b": (now + 1, "421 b")}, {("w", 5): 3}, now)
    assert holds["a"][1] == "421 first" and days == {("w", 5): 5}
    holds, _ = backend.sync({"a": (now + 90, "421 longer")}, {}, now + 2)
    assert holds == {"a": (pytest.approx(now + 90), "421 longer")}  # b ended
    backend.close()


def test_commands_write_to_redis(redis_url, capsys, tmp_path):  # noqa: F811
    assert main(["suppress", "add", "bob@example.com", "--state", redis_url]) == 0
    assert main(["pause", "add", "--tag", "promo", "--state", redis_url]) == 0
    pause_id = capsys.readouterr().out.splitlines()[-1]
    backend = RedisBackend(redis_url)
    assert [p.id for p in backend.pauses()] == [pause_id]
    assert [s.pattern for s in backend.suppressions()] == ["bob@example.com"]
    with pytest.raises(SystemExit, match="--state"):
        main(["pause", "list", "--state", "memcache://x"])


def node(url: str, lease: float = 30.0) -> tuple[RedisStore, list]:
    backend = RedisBackend(url)
    run = OwnThread(reactor)
    store = RedisStore(backend, run, reactor, lease=lease)
    woken: list = []
    store.ready = woken.append
    return store, woken


def stop(*stores: RedisStore) -> defer.Deferred:
    ds = []
    for s in stores:
        s.close()
        d = s.run(s.backend.close)
        d.addBoth(lambda _, s=s: s.run.stop())
        ds.append(d)
    return defer.DeferredList(ds)


@pytest_twisted.ensureDeferred
async def test_two_nodes_never_hold_more_slots_than_the_limit_together(redis_url):  # noqa: F811
    a, woken_a = node(redis_url)
    b, woken_b = node(redis_url)
    try:
        # Each node wants 3 of 2 slots; they ask, are told, ask again.
        for _ in range(40):
            for s in (a, b):
                while s.held(KEY) < 3 and s.acquire(KEY, 2):
                    pass
            await sleep(0.02)
        assert a.held(KEY) + b.held(KEY) == 2
        assert a.backend.slots_taken('["connections", "127.0.0.2", "mx:mx.example.net"]') == 2
        holder, other = (a, b) if a.held(KEY) else (b, a)
        holder.release(KEY)
        await wait_until(lambda: other.acquire(KEY, 2), timeout=10, what="the freed slot taken by the other node")
        assert a.held(KEY) + b.held(KEY) == 2
    finally:
        await stop(a, b)


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_slots_come_back_when_their_lease_ends(redis_url):  # noqa: F811
    dead, _ = node(redis_url, lease=1.0)
    live, _ = node(redis_url)
    try:
        await wait_until(lambda: dead.acquire(KEY, 1), timeout=10, what="a slot")
        # The dead node never gives it back nor renews it.
        started = time.monotonic()
        await wait_until(lambda: live.acquire(KEY, 1), timeout=10, what="the slot back after the lease")
        assert 0.5 < time.monotonic() - started < 5
    finally:
        dead.in_use.clear()
        await stop(dead, live)


@pytest_twisted.ensureDeferred
async def test_renewed_leases_stay_and_a_closed_node_gives_its_slots_back(redis_url):  # noqa: F811
    a, _ = node(redis_url, lease=1.0)
    b, _ = node(redis_url)
    try:
        await wait_until(lambda: a.acquire(KEY, 1), timeout=10, what="a slot")
        for _ in range(8):  # 2 s: twice the lease, renewed every third of it
            a.tick()
            await sleep(0.25)
            assert not b.acquire(KEY, 1)
        a.close()
        await wait_until(lambda: b.acquire(KEY, 1), timeout=10, what="the slot given back on close")
    finally:
        await stop(a, b)


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_one_rate(redis_url):  # noqa: F811
    interval = 0.1
    a, _ = node(redis_url)
    b, _ = node(redis_url)
    key = ("message", "127.0.0.2", "mx:mx.example.net")
    sent: list[tuple[float, str]] = []
    try:
        deadline = reactor.seconds() + 3.0
        while reactor.seconds() < deadline:
            for name, s in (("a", a), ("b", b)):
                if s.pace(key, reactor.seconds(), interval, take=True) == 0:
                    sent.append((reactor.seconds(), name))
            await sleep(0.005)
        times = [t for t, _ in sent]
        assert {"a", "b"} == {n for _, n in sent} and len(sent) >= 15, sent
        # Each event falls in a turn of its own, turns one interval apart: in any second at most
        # one more than the 10 a single process's GCRA allows (module docstring).
        assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 11, times
        assert len(sent) <= 3.0 / interval + 1
    finally:
        await stop(a, b)


@pytest_twisted.ensureDeferred
async def test_the_keeper_sees_another_nodes_changes(redis_url):  # noqa: F811
    keeper = StateKeeper(RedisBackend(redis_url), OwnThread(reactor), reactor)
    await keeper.start()
    try:
        assert keeper.paused(None, None, "example.net", ()) is None
        PauseList(RedisBackend(redis_url)).add(domain="example.net")
        SuppressionList(RedisBackend(redis_url)).add("x@example.com")
        await wait_until(lambda: keeper.paused(None, None, "example.net", ()) is not None, timeout=5,
                         what="the pause seen")
        assert keeper.suppressed("X@example.com").code == 550
    finally:
        await keeper.stop()
