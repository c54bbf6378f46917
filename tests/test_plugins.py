"""PluginRunner: loading, hook order, take-control, errors, timeouts, contexts and pinning."""

from __future__ import annotations

import pickle
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python import threadable

from mqtwisted import api
from mqtwisted.connection import Connection, Reply
from mqtwisted.pluginloader import PluginError, load_plugins
from mqtwisted.plugins import PluginRunner
from tests.conftest import ClockWithThreads, in_thread, wait_until
from tests.test_plugins_support import make_runner_factory, module, write_plugins


@pytest.fixture
def make(tmp_path):
    make, cleanup = make_runner_factory(tmp_path)
    yield make
    cleanup()


def texts(events: list[dict]) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in events)


RECORD = """
def mq_smtp_in_mailfrom(ctx, conn, address):
    CALLS.append((__name__.rsplit("_", 1)[-1], address))
    return False
"""

# -- loading ---------------------------------------------------------------------------------------


def test_plugins_load_in_alphabetical_order_including_packages(tmp_path):
    d = write_plugins(tmp_path / "p", {"b.py": "", "a/": "from . import helper\n", "c.py": ""})
    (d / "a" / "helper.py").write_text("X = 1\n")
    (d / "_disabled.py").write_text("raise RuntimeError('never loaded')\n")
    (d / "notes.txt").write_text("not a plugin\n")
    assert [p.name for p in load_plugins(str(d))] == ["a", "b", "c"]


def test_wrong_version_names_plugin_and_both_versions(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "old.py").write_text("def mq_version():\n    return 999\n")
    with pytest.raises(PluginError) as e:
        load_plugins(str(d))
    message = str(e.value)
    assert "'old'" in message and "999" in message and str(api.MQ_API_VERSION) in message


def test_import_failure_names_plugin_with_traceback(tmp_path):
    d = write_plugins(tmp_path / "p", {"ok.py": "", "broken.py": "1 / 0\n"})
    with pytest.raises(PluginError) as e:
        load_plugins(str(d))
    assert "'broken'" in str(e.value)
    assert "ZeroDivisionError" in str(e.value) and "Traceback" in str(e.value)


def test_missing_mq_version_and_missing_directory(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "bare.py").write_text("X = 1\n")
    with pytest.raises(PluginError, match="'bare'.*mq_version"):
        load_plugins(str(d))
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins(str(tmp_path / "nowhere"))


def test_runner_pickles_as_configuration(make):
    runner = make({"a.py": RECORD}, start=False)
    clone = pickle.loads(pickle.dumps(runner))
    assert isinstance(clone, PluginRunner) and clone is not runner
    assert [p.name for p in clone.plugins] == ["a"]
    assert clone.directory == runner.directory and clone.timeout == runner.timeout


# -- dispatch --------------------------------------------------------------------------------------


def test_undefined_hook_costs_nothing(make):
    runner = make({"a.py": RECORD})
    assert runner.defines("mq_smtp_in_mailfrom")
    assert not runner.defines("mq_smtp_in_rcptto")
    conn = Connection()
    d = runner.run("mq_smtp_in_rcptto", conn, "x@example.com")
    assert d.called and d.result is None
    assert conn.context is None  # not even pinned


@pytest_twisted.inlineCallbacks
def test_hooks_run_in_plugin_order_on_the_pinned_thread(make):
    body = (
        RECORD
        + """
def mq_smtp_in_rcptto(ctx, conn, address):
    CALLS.append((threading.current_thread().name, ctx))
    return False
"""
    )
    runner = make({"b.py": body, "a.py": body, "c.py": body}, threads=3)
    conn = Connection()
    reply = yield runner.run("mq_smtp_in_mailfrom", conn, "s@example.com")
    assert reply is None
    assert module(runner, "a").CALLS + module(runner, "b").CALLS + module(runner, "c").CALLS == [
        ("a", "s@example.com"),
        ("b", "s@example.com"),
        ("c", "s@example.com"),
    ]
    for _ in range(3):
        yield runner.run("mq_smtp_in_rcptto", conn, "r@example.com")
    seen = module(runner, "a").CALLS[1:] + module(runner, "b").CALLS[1:]
    assert {s for s in seen} == {(conn.context.name, conn.context)}
    # Order across plugins is one shared list when they share a module-level recorder:
    order = []
    for name in "abc":
        module(runner, name).CALLS = order
        module(runner, name).mq_smtp_in_mailfrom.__globals__["CALLS"] = order
    yield runner.run("mq_smtp_in_mailfrom", conn, "t@example.com")
    assert [who for who, _ in order] == ["a", "b", "c"]


