"""Interop with Postfix, the reference MTA, in both directions:

* mqmta delivering to Postfix, which keeps the mail in a Maildir (virtual mailbox domain);
* Postfix relaying into mqmta (``relayhost = [127.0.0.1]:PORT``).

Each test runs a private Postfix instance with its own config, queue and data directories
(``postfix -c DIR start``), never the system's.  Postfix's daemons run as the ``postfix`` user,
so the instance lives under /var/tmp (pytest's tmp_path is mode 0700 under /tmp).
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
import pytest_twisted
from twisted.internet import threads

from bench.peers import write_postfix_config
from mqtwisted.testing import start_mta
from tests.conftest import free_port, send_mail, wait_port, wait_until

pytestmark = pytest.mark.slow


def _need_postfix() -> None:
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
                             f"smtp_host_lookup = native\n{routing}")
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

    def kept(self) -> list[bytes]:
        new = self.maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


BODY = (
    "From: sender@example.org\r\nTo: b@example.com\r\nSubject: interop {n}\r\n\r\n"
    "hello {n}\r\n.a line that starts with a dot\r\n..two dots\r\nlast\r\n"
)


@pytest_twisted.ensureDeferred
async def test_mqmta_delivers_to_postfix_which_keeps_the_mail(tmp_path) -> None:
    _need_postfix()
    postfix = PostfixInstance()
    await threads.deferToThread(postfix.start)
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", smarthost=f"127.0.0.1:{postfix.port}")
    try:
        for n in range(3):
            await threads.deferToThread(send_mail, mta.port, rcpts=[f"user{n}@example.com"], msg=BODY.format(n=n), sender="sender@example.org", timeout=30)

        async def delivered() -> bool:
            return (await mta.queue.stats()).get("success", 0) >= 3

        await wait_until(delivered, 30, "mqmta success results")
        await wait_until(lambda: len(postfix.kept()) >= 3, 30, "messages in Postfix's Maildir")
        assert postfix.log().count("status=sent") == 3
        kept = postfix.kept()
        for message in kept:
            # Dot-stuffing undone by Postfix: the body arrives exactly as sent.
            assert b"\n.a line that starts with a dot\n..two dots\nlast\n" in message.replace(b"\r\n", b"\n")
        assert sorted(m.split(b"Subject: interop ")[1][:1] for m in kept) == [b"0", b"1", b"2"]
        success = await mta.documents("success")
        attempts = [d["results"][-1] for d in success]
        assert {(a["state"], a["result"], a["code"]) for a in attempts} == {("message", "accepted", 250)}
        assert {a["mta"] for a in attempts} == {"postfix.test"}
        assert max(a["messages"] for a in attempts) >= 1
        assert (await mta.queue.stats()).get("outbox", 0) == 0
    finally:
        await mta.stop()
        await threads.deferToThread(postfix.stop)


@pytest_twisted.ensureDeferred
async def test_postfix_relays_into_mqmta(tmp_path) -> None:
    _need_postfix()
    mta = await start_mta(str(tmp_path / "mta"), delivery="off")
    postfix = PostfixInstance(relay_port=mta.port)
    await threads.deferToThread(postfix.start)
    try:
        await threads.deferToThread(send_mail, postfix.port, rcpts=["b@example.com", "c@example.com"], msg=BODY.format(n=7), sender="sender@example.org", timeout=30)

        async def arrived() -> bool:
            return len(await mta.documents("outbox")) >= 2

        await wait_until(arrived, 30, "documents on mqmta's outbox")
        await wait_until(lambda: postfix.log().count("status=sent") >= 2, 15, "status=sent in Postfix's log")
        docs = sorted(await mta.documents("outbox"), key=lambda d: d["recipient"])
        assert [d["recipient"] for d in docs] == ["b@example.com", "c@example.com"]
        assert {d["envelope"] for d in docs} == {"sender@example.org"}
        mime = docs[0]["mime"].replace("\r\n", "\n")
        assert "by postfix.test (Postfix)" in mime  # Postfix's own Received: line
        assert "\nhello 7\n.a line that starts with a dot\n..two dots\nlast\n" in mime
        assert docs[0]["connection"]["remote-ip"] == "127.0.0.1"
    finally:
        await threads.deferToThread(postfix.stop)
        await mta.stop()
