"""Pauses and suppressions on a real ``twistd mqmta`` with its delivery worker process: the
``mqmta pause``/``suppress`` commands write the data directory's state while it runs, and the
worker sees each change without a restart (aiosmtpd as the smarthost, on loopback)."""

from __future__ import annotations

import json
import smtplib
import time

import pytest
from aiosmtpd.controller import Controller

from mqtwisted.cli import main
from tests.conftest import block_until, free_port
from tests.realmta import MTAProcess

pytestmark = pytest.mark.slow

MSG = b"From: a@example.org\r\nSubject: state\r\n\r\nHello.\r\n"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.seen.extend(envelope.rcpt_tos)
        return "250 OK"


def cli(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_pause_and_suppress_reach_the_running_delivery_worker(tmp_path, capsys):
    recorder = Recorder()
    receiver = Controller(recorder, hostname="127.0.0.1", port=free_port())
    receiver.start()
    data = str(tmp_path / "data")
    where = ("--data-dir", data)
    mta = MTAProcess(data, f"--smarthost=127.0.0.1:{receiver.port}", "--smtp-client-security=none",
                     "--max-idle-time=0", "--delivery-processes=1")
    (tmp_path / "data").mkdir()
    pause_id = cli(capsys, "pause", "add", "--domain", "example.com", *where).strip()
    mta.start()

    def send(sender: str, rcpt: str) -> None:
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as s:
            assert s.sendmail(sender, [rcpt], MSG) == {}

    try:
        send("a@example.org", "held@example.com")
        send("a@example.org", "free@example.net")
        block_until(lambda: "free@example.net" in recorder.seen, what="the unpaused message delivered")
        time.sleep(1.5)  # more than a round of the worker's state poll
        assert "held@example.com" not in recorder.seen
        assert "held@example.com" in cli(capsys, "queue", "list", "outbox", *where)

        cli(capsys, "pause", "remove", pause_id, *where)
        block_until(lambda: "held@example.com" in recorder.seen, what="the paused message delivered once removed")

        cli(capsys, "suppress", "add", "bob@example.com", *where)
        time.sleep(1.5)
        send("a@example.org", "bob@example.com")
        block_until(lambda: "bob@example.com" in cli(capsys, "queue", "list", "failure", *where),
                    what="the suppressed recipient failed")
        failed = [json.loads(line.split(" ", 1)[1]) for line in cli(capsys, "queue", "list", "failure", *where).splitlines()]
        (last,) = [d["results"][-1] for d in failed if d["recipient"] == "bob@example.com"]
        assert (last["state"], last["code"], last["status"]) == ("process", 550, "5.7.1")
        block_until(lambda: "bob@example.com" in cli(capsys, "queue", "list", "dsn", *where), what="the bounce")
        assert "bob@example.com" not in recorder.seen
        assert recorder.seen.count("held@example.com") == 1
    finally:
        mta.stop()
        receiver.stop()
