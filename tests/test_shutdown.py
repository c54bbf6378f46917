"""Graceful shutdown of a real ``twistd mqmta``: SIGTERM in the middle of an ``smtp-source`` run
(plus clients of our own that count every 250) loses no acknowledged message, and the plugins see
``mq_context_cleanup`` in every context thread and ``mq_cleanup`` once."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import threading
import time

import pytest

from tests.conftest import block_until, need
from tests.realmta import MTAProcess, spool_documents

pytestmark = pytest.mark.slow

HOOKLOG = """\
import os
import threading

from mqtwisted import api as mq

LOG = os.environ["MQ_TEST_HOOK_LOG"]


def _log(line):
    with open(LOG, "a") as f:
        f.write(line + "\\n")


def mq_version():
    return mq.MQ_API_VERSION


def mq_initialize():
    _log("mq_initialize")


def mq_context_initialize(ctx):
    _log("mq_context_initialize " + threading.current_thread().name)


def mq_context_cleanup(ctx):
    _log("mq_context_cleanup " + threading.current_thread().name)


def mq_cleanup():
    _log("mq_cleanup")


def mq_smtp_in_rcptto(ctx, conn, address):
    return False
"""


class Counting:
    """smtplib clients sending until the server goes away, remembering every Subject answered 250."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def run(self, me: int) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                while not self.stop.is_set():
                    n += 1
                    subject = f"counted-{me}-{n}"
                    msg = f"From: a@example.com\r\nSubject: {subject}\r\n\r\n{'x' * 70}\r\n{'y' * 900}\r\n".encode()
                    s.sendmail("a@example.com", ["b@example.com"], msg)
                    with self.lock:
                        self.acked.append(subject)
        except (smtplib.SMTPException, OSError) as e:
            # 421 shutting down, or the connection closed: the run is over
            self.errors.append(repr(e))

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_sigterm_during_smtp_source_loses_nothing_and_cleans_up(tmp_path, monkeypatch):
    smtp_source = need("smtp-source")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hooklog.py").write_text(HOOKLOG)
    hook_log = tmp_path / "hooks.log"
    monkeypatch.setenv("MQ_TEST_HOOK_LOG", str(hook_log))
    data = tmp_path / "data"
    mta = MTAProcess(
        str(data), f"--plugin-directory={plugins}", "--threads=3", "--delivery=off", "--shutdown-timeout=5",
    ).start()
    source = subprocess.Popen(
        [smtp_source, "-s", "8", "-m", "100000", "-l", "3000", "-f", "src@example.com", "-t", "dst@example.com",
         f"127.0.0.1:{mta.port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    counting = Counting(mta.port, clients=4)
    counting.start()
    try:
        # Shut down in the middle of the load: once plenty of sessions have had messages accepted.
        block_until(lambda: len(counting.acked) >= 20 or counting.errors, 30, "messages accepted under load")
        assert len(counting.acked) >= 20, counting.errors
        started = time.monotonic()
        mta.proc.send_signal(signal.SIGTERM)
        mta.proc.wait(30)
        took = time.monotonic() - started
    finally:
        counting.join()
        source.kill()
        source.wait()
        mta.kill()
    output = mta.output()
    assert mta.proc.returncode in (0, -signal.SIGTERM), output
    assert took < 5 + 5, output  # bounded by --shutdown-timeout (plus the close grace)
    assert "shutdown complete" in output
    print(f"acked {len(counting.acked)}, client errors {counting.errors}, took {took:.2f}s")

    docs = spool_documents(str(data), "outbox")
    stored = {d["mime"].split("Subject: ", 1)[1].split("\r\n", 1)[0] for d in docs if "Subject: counted-" in d["mime"]}
    missing = [s for s in counting.acked if s not in stored]
    assert not missing, f"{len(missing)} of {len(counting.acked)} acknowledged messages lost: {missing[:5]}"
    from_source = [d for d in docs if d["envelope"] == "src@example.com"]
    assert from_source, "smtp-source got nothing through"

    lines = hook_log.read_text().splitlines()
    inits = sorted(line.split()[1] for line in lines if line.startswith("mq_context_initialize"))
    cleanups = sorted(line.split()[1] for line in lines if line.startswith("mq_context_cleanup"))
    assert len(inits) == 3 and cleanups == inits, lines  # each thread cleaned up, in that thread
    assert lines.count("mq_cleanup") == 1 and lines[-1] == "mq_cleanup", lines
    assert lines.count("mq_initialize") == 1
