"""Helpers every kind of test uses: free ports, waiting for a condition, sending mail with
smtplib, and an smtp-sink to deliver to.

Waiting is always for a condition with a deadline, never a bare sleep before an assertion: a
test that polls states *what* it waits for, and fails with that text when it does not happen.
``wait_until`` is for tests that run in the reactor (``yield``/``await`` it); ``block_until``
for tests that drive child processes from the test's own thread.

Test modules import these by name (``from tests.conftest import free_port``); ``tests`` is a
package, so this is the module pytest loads as the conftest, not a second copy.
"""

from __future__ import annotations

import inspect
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from twisted.internet import defer, reactor, task, threads
from twisted.logger import globalLogPublisher

from tests.trialcases import pytest_pycollect_makeitem  # noqa: F401  (trial TestCases run in trial)

# Hypothesis's timing checks measure the machine, not the code: with three test processes on two
# cores a generator can be slow for reasons of its own, so only the correctness checks stay on.
settings.register_profile("mqmta", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("mqmta")

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: test\r\n\r\nHello.\r\n"


def need(tool: str) -> str:
    """The path of ``tool``, or skip: the peers come from Debian's postfix and swaks packages."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install postfix swaks; .ci/run does this)")
    return path

def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` of reactor time (to let time pass, not to wait
    for something: use ``wait_until`` for that)."""
    return task.deferLater(reactor, seconds, lambda: None)


class ClockWithThreads(task.Clock):
    """A ``task.Clock`` for code whose threads report back to the reactor (plugin contexts, the
    spool thread): the test moves time with ``advance``; what the threads hand over with
    ``callFromThread`` runs on the real reactor."""

    def callFromThread(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:  # noqa: N802
        reactor.callFromThread(fn, *args, **kw)


def reactor_turn() -> defer.Deferred:
    """Fires once everything other threads handed to the reactor (``callFromThread``) before
    now has run: that queue is first in, first out."""
    d: defer.Deferred = defer.Deferred()
    reactor.callFromThread(d.callback, None)
    return d


def in_thread(fn: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
    """Run a blocking client (smtplib, a subprocess) off the reactor thread."""
    return threads.deferToThread(fn, *args, **kw)


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               step: float = 0.05) -> defer.Deferred:
    """Fires when ``predicate()`` is true (it may return an awaitable); fails with ``what`` after
    ``timeout`` seconds.  The reactor keeps running meanwhile."""

    async def poll() -> None:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached in {timeout} s")
            await sleep(step)

    return defer.ensureDeferred(poll())


def block_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
                step: float = 0.05) -> None:
    """``wait_until`` for a test that blocks its own thread (no reactor running)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        time.sleep(step)


def no_verify() -> ssl.SSLContext:
    """A client TLS context for the MTA's self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send_mail(port: int, *, rcpts: Iterable[str] = ("b@example.com",), msg: bytes | str = MSG,
              sender: str = "a@example.com", starttls: bool = False, implicit: bool = False,
              login: tuple[str, str] | None = None, count: int = 1,
              timeout: float = 20.0) -> dict[str, tuple[int, bytes]]:
    """One smtplib session to 127.0.0.1:``port`` sending ``msg`` ``count`` times; returns the
    refused recipients of the last message (smtplib raises when all are refused)."""
    cls = smtplib.SMTP_SSL if implicit else smtplib.SMTP
    kw = {"context": no_verify()} if implicit else {}
    refused: dict[str, tuple[int, bytes]] = {}
    with cls("127.0.0.1", port, timeout=timeout, **kw) as s:
        s.ehlo("client.test")
        if starttls:
            s.starttls(context=no_verify())
            s.ehlo("client.test")
        if login:
            s.login(*login)
        for _ in range(count):
            refused = s.sendmail(sender, list(rcpts), msg)
    return refused


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port: accepts everything, keeps nothing."""
    path = need("smtp-sink")
    port = free_port()
    proc = subprocess.Popen([path, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 10, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(scope="session")
def postfix_keeper() -> Iterator[Any]:
    """A private Postfix (tests/postfixpeer.py) that keeps mail for example.com in a Maildir,
    shared by the tests of one worker: mark them ``pytest.mark.xdist_group("postfix")``."""
    from tests.postfixpeer import PostfixInstance, need_postfix

    need_postfix()
    postfix = PostfixInstance().start()
    try:
        yield postfix
    finally:
        postfix.stop()


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    """Every log event emitted while the test runs, in order."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
