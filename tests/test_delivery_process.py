"""``--delivery-processes 1``: delivery in a worker process of its own, on the shared spool.

Real ``twistd -n mqmta`` processes, a real smtp-sink, real signals: the worker delivers what the
server accepted, its attempts show in the parent's ``/metrics`` and log, it is started again when
it dies (nothing lost), it stops with the MTA and when the MTA is killed, and a second worker waits
for the first one's lock instead of delivering the same documents twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from mqtwisted.metrics import Metrics
from mqtwisted.options import ConfigError, MQOptions
from tests.conftest import block_until, free_port, send_mail
from tests.realmta import MTAProcess, spool_stats

pytestmark = pytest.mark.slow

MSG = b"From: a@example.com\r\nSubject: worker\r\n\r\nHello.\r\n"
#: the watchdog's limit in these tests (the default, 30 s, would make them wait that long): three
#: snapshot intervals.  A new worker has STARTING_LIMIT for its first word (at a limit of 4 s
#: counted from its start, a replacement was itself killed while importing, under load).
SILENT_LIMIT = 3.0


def workers(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "mqtwisted.delivery_process"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(tmp_path, smtp_sink: int, *args: str) -> MTAProcess:
    return MTAProcess(str(tmp_path / "data"), "--delivery-processes=1", f"--smarthost=127.0.0.1:{smtp_sink}",
                      *args).start()


def test_worker_delivers_and_reports_to_the_parent(tmp_path, smtp_sink):
    www = free_port()
    mta = start(tmp_path, smtp_sink, f"--www-port={www}")
    try:
        block_until(lambda: workers(mta.proc.pid), what="a delivery worker")
        send_mail(mta.port, count=20, msg=MSG)
        block_until(lambda: spool_stats(mta.data_dir).get("success", 0) == 20, what="20 deliveries")
        assert spool_stats(mta.data_dir).get("outbox", 0) == 0

        def scraped() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{www}/metrics", timeout=10) as r:
                text = r.read().decode()
            return 'mqmta_delivery_attempts_total{result="accepted",state="message"} 20.0' in text

        block_until(scraped, 10, "20 accepted attempts in the parent's /metrics")

        # The console's views in the parent show the worker's deliveries: the destinations board,
        # the delivery log and the outcome counts come with its snapshots.
        def view(path: str) -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{www}{path}", timeout=10) as r:
                return json.loads(r.read())

        [row] = view("/v1/destinations")["destinations"]
        assert row["site"] == "127.0.0.1" and row["delivered"] == 20
        assert [a["outcome"] for a in view("/v1/log")["attempts"]] == ["delivered"] * 20
        assert view("/v1/overview")["totals"]["delivered"] == 20
    finally:
        mta.stop()
    log = mta.output()
    # The worker's attempt lines are in the MTA's log, marked as the delivery worker's.
    assert log.count("[delivery] delivery to b@example.com") == 20
    assert "Traceback" not in log


def test_worker_lines_reach_a_rotating_logfile_through_the_parent(tmp_path, smtp_sink):
    # twistd's --logfile rotates, so only the parent writes it: the worker forwards its events.
    logfile = tmp_path / "mta.log"
    mta = MTAProcess(str(tmp_path / "data"), "--delivery-processes=1", f"--smarthost=127.0.0.1:{smtp_sink}")
    mta.start(f"--logfile={logfile}")
    try:
        send_mail(mta.port, count=5, msg=MSG)
        block_until(lambda: spool_stats(mta.data_dir).get("success", 0) == 5, what="5 deliveries")
        block_until(lambda: logfile.read_text().count("[delivery] delivery to b@example.com") == 5, 10,
              "5 attempt lines in the log file")
    finally:
        mta.stop()


def test_sighup_reconfigures_the_worker(tmp_path, smtp_sink):
    dead = free_port()
    config = tmp_path / "mqmta.conf"
    config.write_text(f"smarthost: 127.0.0.1:{dead}\nretry-interval: 1\n")
    mta = MTAProcess(str(tmp_path / "data"), "--delivery-processes=1", f"--config={config}").start()
    try:
        send_mail(mta.port, count=3, msg=MSG)
        block_until(lambda: spool_stats(mta.data_dir).get("retry", 0) >= 3, what="failed attempts at the dead port")
        assert spool_stats(mta.data_dir).get("success", 0) == 0
        config.write_text(f"smarthost: 127.0.0.1:{smtp_sink}\nretry-interval: 1\n")
        mta.proc.send_signal(signal.SIGHUP)
        # The worker is not restarted: the same process delivers to the new smarthost.
        (worker,) = workers(mta.proc.pid)
        block_until(lambda: spool_stats(mta.data_dir).get("success", 0) == 3, what="delivery after the reload")
        assert workers(mta.proc.pid) == [worker]
    finally:
        mta.stop()


def test_a_dead_worker_is_replaced_and_nothing_is_lost(tmp_path, smtp_sink):
    mta = start(tmp_path, smtp_sink, "--delivery-restart-delays=0.2")
    try:
        block_until(lambda: workers(mta.proc.pid), what="a delivery worker")
        (first,) = workers(mta.proc.pid)
        send_mail(mta.port, count=10, msg=MSG)
        os.kill(first, signal.SIGKILL)
        send_mail(mta.port, count=10, msg=MSG)  # accepted while no worker runs: they wait in the outbox
        block_until(lambda: workers(mta.proc.pid) and workers(mta.proc.pid) != [first], what="a new worker")
        block_until(lambda: spool_stats(mta.data_dir).get("outbox", 0) == 0 and
              spool_stats(mta.data_dir).get("success", 0) >= 20, what="every message delivered")
    finally:
        mta.stop()
    assert "delivery worker ended after" in mta.output()


def test_worker_stops_with_the_mta(tmp_path, smtp_sink):
    mta = start(tmp_path, smtp_sink)
    block_until(lambda: workers(mta.proc.pid), what="a delivery worker")
    (worker,) = workers(mta.proc.pid)
    send_mail(mta.port, count=5, msg=MSG)
    mta.stop()
    assert not alive(worker)
    assert "shutdown complete" in mta.output()


def test_worker_stops_when_the_mta_is_killed(tmp_path, smtp_sink):
    mta = start(tmp_path, smtp_sink)
    block_until(lambda: workers(mta.proc.pid), what="a delivery worker")
    (worker,) = workers(mta.proc.pid)
    mta.kill(signal.SIGKILL)
    # End of file on its stdin: the worker stops by itself, it does not deliver on as an orphan.
    block_until(lambda: not alive(worker), 20, "the orphaned worker to exit")


def test_a_worker_waits_for_the_spool_lock(tmp_path, smtp_sink):
    data = tmp_path / "data"
    data.mkdir()
    held = os.open(data / "delivery.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # as a worker still draining would
    mta = start(tmp_path, smtp_sink)
    try:
        send_mail(mta.port, count=3, msg=MSG)
        # The worker tries for the lock once a second and says so each time: three tries in, the
        # mail accepted before them has had time to be delivered, had the lock been ignored.
        block_until(lambda: mta.output().count("still holds delivery.lock") >= 3, 60, "three tries for the lock")
        assert spool_stats(mta.data_dir).get("outbox") == 3, "delivered without the lock"
        os.close(held)
        block_until(lambda: spool_stats(mta.data_dir).get("success", 0) == 3, 60, "delivery after the lock")
    finally:
        mta.stop()
    assert "another delivery worker still holds delivery.lock" in mta.output()


def test_more_than_one_worker_needs_amqp():
    with pytest.raises(ConfigError, match="at most 1"):
        MQOptions().parseOptions(["--delivery-processes=2"])
    opts = MQOptions()
    opts.parseOptions(["--delivery-processes=3", "--queue=amqp://guest:guest@127.0.0.1/"])
    assert opts["delivery-processes"] == 3


def nice_of(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_the_worker_yields_the_cpu_to_sessions(tmp_path, smtp_sink):
    mta = start(tmp_path, smtp_sink, "--delivery-nice=7")
    try:
        block_until(lambda: workers(mta.proc.pid), what="a delivery worker")
        send_mail(mta.port, count=3, msg=MSG)  # the worker's spool thread exists once it has delivered
        block_until(lambda: spool_stats(mta.data_dir).get("success") == 3, what="3 delivered")
        (worker,) = workers(mta.proc.pid)
        base = nice_of(mta.proc.pid)
        threads = os.listdir(f"/proc/{worker}/task")
        assert len(threads) > 1
        assert {nice_of(worker, int(t)) for t in threads} == {min(19, base + 7)}
    finally:
        mta.stop()


def test_delivery_nice_is_a_nice_increment():
    with pytest.raises(ConfigError, match="0-19"):
        MQOptions().parseOptions(["--delivery-nice=20"])
    opts = MQOptions()
    opts.parseOptions([])
    assert opts["delivery-nice"] == 10


def test_pokes_are_paced():
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from mqtwisted.delivery_process import POKE_INTERVAL, DeliveryProcess

    opts = MQOptions()
    opts.parseOptions([])
    clock = Clock()
    dp = DeliveryProcess(opts, queue=None, reactor=clock)
    dp.worker = type("W", (), {"transport": StringTransport()})()
    sent = dp.worker.transport
    dp._published()
    clock.advance(0)
    assert sent.value() == b"\n"  # the first commit pokes at once
    for _ in range(50):  # a burst of commits within one interval: one more poke, at its end
        dp._published()
        clock.advance(POKE_INTERVAL / 100)
    assert sent.value() == b"\n"
    clock.advance(POKE_INTERVAL)
    assert sent.value() == b"\n\n"
    clock.advance(10 * POKE_INTERVAL)
    assert sent.value() == b"\n\n"  # nothing committed since: nothing to say


def test_counts_of_a_replaced_worker_are_kept():
    m = Metrics()
    m.attempt("message", "accepted")
    m.worker_reported("delivery", {"attempts": [["message", "accepted", 5]],
                                   "hooks": [["p", "mq_smtp_out_sent", [2.0, 0.5] + [0.0] * 14]]})
    assert m.attempt_counts() == {("message", "accepted"): 6}
    m.worker_ended("delivery")
    m.worker_reported("delivery", {"attempts": [["message", "accepted", 1]], "hooks": []})
    assert m.attempt_counts() == {("message", "accepted"): 7}
    assert m.hooks()[("p", "mq_smtp_out_sent")][:2] == [2.0, 0.5]


def test_a_worker_stuck_past_the_shutdown_timeout_is_killed(tmp_path):
    # A remote that accepts and never speaks holds the worker's session: twistd must still stop
    # within shutdown-timeout (plus a little), kill the worker, and keep the message queued.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(10)
    try:
        mta = MTAProcess(str(tmp_path / "data"), "--delivery-processes=1", "--shutdown-timeout=1",
                         f"--smarthost=127.0.0.1:{silent.getsockname()[1]}").start()
        block_until(lambda: workers(mta.proc.pid), what="a delivery worker")
        (worker,) = workers(mta.proc.pid)
        send_mail(mta.port, count=1, msg=MSG)
        silent.settimeout(20)
        conn, _ = silent.accept()  # the worker is connected and waiting for a greeting
        started = time.monotonic()
        mta.stop()
        assert time.monotonic() - started < 15  # the behaviour: bounded by --shutdown-timeout=1
        block_until(lambda: not alive(worker), 5, "the stuck worker killed")  # SIGKILL is not instant
        assert "did not stop; killing it" in mta.output()
        assert spool_stats(mta.data_dir).get("outbox") == 1  # not lost: due again at next start
        conn.close()
    finally:
        silent.close()


def test_a_silent_worker_is_replaced(tmp_path, smtp_sink):
    # SIGSTOP: the worker neither dies nor reports. After the silence limit the MTA kills it and a
    # new one delivers what was accepted meanwhile.
    mta = start(tmp_path, smtp_sink, f"--delivery-silence-limit={SILENT_LIMIT}", "--delivery-restart-delays=0.2")
    try:
        # Stopped once it has spoken: before that it would have STARTING_LIMIT, not SILENT_LIMIT.
        block_until(lambda: " ready after " in mta.output(), what="a delivery worker's first word")
        (first,) = workers(mta.proc.pid)
        os.kill(first, signal.SIGSTOP)
        send_mail(mta.port, count=3, msg=MSG)
        block_until(lambda: workers(mta.proc.pid) and workers(mta.proc.pid) != [first], SILENT_LIMIT + 20,
              "a replacement for the stopped worker")
        block_until(lambda: spool_stats(mta.data_dir).get("success", 0) == 3, 60, "delivery by the new worker")
    finally:
        mta.stop()
    assert "silent for" in mta.output(), mta.output()


class _Spawner:
    """A Clock that also spawns (pretend) processes: the watchdog and the restart back-off run on
    simulated time."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.callLater, self.seconds, self.advance = self.clock.callLater, self.clock.seconds, self.clock.advance
        self.spawned: list = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, childFDs=None):
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        transport.pid = 1000 + len(self.spawned)
        transport.signals = []
        transport.signalProcess = transport.signals.append
        transport.closeStdin = lambda: None
        proto.makeConnection(transport)
        self.spawned.append(proto)
        return transport


