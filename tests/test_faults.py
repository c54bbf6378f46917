"""Fault isolation: plugins that raise, never hand control back, or block their thread
forever; and, outbound, remote servers that stall, reset, or answer slowly.

Plugins:  A real ``twistd mqmta`` with a plugin directory in tmp and a short
``--plugin-timeout``; each faulty hook fires only for a sender that asks for it.

For each fault: the session that meets it gets a 4xx reply (never a 5xx, never a hang past the
plugin timeout, never an accepted message); sessions that do not touch it keep being served,
promptly, while and after it happens; and SIGTERM still ends the process in bounded time.

Outbound (at the end of this file): the delivery service runs in this process on the real reactor
with an in-memory queue, each message naming its destination by a per-message ``smarthost`` (two
ports, two destinations); a bad destination holds at most its connection cap and mail for the
other keeps flowing meanwhile.
"""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor

from mqtwisted.contexts import STUCK_AFTER
from mqtwisted.delivery import DeliveryOptions, DeliveryService
from mqtwisted.queue import Publication
from tests.conftest import block_until, wait_until
from tests.deliveryhelpers import StaticResolver, doc
from tests.memqueue import MemoryQueue
from tests.realmta import MTAProcess
from tests.smtppeers import ScriptedFactory, ScriptedSMTP
from tests.test_plugins_support import write_plugins

pytestmark = pytest.mark.slow

PLUGIN_TIMEOUT = 1.0

FAULTY = """
def mq_smtp_in_mailfrom(ctx, conn, address):
    if address.split("@")[0] in ("raise", "hold", "block"):
        open(address.split("@")[0] + ".entered", "w").close()  # in the data directory (the cwd)
    if address.startswith("raise@"):
        raise RuntimeError("plugin bug")
    if address.startswith("hold@"):
        return True  # takes control and never calls MQ_continue
    if address.startswith("block@"):
        threading.Event().wait()  # this context's thread never comes back
    return False
"""

MSG = "Subject: x\r\n\r\nhello\r\n"


def session(port: int, sender: str, timeout: float = 20) -> tuple[int, float]:
    """One transaction; the first refusal's code (or 250 at the end of DATA) and its duration."""
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
        s.ehlo("c.test")
        code, _ = s.mail(sender)
        if code != 250:
            return code, time.monotonic() - start
        code, _ = s.rcpt("b@example.com")
        if code != 250:
            return code, time.monotonic() - start
        code, _ = s.data(MSG)
        return code, time.monotonic() - start


def many(port: int, n: int) -> list[tuple[int, float]]:
    """``n`` healthy sessions at once."""
    results: list[tuple[int, float]] = [(0, 0.0)] * n

    def one(i: int) -> None:
        try:
            results[i] = session(port, f"ok{i}@example.com")
        except (OSError, smtplib.SMTPException) as e:
            results[i] = (-1, repr(e))  # type: ignore[assignment]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.fixture
def mta(tmp_path):
    plugins = write_plugins(tmp_path / "plugins", {"faulty.py": FAULTY})
    proc = MTAProcess(
        str(tmp_path / "data"), "--delivery=off", f"--plugin-directory={plugins}", "--threads=2",
        f"--plugin-timeout={PLUGIN_TIMEOUT}", "--shutdown-timeout=3",
    ).start()
    yield proc
    proc.kill()


def _shutdown_is_bounded(mta: MTAProcess, limit: float = 15.0) -> float:
    start = time.monotonic()
    mta.proc.send_signal(signal.SIGTERM)
    try:
        mta.proc.wait(limit)
    except Exception:
        pytest.fail(f"twistd still running {limit}s after SIGTERM:\n{mta.output()[-3000:]}")
    return time.monotonic() - start


@pytest.mark.parametrize("fault", ["raise", "hold", "block"])
def test_faulty_plugin_affects_only_its_sessions(mta, fault):
    assert all(code == 250 for code, _ in many(mta.port, 4))
    victim: dict = {}
    hit = threading.Thread(target=lambda: victim.update(r=session(mta.port, f"{fault}@example.com")))
    hit.start()
    # the fault is in progress (held or blocked) while others come and go
    block_until(lambda: os.path.exists(os.path.join(mta.data_dir, f"{fault}.entered")),
                what=f"the {fault} fault reached")
    # A context counts as stuck after STUCK_AFTER inside one hook (time in another process: no
    # clock to move), and only then do new sessions avoid it.
    time.sleep(2 * STUCK_AFTER)
    during = many(mta.port, 6)
    hit.join(30)
    after = many(mta.port, 8)  # and after it, when the faulty context may be idle or stuck

    code, took = victim["r"]
    assert 400 <= code < 500, f"the faulty session got {code}"
    # End to end with a real twistd: bounded by the plugin timeout is the behaviour under test.
    assert took < PLUGIN_TIMEOUT + 3, f"the faulty session waited {took:.1f}s"
    for label, results in (("during", during), ("after", after)):
        codes = [c for c, _ in results]
        slow = [t for c, t in results if isinstance(t, float) and t > PLUGIN_TIMEOUT]
        assert codes == [250] * len(results), f"{label} the {fault} fault, healthy sessions got {results}"
        assert not slow, f"{label} the {fault} fault, healthy sessions waited {slow}"
    took = _shutdown_is_bounded(mta)
    print(f"\n{fault}: faulty session {code} after {victim['r'][1]:.2f}s; shutdown {took:.1f}s")