@pytest_twisted.inlineCallbacks
def test_set_response_refuses_and_later_plugins_see_it(make):
    runner = make(
        {
            "a.py": """
def mq_smtp_in_rcptto(ctx, conn, address):
    if address.startswith("bad"):
        mq.MQ_setResponse(conn, 550, "no such user", "5.1.1")
    return False
""",
            "b.py": """
def mq_smtp_in_rcptto(ctx, conn, address):
    CALLS.append(conn.response)
    return False
""",
        }
    )
    conn = Connection()
    reply = yield runner.run("mq_smtp_in_rcptto", conn, "bad@example.com")
    assert reply == Reply(550, "no such user", "5.1.1") and reply.refuses
    assert module(runner, "b").CALLS == [reply]


@pytest_twisted.inlineCallbacks
def test_per_plugin_connection_data(make):
    body = """
def mq_smtp_in_mailfrom(ctx, conn, address):
    CALLS.append(mq.MQ_connectionData(conn))
    mq.MQ_setConnectionData(conn, __name__ + address)
    mq.MQ_setContextData(ctx, __name__)
    return False
"""
    runner = make({"a.py": body, "b.py": body})
    conn = Connection()
    yield runner.run("mq_smtp_in_mailfrom", conn, "1")
    yield runner.run("mq_smtp_in_mailfrom", conn, "2")
    assert module(runner, "a").CALLS == [None, "mqtwisted_plugin_a1"]
    assert module(runner, "b").CALLS == [None, "mqtwisted_plugin_b1"]
    assert conn.data == {"a": "mqtwisted_plugin_a2", "b": "mqtwisted_plugin_b2"}
    assert conn.context.data == {"a": "mqtwisted_plugin_a", "b": "mqtwisted_plugin_b"}


# -- take control ----------------------------------------------------------------------------------

TAKE = """
HOW = {"mode": "thread", "kind": "continue", "times": 1}

def mq_smtp_in_rcptto(ctx, conn, address):
    CALLS.append(threading.current_thread().name)
    if len(CALLS) > HOW["times"]:
        return False
    control = getattr(mq, "MQ_" + HOW["kind"])
    if HOW["mode"] == "thread":
        threading.Timer(0.05, control, (conn,)).start()
    elif HOW["mode"] == "timer":
        mq.MQ_startTimer(ctx, 0.05, lambda c: (CALLS.append("timer " + threading.current_thread().name), control(c)), conn)
    elif HOW["mode"] == "inline":
        control(conn)
    return True
"""
AFTER = """
def mq_smtp_in_rcptto(ctx, conn, address):
    CALLS.append("after")
    return False
"""


@pytest_twisted.inlineCallbacks
def test_take_control_continue_from_another_thread(make):
    runner = make({"a.py": AFTER, "b.py": TAKE, "c.py": AFTER})
    module(runner, "b").HOW["mode"] = "none"  # the test hands control back itself
    conn = Connection()
    d = runner.run("mq_smtp_in_rcptto", conn, "r@example.com")
    yield wait_until(lambda: module(runner, "b").CALLS, what="b took control")
    assert not d.called and module(runner, "c").CALLS == []  # held by b
    yield in_thread(api.MQ_continue, conn)  # from a thread that is neither reactor nor context
    reply = yield d
    assert reply is None
    assert module(runner, "a").CALLS == ["after"]
    assert module(runner, "c").CALLS == ["after"]