def test_the_watchdog_and_the_restart_back_off_follow_their_settings():
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    from mqtwisted.delivery_process import DeliveryProcess

    opts = MQOptions()
    opts.parseOptions(["--delivery-silence-limit=3", "--delivery-restart-delays=0.5,2"])
    reactor = _Spawner()
    queue = type("Q", (), {"watch": lambda self, name, callback: None})()
    dp = DeliveryProcess(opts, queue, reactor=reactor, silent_limit=opts["delivery-silence-limit"],
                         restart_delays=opts["delivery-restart-delays"])
    dp.startService()
    first = reactor.spawned[0]
    for _ in range(5):  # a worker that keeps talking is never killed
        reactor.advance(2.5)
        dp.message_received(b"{}")
    assert first.transport.signals == []
    reactor.advance(3.5)  # silent for longer than the limit: killed at the next check
    assert first.transport.signals == ["KILL"]

    def dies(worker) -> None:
        worker.processEnded(Failure(ProcessTerminated(signal=9)))

    dies(first)
    reactor.advance(0.49)
    assert len(reactor.spawned) == 1
    reactor.advance(0.02)  # the first delay
    assert len(reactor.spawned) == 2
    for expected in (3, 4):  # dying young again: the last delay repeats
        dies(reactor.spawned[-1])
        reactor.advance(1.99)
        assert len(reactor.spawned) == expected - 1
        reactor.advance(0.02)
        assert len(reactor.spawned) == expected
    dp.stopService()
    assert not reactor.clock.getDelayedCalls()


