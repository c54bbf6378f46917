"""Real mqmta processes (``twistd -n mqmta``) and real clients, for tests that need them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from tests.conftest import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# twistd of this interpreter, whatever is first on PATH
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def env() -> dict[str, str]:
    e = dict(os.environ)
    # twisted.plugins finds twisted/plugins/mqmta_plugin.py on any sys.path entry
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


class MTAProcess:
    """``twistd -n mqmta`` as a child process on a free port."""

    def __init__(self, data_dir: str, *args: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        if not any(a.startswith(("--delivery", "--smarthost", "--dns-server")) for a in args):
            # Tests send traffic to loopback only: without a smarthost or a loopback DNS server,
            # delivery would ask the system's resolver about example.com.
            args = ("--delivery=off", *args)
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(data_dir, "twistd.log")

    def start(self, *twistd_args: str, service_args: bool = True) -> MTAProcess:
        os.makedirs(self.data_dir, exist_ok=True)
        cmd = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *twistd_args]
        if service_args:
            cmd += [
                "mqmta", f"--data-dir={self.data_dir}", f"--smtp-port={self.port}", "--www-port=",
                "--hostname=mx.test", *self.args,
            ]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env(), stdout=self.log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        wait_port(self.port, 60, proc=self.proc)  # a deadline, not a delay: generous under load
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        if hasattr(self, "log"):
            self.log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def spool_stats(data_dir: str) -> dict[str, int]:
    import sqlite3

    from mqtwisted.queue.spool_tables import read_stats

    return read_stats(sqlite3.connect(os.path.join(data_dir, "spool.sqlite3")))


def spool_documents(data_dir: str, queue: str = "outbox") -> list[dict[str, Any]]:
    import sqlite3

    from mqtwisted.queue.spool_tables import read_documents

    db = sqlite3.connect(os.path.join(data_dir, "spool.sqlite3"))
    return [doc for _, doc in read_documents(db, queue, 10**9)]