@pytest_twisted.inlineCallbacks
def test_take_control_resumed_from_timer_in_context_thread(make):
    runner = make({"b.py": TAKE, "c.py": AFTER})
    module(runner, "b").HOW["mode"] = "timer"
    conn = Connection()
    reply = yield runner.run("mq_smtp_in_rcptto", conn, "r@example.com")
    assert reply is None
    name = conn.context.name
    assert module(runner, "b").CALLS == [name, "timer " + name]
    assert module(runner, "c").CALLS == ["after"]


@pytest_twisted.inlineCallbacks
def test_control_handed_back_inside_the_hook_before_returning_true(make):
    runner = make({"b.py": TAKE, "c.py": AFTER})
    module(runner, "b").HOW["mode"] = "inline"
    reply = yield runner.run("mq_smtp_in_rcptto", Connection(), "r@example.com")
    assert reply is None and module(runner, "c").CALLS == ["after"]


@pytest_twisted.inlineCallbacks
def test_retry_reruns_the_step_from_the_first_plugin(make):
    runner = make({"a.py": AFTER, "b.py": TAKE, "c.py": AFTER})
    module(runner, "b").HOW["kind"] = "retry"
    reply = yield runner.run("mq_smtp_in_rcptto", Connection(), "r@example.com")
    assert reply is None
    assert module(runner, "a").CALLS == ["after", "after"]  # first plugin ran again
    assert len(module(runner, "b").CALLS) == 2
    assert module(runner, "c").CALLS == ["after"]


@pytest_twisted.inlineCallbacks
def test_complete_skips_the_remaining_plugins(make):
    runner = make({"a.py": AFTER, "b.py": TAKE, "c.py": AFTER})
    module(runner, "b").HOW["kind"] = "complete"
    conn = Connection()
    conn.response = Reply(250, "ok by b")
    reply = yield runner.run("mq_smtp_in_rcptto", conn, "r@example.com")
    assert reply == Reply(250, "ok by b")
    assert module(runner, "a").CALLS == ["after"] and module(runner, "c").CALLS == []


@pytest_twisted.inlineCallbacks
def test_second_hand_back_is_ignored(make, logged):
    runner = make(
        {
            "b.py": """
def mq_smtp_in_rcptto(ctx, conn, address):
    threading.Timer(0.02, lambda: (mq.MQ_continue(conn), mq.MQ_continue(conn))).start()
    return True
""",
            "c.py": AFTER,
        }
    )
    conn = Connection()
    reply = yield runner.run("mq_smtp_in_rcptto", conn, "r@example.com")
    # The second MQ_continue is answered with a warning (which one depends on whether the step
    # has ended by the time it is called); had it counted, c would have run again.
    yield wait_until(lambda: "ignored" in texts(logged) or "which no plugin holds" in texts(logged),
                     what="the second hand-back ignored")
    assert reply is None and module(runner, "c").CALLS == ["after"]


@pytest_twisted.inlineCallbacks
def test_hooks_of_one_connection_run_one_at_a_time(make):
    runner = make(
        {
            "b.py": TAKE
            + """
def mq_smtp_in_close(ctx, conn):
    CALLS.append("close")
    return False
"""
        }
    )
    module(runner, "b").HOW["times"] = 5
    conn = Connection()
    held = runner.run("mq_smtp_in_rcptto", conn, "r@example.com")
    closed = runner.run("mq_smtp_in_close", conn)
    runner.connection_closed(conn)
    yield held
    yield closed
    assert module(runner, "b").CALLS[-1] == "close"


