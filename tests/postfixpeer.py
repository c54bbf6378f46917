"""A private Postfix instance for the tests, and the session-wide one they share.

Each instance has its own config, queue and data directories (``postfix -c DIR start``), never
the system's.  Postfix's daemons run as the ``postfix`` user, so the instance lives under
/var/tmp (pytest's tmp_path is mode 0700 under /tmp).  The shared one (``postfix_keeper`` in
tests/conftest.py) keeps mail for example.com in one Maildir; tests that use it tell their own
messages and log lines apart by their addresses, and carry ``pytest.mark.xdist_group("postfix")``
so one worker starts it once.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.peers import write_postfix_config
from tests.conftest import free_port, wait_port

#: A client connecting from this address gets every SMTP command it sends written to the log
#: (Postfix's ``debug_peer_list``): a test sends from here to see what Postfix received.
VERBOSE_PEER = "127.0.0.2"


def need_postfix() -> None:
    if shutil.which("postfix") is None or not os.path.exists("/usr/lib/postfix/sbin/master"):
        pytest.skip("postfix is not installed (apt-get install postfix; .ci/run does this)")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root to start (postfix -c DIR start)")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no postfix user: the postfix package is not fully installed")


class PostfixInstance:
    """A private Postfix on 127.0.0.1:``port``.  ``relay_port`` set: it relays everything to
    mqmta there; unset: it keeps mail for example.com in ``maildir``."""

    def __init__(self, relay_port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqtest-postfix-", dir="/var/tmp"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.conf = self.dir / "conf"
        self.maillog = self.dir / "maillog"
        self.maildir = self.dir / "mail" / "inbox"
        self.relay_port = relay_port

    def start(self) -> PostfixInstance:
        postfix = pwd.getpwnam("postfix")
        for sub in ("conf", "queue", "data", "mail"):
            (self.dir / sub).mkdir()
        for sub in ("data", "mail"):
            shutil.chown(self.dir / sub, postfix.pw_uid, postfix.pw_gid)
        if self.relay_port is not None:
            routing = (
                "relay_domains = example.com\nrelay_transport = relay\ndefault_transport = smtp\n"
                f"relayhost = [127.0.0.1]:{self.relay_port}\n"
            )
        else:
            # The virtual delivery agent keeps every message for example.com in one Maildir.
            routing = (
                "virtual_mailbox_domains = example.com\n"
                f"virtual_mailbox_base = {self.dir}/mail\n"
                "virtual_mailbox_maps = static:inbox/\n"
                f"virtual_uid_maps = static:{postfix.pw_uid}\n"
                f"virtual_gid_maps = static:{postfix.pw_gid}\n"
            )
        write_postfix_config(self.conf, self.dir, f"127.0.0.1:{self.port}", "postfix.test",
                             f"smtp_host_lookup = native\ndebug_peer_list = {VERBOSE_PEER}\n{routing}")
        r = subprocess.run(["postfix", "-c", str(self.conf), "start"], capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"postfix start failed: {(r.stdout + r.stderr)[-1500:]}")
        wait_port(self.port, 30)
        return self

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=60)
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        deadline = time.monotonic() + 15
        while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def kept(self, marker: bytes = b"") -> list[bytes]:
        """The messages in the Maildir (those containing ``marker``)."""
        new = self.maildir / "new"
        found = [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []
        return [m for m in found if marker in m]