# -- outbound: bad remote servers ------------------------------------------------------------------
CAP = 3


class Tracking(protocol.ServerFactory):
    """Counts concurrent connections (and the most there ever were) for any server protocol."""

    def __init__(self, inner: protocol.ServerFactory) -> None:
        self.inner = inner
        self.open = 0
        self.peak = 0
        self.total = 0

    def buildProtocol(self, addr):
        p = self.inner.buildProtocol(addr)
        made, lost = p.connectionMade, p.connectionLost
        factory = self

        def connectionMade():
            factory.open += 1
            factory.total += 1
            factory.peak = max(factory.peak, factory.open)
            made()

        def connectionLost(reason=None):
            factory.open -= 1
            lost(reason)

        p.connectionMade, p.connectionLost = connectionMade, connectionLost
        return p


class Stall(protocol.Protocol):
    """Accepts and never says a word."""


class Reset(protocol.Protocol):
    """Accepts and resets the connection at once."""

    def connectionMade(self):
        self.transport.abortConnection()


class SlowSMTP(ScriptedSMTP):
    """A working server that takes 0.4 s to answer anything."""

    def sendLine(self, line):
        reactor.callLater(0.4, lambda: None if self.transport.disconnecting else ScriptedSMTP.sendLine(self, line))


class SlowFactory(ScriptedFactory):
    def buildProtocol(self, addr):
        p = SlowSMTP()
        p.factory = self
        self.sessions.append(p)
        return p


def _bad(kind: str) -> protocol.ServerFactory:
    if kind == "slow":
        return SlowFactory()
    return protocol.Factory.forProtocol(Stall if kind == "stall" else Reset)


@pytest.mark.parametrize("kind", ["stall", "reset", "slow"])
@pytest_twisted.ensureDeferred
async def test_bad_destination_holds_only_its_cap_and_others_flow(kind):
    bad = Tracking(_bad(kind))
    good = Tracking(ScriptedFactory())
    bad_port = reactor.listenTCP(0, bad, interface="127.0.0.1")
    good_port = reactor.listenTCP(0, good, interface="127.0.0.1")
    queue = MemoryQueue(reactor)
    svc = DeliveryService(
        queue, None,
        DeliveryOptions(helo="mqmta.test", security="none", timeout=2, connect_timeout=2,
                        max_connections_per_domain=CAP, max_messages_per_connection=5,
                        # a transaction per document: each keeps the bad destination busy
                        max_recipients=1, retry_interval=(3600,)),
        resolver=StaticResolver({"127.0.0.1": [("127.0.0.1", ["127.0.0.1"])]}),
    )
    svc.startService()
    n = 30
    pubs = []
    for i in range(n):
        # interleaved, bad first: the bad destination gets its chance to hog everything
        pubs.append(Publication("outbox", doc(f"b{i}@bad.test", smarthost={"hostname": "127.0.0.1", "port": bad_port.getHost().port})))
        pubs.append(Publication("outbox", doc(f"g{i}@good.test", smarthost={"hostname": "127.0.0.1", "port": good_port.getHost().port})))
    try:
        await queue.publish(pubs)
        await wait_until(lambda: len(good.inner.messages) >= n,
                         what=f"all {n} messages at the good destination beside the {kind} one")
        if kind != "reset":
            # Delivered meanwhile, not after: the bad destination still holds connections (its 30
            # messages keep it busy for many reply timeouts, or 0.4 s replies, at CAP at a time).
            assert bad.open > 0, f"the good destination waited for the {kind} one to be done"
        # The bad destination does its worst past its first connections (they time out, reset
        # or finish a slow transaction), and the cap must hold throughout.
        if kind == "slow":
            await wait_until(lambda: len(bad.inner.messages) >= CAP, what="slow transactions completed")
        else:
            await wait_until(lambda: all(d.get("results") for d in queue.docs("outbox")
                                         if d["recipient"].startswith("b")),
                             what=f"every message to the {kind} destination attempted")
        print(f"\n{kind}: {len(good.inner.messages)}/{n} to the good destination; bad destination: "
              f"peak {bad.peak} concurrent connections (cap {CAP}), {bad.total} in all")
        assert bad.peak <= CAP, f"{bad.peak} concurrent connections to the {kind} destination"
        assert good.peak <= CAP
    finally:
        await svc.stopService()
        await wait_until(lambda: bad.open == 0 and good.open == 0, 10, what="connections closed")
        await bad_port.stopListening()
        await good_port.stopListening()
        queue.stop()