# -- errors and timeouts ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_exception_is_logged_with_plugin_name_and_answered_451(make, logged):
    runner = make(
        {
            "boom.py": """
def mq_smtp_in_mailfrom(ctx, conn, address):
    raise ValueError("kaput")
""",
            "later.py": RECORD,
        }
    )
    reply = yield runner.run("mq_smtp_in_mailfrom", Connection(), "s@example.com")
    assert reply.code == 451 and reply.enhanced == "4.3.0"
    assert module(runner, "later").CALLS == []
    failures = [e for e in logged if "log_failure" in e]
    assert any(e.get("plugin") == "boom" and e["log_failure"].check(ValueError) for e in failures)
    # and the runner goes on
    reply = yield runner.run("mq_smtp_in_mailfrom", Connection(), "s@example.com")
    assert reply.code == 451


@pytest_twisted.inlineCallbacks
def test_timeout_answers_451_447_and_ignores_late_hand_back(tmp_path, logged):
    clock = ClockWithThreads()
    plugins = write_plugins(
        tmp_path / "p",
        {
            "slow.py": """
HELD = []
def mq_smtp_in_mailfrom(ctx, conn, address):
    HELD.append(conn)
    return True
""",
            "z_later.py": RECORD,
        },
    )
    runner = PluginRunner(load_plugins(str(plugins)), threads=1, timeout=0.2, reactor=clock)
    runner.start()
    try:
        conn = Connection()
        d = runner.run("mq_smtp_in_mailfrom", conn, "s@example.com")
        clock.advance(0)  # hand the call to the context thread
        yield wait_until(lambda: module(runner, "slow").HELD, what="slow took control")
        clock.advance(0.19)
        assert not d.called  # within plugin-timeout: still held
        clock.advance(0.02)  # past it (the sweep runs every timeout/10)
        assert d.called
        reply = yield d
        assert reply.code == 451 and reply.enhanced == "4.4.7"
        assert "slow" in texts(logged) and "did not hand back" in texts(logged)
        api.MQ_continue(conn)  # too late: nothing happens
        assert "which no plugin holds" in texts(logged)
        assert module(runner, "z_later").CALLS == []
        # the connection can go on with its next command
        assert not runner.hooks_running
    finally:
        yield runner.stop()


@pytest_twisted.inlineCallbacks
def test_blocking_hook_times_out_too(make):
    runner = make(
        {
            "slow.py": """
GATE = threading.Event()
def mq_smtp_in_mailfrom(ctx, conn, address):
    GATE.wait(30)  # blocks its context thread until the test opens the gate
    CALLS.append("done")
"""
        },
        threads=1,
        timeout=0.1,
    )
    reply = yield runner.run("mq_smtp_in_mailfrom", Connection(), "s@example.com")
    assert reply.enhanced == "4.4.7"
    assert module(runner, "slow").CALLS == []  # answered while the hook still blocks
    module(runner, "slow").GATE.set()
    # let the hook end, so that stopping the runner does not wait for a blocked thread
    yield wait_until(lambda: module(runner, "slow").CALLS, what="the blocking hook returned")


# -- async and Deferred hooks ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_async_hooks_run_on_the_reactor_and_their_result_is_the_verdict(make):
    runner = make(
        {
            "a.py": """
from twisted.internet import reactor, task
from twisted.python import threadable

async def mq_smtp_in_rcptto(ctx, conn, address):
    await task.deferLater(reactor, 0.01, lambda: None)
    CALLS.append((threadable.isInIOThread(), mq.MQ_connectionData(conn)))
    mq.MQ_setConnectionData(conn, "mine")
    if address == "hold":
        reactor.callLater(0.02, mq.MQ_continue, conn)
        return True
    return False
""",
            "b.py": AFTER,
            "c.py": """
from twisted.internet import defer
from twisted.python import threadable

@mq.reactor_hook
def mq_smtp_in_rcptto(ctx, conn, address):
    CALLS.append(threadable.isInIOThread())
    return defer.succeed(address == "stop")
""",
        }
    )
    conn = Connection()
    assert (yield runner.run("mq_smtp_in_rcptto", conn, "x")) is None
    assert (yield runner.run("mq_smtp_in_rcptto", conn, "hold")) is None
    assert module(runner, "a").CALLS == [(True, None), (True, "mine")]
    assert module(runner, "b").CALLS == ["after", "after"]
    assert module(runner, "c").CALLS == [True, True]
    assert conn.data == {"a": "mine"}


