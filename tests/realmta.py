"""Real mqmta processes (``twistd -n mqmta``) and real clients, for tests that need them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# twistd of this interpreter, whatever is first on PATH
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mqmta exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


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
        wait_port(self.port, proc=self.proc)
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


def no_verify() -> ssl.SSLContext:
    """A client TLS context for the MTA's self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install postfix swaks; .ci/run does this)")
    return path


def spool_stats(data_dir: str) -> dict[str, int]:
    import sqlite3

    from mqtwisted.queue.spool import read_stats

    return read_stats(sqlite3.connect(os.path.join(data_dir, "spool.sqlite3")))


def spool_documents(data_dir: str, queue: str = "outbox") -> list[dict[str, Any]]:
    import sqlite3

    from mqtwisted.queue.spool import read_documents

    db = sqlite3.connect(os.path.join(data_dir, "spool.sqlite3"))
    return [doc for _, doc in read_documents(db, queue, 10**9)]
