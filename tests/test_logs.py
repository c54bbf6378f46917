"""Log lines: one per SMTP session outcome and per delivery attempt, as JSON lines with
``--log-format json`` (a real ``twistd -n mqmta`` process)."""

from __future__ import annotations

import json
import smtplib

import pytest

from tests.conftest import block_until, free_port
from tests.realmta import MTAProcess

pytestmark = pytest.mark.slow

MSG = b"From: a@example.com\r\nSubject: log\r\n\r\nHello.\r\n"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_json_log_lines_for_sessions_and_delivery_attempts(tmp_path, workers):
    # With a delivery worker process, its events reach the MTA's log as JSON all the same.
    dead = free_port()  # the smarthost refuses: one failed attempt to log
    mta = MTAProcess(str(tmp_path / "data"), "--log-format=json", f"--smarthost=127.0.0.1:{dead}",
                     f"--delivery-processes={workers}").start()
    try:
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as s:
            assert s.sendmail("a@example.com", ["b@example.com"], MSG) == {}
        block_until(lambda: "mqtwisted.delivery.attempt" in mta.output(), 15, "a delivery attempt logged")
    finally:
        mta.stop()
    events = [json.loads(line) for line in mta.output().splitlines() if line.strip()]  # every line is JSON
    sessions = [e for e in events if e.get("log_namespace") == "mqtwisted.smtp.session"]
    quit_ = [e for e in sessions if e["outcome"] == "quit"]
    assert len(quit_) == 1 and quit_[0]["accepted"] == 1 and quit_[0]["remote_ip"] == "127.0.0.1"
    attempts = [e for e in events if e.get("log_namespace") == "mqtwisted.delivery.attempt"]
    assert attempts and attempts[0]["recipient"] == "b@example.com"
    assert attempts[0]["state"] == "connect" and attempts[0]["result"] == "error"
    assert any(e.get("log_namespace") == "mqtwisted.service" and "shutdown complete" in e["log_format"] for e in events)


def test_text_observer_writes_twistds_lines():
    # TextLogObserver replaces twistd's observer on stdout: its lines must be twistd's, byte for
    # byte, for pre-formatted lines, ordinary events, failures and multi-line text alike.
    import io

    from twisted.logger import LogLevel, formatEventAsClassicLogText
    from twisted.python.failure import Failure

    from mqtwisted.oplog import TextLogObserver

    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        failure = Failure()
    base = {"log_time": 1795590000.25, "log_level": LogLevel.info, "log_namespace": "mqtwisted.x"}
    events = [
        {**base, "log_format": "{line}", "line": "smtp session 1: quit"},
        {**base, "log_format": "{line}", "line": "from the worker", "log_system": "delivery"},
        {**base, "log_format": "{a} and {b!r}", "a": 1, "b": "two\nlines"},
        {**base, "log_format": "boom", "log_failure": failure, "log_level": LogLevel.critical},
        {**base, "log_format": "{line}", "line": "no time"} | {"log_time": None},
        {**base, "log_format": ""},
    ]
    for event in events:
        out = io.StringIO()
        TextLogObserver(out)(dict(event))
        assert out.getvalue() == (formatEventAsClassicLogText(dict(event)) or "")