@pytest_twisted.inlineCallbacks
def test_failing_async_hook_answers_451(make):
    runner = make({"a.py": "async def mq_smtp_in_data(ctx, conn, mime):\n    raise KeyError(1)\n"})
    reply = yield runner.run("mq_smtp_in_data", Connection(), b"mime")
    assert reply.enhanced == "4.3.0"


@pytest_twisted.inlineCallbacks
def test_unmarked_deferred_hook_is_learnt(make):
    runner = make(
        {
            "a.py": """
from twisted.internet import defer
def mq_smtp_in_data(ctx, conn, mime):
    CALLS.append(threading.current_thread().name)
    return defer.succeed(False)
"""
        }
    )
    for _ in range(2):
        assert (yield runner.run("mq_smtp_in_data", Connection(), b"")) is None
    calls = module(runner, "a").CALLS
    assert calls[0].startswith("mq-context-") and calls[1] == threading.current_thread().name


# -- contexts --------------------------------------------------------------------------------------

LIFECYCLE = """
def mq_initialize():
    CALLS.append(("init", threading.current_thread().name))

def mq_cleanup():
    CALLS.append(("cleanup", threading.current_thread().name))

def mq_context_initialize(ctx):
    CALLS.append(("ctx-init", ctx.index, threading.current_thread().name))
    mq.MQ_setContextData(ctx, threading.get_ident())

def mq_context_cleanup(ctx):
    assert mq.MQ_contextData(ctx) == threading.get_ident()
    CALLS.append(("ctx-cleanup", ctx.index, threading.current_thread().name))

def mq_smtp_in_connect(ctx, conn):
    CALLS.append(("connect", ctx.index, threading.current_thread().name))
    return False
"""


@pytest_twisted.inlineCallbacks
def test_context_lifecycle_once_per_thread_in_that_thread(make):
    runner = make({"a.py": LIFECYCLE}, threads=3)
    calls = module(runner, "a").CALLS
    conns = [Connection() for _ in range(6)]
    yield defer.gatherResults([runner.run("mq_smtp_in_connect", c) for c in conns])
    yield runner.stop()
    yield runner.stop()  # idempotent
    main = threading.current_thread().name
    assert calls[0] == ("init", main) and calls[-1] == ("cleanup", main)
    assert [c for c in calls if c[0] == "init"] == [calls[0]]
    inits = sorted(c[1:] for c in calls if c[0] == "ctx-init")
    cleanups = sorted(c[1:] for c in calls if c[0] == "ctx-cleanup")
    assert inits == cleanups == [(i, f"mq-context-{i}") for i in range(3)]
    connects = [c[1:] for c in calls if c[0] == "connect"]
    assert sorted(connects) == sorted((i, f"mq-context-{i}") for i in range(3) for _ in range(2))
    assert all(not ctx.thread.is_alive() for ctx in runner.contexts)
    # after stop, hooks answer at once without touching the (gone) threads
    reply = yield runner.run("mq_smtp_in_connect", Connection())
    assert reply.code == 421


def test_pinning_least_loaded_and_unpinning(make):
    runner = make({"a.py": LIFECYCLE}, threads=2, start=False)
    conns = [Connection() for _ in range(4)]
    ctxs = [runner.context_for(c) for c in conns]
    assert [c.index for c in ctxs] == [0, 1, 0, 1]
    assert runner.context_for(conns[0]) is ctxs[0]  # pinned for life
    runner.connection_closed(conns[0])
    runner.connection_closed(conns[2])
    runner.connection_closed(conns[2])  # twice is harmless
    assert [c.connections for c in runner.contexts] == [0, 2]
    assert runner.context_for(Connection()).index == 0


