"""The shaping file on a real ``twistd mqmta``: read at start, re-read on SIGHUP, and a bad one
refused with file:line while the running one stays.  What is in force shows in the EHLO name
and the address each message arrives from (aiosmtpd as the smarthost)."""

from __future__ import annotations

import signal
import smtplib

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import block_until, free_port
from tests.realmta import MTAProcess

pytestmark = pytest.mark.slow

SHAPING = """\
[sources."127.0.0.2"]
ehlo_domain = "{name}"
[pools.default]
sources = ["127.0.0.2"]
"""

MSG = b"From: a@example.com\r\nSubject: shaping\r\n\r\nHello.\r\n"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.seen.append((session.peer[0], session.host_name, envelope.rcpt_tos[0]))
        return "250 OK"


def test_sighup_rereads_the_shaping_file_and_keeps_the_running_one_when_it_is_bad(tmp_path):
    recorder = Recorder()
    receiver = Controller(recorder, hostname="127.0.0.1", port=free_port())
    receiver.start()
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(SHAPING.format(name="v1.mta.test"))
    mta = MTAProcess(
        str(tmp_path / "data"), f"--smarthost=127.0.0.1:{receiver.port}", f"--shaping={shaping}",
        "--smtp-client-security=none", "--max-idle-time=0",
    ).start()

    def send(rcpt: str) -> tuple[str, str, str]:
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as s:
            assert s.sendmail("a@example.com", [rcpt], MSG) == {}
        block_until(lambda: any(r == rcpt for *_, r in recorder.seen), what=f"{rcpt} delivered")
        return next(x for x in recorder.seen if x[2] == rcpt)

    try:
        assert send("one@example.com") == ("127.0.0.2", "v1.mta.test", "one@example.com")

        shaping.write_text('[sources."127.0.0.2"]\nehlo_domain = "v2.mta.test"\n[pools.default]\nsources = ["127.0.0.2:x"]\n')
        mta.proc.send_signal(signal.SIGHUP)
        block_until(lambda: "reload refused" in mta.output(), what="the refusal")
        assert f'{shaping}:4: key pools.default.sources' in mta.output()
        assert send("two@example.com") == ("127.0.0.2", "v1.mta.test", "two@example.com")

        shaping.write_text(SHAPING.format(name="v2.mta.test"))
        mta.proc.send_signal(signal.SIGHUP)
        block_until(lambda: "reload done" in mta.output(), what="the reload")
        assert send("three@example.com") == ("127.0.0.2", "v2.mta.test", "three@example.com")
    finally:
        mta.stop()
        receiver.stop()
