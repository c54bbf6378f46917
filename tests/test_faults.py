"""Fault isolation: plugins that raise, never hand control back, or block their thread forever
(issue 7).  A real ``twistd mqmta`` with a plugin directory in tmp and a short
``--plugin-timeout``; each faulty hook fires only for a sender that asks for it.

For each fault: the session that meets it gets a 4xx reply (never a 5xx, never a hang past the
plugin timeout, never an accepted message); sessions that do not touch it keep being served,
promptly, while and after it happens; and SIGTERM still ends the process in bounded time.
"""

from __future__ import annotations

import signal
import smtplib
import threading
import time

import pytest

from tests.realmta import MTAProcess
from tests.test_plugins_support import write_plugins

pytestmark = pytest.mark.slow

PLUGIN_TIMEOUT = 1.0

FAULTY = """
def mq_smtp_in_mailfrom(ctx, conn, address):
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
    time.sleep(0.2)  # the fault is in progress (held or blocked) while others come and go
    during = many(mta.port, 6)
    hit.join(30)
    after = many(mta.port, 8)  # and after it, when the faulty context may be idle or stuck

    code, took = victim["r"]
    assert 400 <= code < 500, f"the faulty session got {code}"
    assert took < PLUGIN_TIMEOUT + 3, f"the faulty session waited {took:.1f}s"
    for label, results in (("during", during), ("after", after)):
        codes = [c for c, _ in results]
        slow = [t for c, t in results if isinstance(t, float) and t > PLUGIN_TIMEOUT]
        assert codes == [250] * len(results), f"{label} the {fault} fault, healthy sessions got {results}"
        assert not slow, f"{label} the {fault} fault, healthy sessions waited {slow}"
    took = _shutdown_is_bounded(mta)
    print(f"\n{fault}: faulty session {code} after {victim['r'][1]:.2f}s; shutdown {took:.1f}s")