@pytest_twisted.inlineCallbacks
def test_blocked_context_does_not_delay_other_contexts(make):
    runner = make(
        {
            "a.py": """
GATE = threading.Event()

def mq_smtp_in_rcptto(ctx, conn, address):
    if address == "slow":
        GATE.wait(30)  # blocks its context thread until the test opens the gate
    return False
"""
        },
        threads=2,
    )
    slow, fast = Connection(), Connection()
    runner.context_for(slow)
    runner.context_for(fast)
    assert slow.context is not fast.context
    blocked = runner.run("mq_smtp_in_rcptto", slow, "slow")
    yield runner.run("mq_smtp_in_rcptto", fast, "fast")  # answered while the other thread blocks
    assert not blocked.called
    module(runner, "a").GATE.set()
    assert (yield blocked) is None


@pytest_twisted.inlineCallbacks
def test_stop_answers_held_steps(make):
    runner = make({"b.py": TAKE})
    module(runner, "b").HOW["mode"] = "none"
    d = runner.run("mq_smtp_in_rcptto", Connection(), "r")
    yield wait_until(lambda: module(runner, "b").CALLS, what="b took control")
    yield runner.stop()
    reply = yield d
    assert reply.code == 421


def test_init_failure_is_logged_not_fatal(make, logged):
    runner = make({"a.py": "def mq_initialize():\n    raise OSError('no config')\n"})
    assert any(e.get("plugin") == "a" for e in logged if "log_failure" in e)
    assert runner._started


def test_reactor_thread_is_the_io_thread():
    # The runner decides "call directly or callFromThread" with isInIOThread.
    assert threadable.isInIOThread()


@pytest_twisted.inlineCallbacks
def test_runner_from_imported_modules(tmp_path):
    import importlib.util

    from mqtwisted.plugins import plugin_from_module

    path = write_plugins(tmp_path / "mine", {"mine.py": RECORD}) / "mine.py"
    spec = importlib.util.spec_from_file_location("mine", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runner = PluginRunner([plugin_from_module(mod)], threads=1, timeout=5)
    runner.start()
    try:
        assert (yield runner.run("mq_smtp_in_mailfrom", Connection(), "x@example.com")) is None
        assert mod.CALLS == [("mine", "x@example.com")]
    finally:
        yield runner.stop()
    with pytest.raises(PluginError, match="'bad'.*mq_version"):
        plugin_from_module(type(mod)("bad"))


@pytest_twisted.inlineCallbacks
def test_late_hand_back_from_timed_out_plugin_does_not_release_another(make):
    runner = make(
        {
            "a.py": """
HELD = []
def mq_smtp_in_mailfrom(ctx, conn, address):
    mq.MQ_startTimer(ctx, 0.4, mq.MQ_continue, conn)  # far too late
    return True
""",
            "b.py": """
def mq_smtp_in_rcptto(ctx, conn, address):
    threading.Timer(0.8, mq.MQ_continue, (conn,)).start()
    return True
""",
            "c.py": AFTER,
        },
        timeout=0.2,
    )
    conn = Connection()
    reply = yield runner.run("mq_smtp_in_mailfrom", conn, "s")
    assert reply.enhanced == "4.4.7"
    start = time.monotonic()
    reply = yield runner.run("mq_smtp_in_rcptto", conn, "r")
    # a's timer fired at 0.4 s while b held rcptto: ignored, so b's step timed out too
    assert reply.enhanced == "4.4.7" and module(runner, "c").CALLS == []
    assert time.monotonic() - start >= 0.15


@pytest_twisted.inlineCallbacks
def test_runner_starts_itself_when_used_before_start(make):
    runner = make({"a.py": RECORD}, start=False)
    d = runner.run("mq_smtp_in_mailfrom", Connection(), "x")
    assert runner._started
    assert (yield d) is None