def test_a_new_worker_has_the_starting_limit_for_its_first_word():
    from mqtwisted.delivery_process import STARTING_LIMIT, DeliveryProcess

    reactor = _Spawner()
    queue = type("Q", (), {"watch": lambda self, name, callback: None})()
    dp = DeliveryProcess(MQOptions(), queue, reactor=reactor, silent_limit=3.0)
    dp.startService()
    worker = reactor.spawned[0]
    reactor.advance(STARTING_LIMIT - 1)  # importing, past the silence limit: left alone
    assert worker.transport.signals == []
    dp.message_received(b"{}")  # its first word: from now on the silence limit counts
    reactor.advance(4.5)
    assert worker.transport.signals == ["KILL"]
    dp.stopService()

    dp = DeliveryProcess(MQOptions(), queue, reactor=reactor, silent_limit=3.0)
    dp.startService()
    mute = reactor.spawned[-1]
    reactor.advance(STARTING_LIMIT + 1.5)  # never a word: killed after the starting limit
    assert mute.transport.signals == ["KILL"]
    dp.stopService()


def test_every_option_value_reaches_a_delivery_worker_as_json() -> None:
    # The worker gets the MTA's options as one JSON line; a value JSON cannot carry (a parsed
    # smtp-connection-rate) stopped every --delivery-processes start.
    import json

    from mqtwisted.delivery_process import worker_options
    from mqtwisted.options import MQOptions

    o = MQOptions()
    o.parseOptions(["--smtp-connection-rate", "5/600"])
    sent = json.loads(json.dumps(worker_options(o)))
    assert sent["smtp-connection-rate"] == "5/600" and sent["tls-ca"] == "" and sent["mta-sts"] is True
