"""The mqmta command's queue inspection (``--smtp-auth`` files: tests/test_auth_file.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest_twisted
from twisted.internet import threads

from mqtwisted.testing import start_mta
from tests.conftest import send_mail
from tests.realmta import ROOT, env


def mqmta(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mqtwisted.cli", *args], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=60
    )




@pytest_twisted.inlineCallbacks
def test_queue_stats_list_show(tmp_path):
    data = str(tmp_path / "data")
    mta = yield start_mta(data)
    try:
        yield threads.deferToThread(send_mail, mta.port, rcpts=["r1@example.com", "r2@example.com"],
                                     msg="Subject: cli\r\n\r\nhello\r\n")
        stats = yield threads.deferToThread(mqmta, "queue", "--data-dir", data, "stats")
        assert stats.returncode == 0, stats.stderr
        assert {line.split()[0]: int(line.split()[1]) for line in stats.stdout.splitlines()}["outbox"] == 2
        listed = yield threads.deferToThread(mqmta, "queue", "list", "outbox", "--data-dir", data)
        ids = [line.split(" ", 1)[0] for line in listed.stdout.splitlines()]
        assert len(ids) == 2 and "mime" not in listed.stdout
        shown = yield threads.deferToThread(mqmta, "queue", "show", "outbox", ids[1], "--data-dir", data)
        doc = json.loads(shown.stdout)
        assert doc["recipient"] == "r2@example.com" and doc["mime"].endswith("hello\r\n")
        missing = yield threads.deferToThread(mqmta, "queue", "show", "outbox", "999999", "--data-dir", data)
        assert missing.returncode == 1 and "no document" in missing.stderr
    finally:
        yield mta.stop()


def test_queue_stats_on_amqp_prints_the_broker_counts():
    from tests.conftest_amqp import require_broker

    require_broker()
    out = mqmta("queue", "--queue", "amqp://guest:guest@127.0.0.1:5672/", "stats")
    assert out.returncode == 0, out.stderr
    names = {line.split()[0] for line in out.stdout.splitlines()}
    assert {"outbox", "results", "success", "failure", "retry"} <= names
