"""Contexts: one thread each, init and cleanup in that thread, timers and I/O watchers there."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mqtwisted import api as mq
from mqtwisted.contexts import ContextPool, MQ_Context, current_plugin
from tests.conftest import ClockWithThreads, in_thread, reactor_turn, wait_until


def until(event: threading.Event) -> defer.Deferred:
    """Fires when ``event`` is set (without blocking the reactor)."""
    return wait_until(event.is_set, what="the context thread's event", step=0.005)


@pytest.fixture
def pool():
    log: list[tuple] = []
    p = ContextPool(
        3,
        initialize=lambda ctx: log.append(("init", ctx.index, threading.current_thread().name)),
        cleanup=lambda ctx: log.append(("cleanup", ctx.index, threading.current_thread().name)),
    )
    p.log = log
    p.start()
    yield p
    pytest_twisted.blockon(p.stop())


@pytest_twisted.inlineCallbacks
def test_init_and_cleanup_once_each_in_the_context_thread(pool):
    done = threading.Event()
    pool.contexts[2].submit(done.set)
    yield until(done)
    yield pool.stop()
    yield pool.stop()  # idempotent, unlike ThreadPool.stop()
    expected = [(i, f"mq-context-{i}") for i in range(3)]
    assert sorted(e[1:] for e in pool.log if e[0] == "init") == expected
    assert sorted(e[1:] for e in pool.log if e[0] == "cleanup") == expected
    assert not any(ctx.thread.is_alive() for ctx in pool.contexts)


@pytest_twisted.inlineCallbacks
def test_jobs_run_in_order_on_their_own_thread(pool):
    seen: list[tuple[int, str]] = []
    done = threading.Event()
    ctx = pool.contexts[1]
    for i in range(50):
        ctx.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    ctx.submit(done.set)
    yield until(done)
    assert seen == [(i, "mq-context-1") for i in range(50)]


@pytest_twisted.inlineCallbacks
def test_a_failing_job_does_not_kill_the_context(pool):
    done = threading.Event()
    pool.contexts[0].submit(lambda: 1 / 0)
    pool.contexts[0].submit(done.set)
    yield until(done)


def test_stop_before_start_is_fine():
    d = ContextPool(2).stop()
    assert d.called


def test_pick_least_loaded_round_robin():
    p = ContextPool(3)
    picks = []
    for _ in range(6):
        ctx = p.pick()
        ctx.connections += 1
        picks.append(ctx.index)
    assert picks == [0, 1, 2, 0, 1, 2]
    p.contexts[1].connections = 0
    assert p.pick().index == 1


@pytest_twisted.inlineCallbacks
def test_timer_runs_in_context_thread_as_the_plugin_that_started_it(pool):
    ctx = pool.contexts[0]
    fired = threading.Event()
    seen = []

    def callback(a, b):
        seen.append((a, b, threading.current_thread().name, current_plugin.get()))
        fired.set()

    token = current_plugin.set("timerplugin")
    try:
        mq.MQ_startTimer(ctx, 0.05, callback, 1, 2)
    finally:
        current_plugin.reset(token)
    yield until(fired)
    assert seen == [(1, 2, "mq-context-0", "timerplugin")]


@pytest_twisted.inlineCallbacks
def test_timer_stop_and_reset_from_other_threads():
    clock = ClockWithThreads()
    ctx = MQ_Context(1, reactor=clock)
    ctx.start()
    fired: list[float] = []
    done = threading.Event()
    try:
        stopped = mq.MQ_startTimer(ctx, 0.05, lambda: fired.append(-1))

        def note():
            fired.append(clock.seconds())
            done.set()

        timer = mq.MQ_startTimer(ctx, 0.05, note)
        yield in_thread(mq.MQ_stopTimer, stopped)
        yield in_thread(mq.MQ_resetTimer, timer, 0.3)
        yield reactor_turn()  # both hand their change to the reactor thread
        assert [c.getTime() for c in clock.getDelayedCalls()] == [0.3]
        clock.advance(0.29)
        assert not done.is_set()
        clock.advance(0.02)
        yield until(done)
        assert fired == [pytest.approx(0.31)]  # the reset one, later; the stopped one never
    finally:
        yield ctx.stop()


@pytest_twisted.inlineCallbacks
def test_stopping_a_context_cancels_its_timers():
    ctx = MQ_Context(0)
    ctx.start()
    mq.MQ_startTimer(ctx, 30, lambda: None)
    assert ctx.timers
    yield ctx.stop()
    assert not ctx.timers  # no DelayedCall left behind in the reactor


@pytest_twisted.inlineCallbacks
def test_io_watch_runs_callback_in_context_thread(pool):
    ctx = pool.contexts[2]
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[tuple] = []
    ready = threading.Event()

    def on_read(fd, events, tag):
        got.append((os.read(fd, 100), events, tag, threading.current_thread().name))
        ready.set()

    watcher = mq.MQ_ioWatch(ctx, a.fileno(), mq.MQ_READ, on_read, "tag")
    try:
        b.send(b"ping")
        yield until(ready)
        ready.clear()
        b.send(b"pong")  # re-armed after the first callback
        yield until(ready)
    finally:
        mq.MQ_ioUnwatch(watcher)
        # Let a re-arm the last callback handed to the reactor run (it must find the watcher
        # gone) before the descriptors close: first the context thread, then the reactor.
        drained = threading.Event()
        ctx.submit(drained.set)
        yield until(drained)
        yield reactor_turn()
        a.close()
        b.close()
    assert got == [
        (b"ping", mq.MQ_READ, "tag", "mq-context-2"),
        (b"pong", mq.MQ_READ, "tag", "mq-context-2"),
    ]
    assert watcher not in reactor.getReaders()
