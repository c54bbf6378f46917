"""SIGHUP on a real ``twistd mqmta``: the plugin directory and the run-time options are reloaded,
new connections get the new plugins, a connection open across the reload keeps the old ones until
it closes (then the old set gets ``mq_cleanup``), and a bad config changes nothing."""

from __future__ import annotations

import signal
import smtplib

import pytest

from tests.conftest import block_until
from tests.realmta import MTAProcess, spool_documents

pytestmark = pytest.mark.slow

PLUGIN = """\
import os

from mqtwisted import api as mq

VERSION = {version!r}


def _log(line):
    with open(os.environ["MQ_TEST_HOOK_LOG"], "a") as f:
        f.write(line + "\\n")


def mq_version():
    return mq.MQ_API_VERSION


def mq_cleanup():
    _log("mq_cleanup " + VERSION)


def mq_smtp_in_message(ctx, conn, message):
    mq.MQ_json(message).setdefault("tags", []).append(VERSION)
    return False
"""

MSG = b"From: a@example.com\r\nSubject: reload\r\n\r\nHello.\r\n"


def test_sighup_reloads_plugins_and_options_without_dropping_connections(tmp_path, monkeypatch):
    hook_log = tmp_path / "hooks.log"
    hook_log.touch()
    monkeypatch.setenv("MQ_TEST_HOOK_LOG", str(hook_log))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # a reload within the same second reads the new source
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tagger.py").write_text(PLUGIN.format(version="v1"))
    conf = tmp_path / "mqmta.conf"
    conf.write_text("smtp-maxsize: 100000\n")
    mta = MTAProcess(
        str(tmp_path / "data"), f"--config={conf}", f"--plugin-directory={plugins}", "--threads=2", "--delivery=off",
    ).start()
    try:
        old = smtplib.SMTP("127.0.0.1", mta.port, timeout=20)
        old.ehlo()
        assert old.sendmail("a@example.com", ["old1@example.com"], MSG) == {}

        (plugins / "tagger.py").write_text(PLUGIN.format(version="version-two"))
        conf.write_text("smtp-maxsize: 2000\nlocal: elsewhere\n")  # a queue name needs a restart: warned, kept
        mta.proc.send_signal(signal.SIGHUP)
        block_until(lambda: "reload done" in mta.output(), what="the reload")
        assert "local changed but need a restart" in mta.output()

        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as new:
            assert new.sendmail("a@example.com", ["new@example.com"], MSG) == {}
            with pytest.raises(smtplib.SMTPSenderRefused) as e:  # the new smtp-maxsize
                new.sendmail("a@example.com", ["big@example.com"], MSG + b"x" * 3000 + b"\r\n")
            assert e.value.smtp_code == 552
        # The connection from before the reload is still up and still on the old plugins.
        assert old.sendmail("a@example.com", ["old2@example.com"], MSG) == {}
        assert "mq_cleanup v1" not in hook_log.read_text()
        old.quit()
        block_until(lambda: "mq_cleanup v1" in hook_log.read_text(), what="the old plugin set to be cleaned up")

        # A config with an error: the reload is refused and everything keeps running as it was.
        conf.write_text("smtp-maxsize: lots\n")
        mta.proc.send_signal(signal.SIGHUP)
        block_until(lambda: "reload refused" in mta.output(), what="the refusal")
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as again:
            assert again.sendmail("a@example.com", ["after@example.com"], MSG) == {}
    finally:
        mta.stop()
    tags = {d["recipient"]: d["tags"] for d in spool_documents(str(tmp_path / "data"))}
    assert tags == {
        "old1@example.com": ["v1"],
        "new@example.com": ["version-two"],
        "old2@example.com": ["v1"],
        "after@example.com": ["version-two"],
    }
    assert hook_log.read_text().splitlines() == ["mq_cleanup v1", "mq_cleanup version-two"]
    assert f"{conf}:1: key 'smtp-maxsize'" in mta.output()
