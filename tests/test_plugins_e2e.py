"""Plugins in a whole MTA over real TCP, with STARTTLS and AUTH, driven by smtplib."""

from __future__ import annotations

import shutil
import smtplib
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted

from mqtwisted.testing import start_mta
from tests.conftest import in_thread, send_mail, sleep, wait_until
from tests.contract.recording import records
from tests.test_plugins_support import C_MISSING, contract_plugins, write_plugins

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
EXAMPLES = Path(__file__).resolve().parent.parent / "plugins"

def plugin_module(name: str):
    return sys.modules["mqtwisted_plugin_" + name]


@pytest.fixture
def mtas():
    running = []

    def start(data_dir, **options):
        d = start_mta(str(data_dir), **options)
        d.addCallback(lambda m: (running.append(m), m)[1])
        return d

    yield start
    for m in running:
        pytest_twisted.blockon(m.stop())


@pytest.fixture(
    params=["python", pytest.param("c", marks=pytest.mark.skipif(C_MISSING is not None, reason=str(C_MISSING)))]
)
def lang(request):
    """The contract tests run once with the plugins in Python, once with the same plugins in C."""
    return request.param


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """The file the contract plugins write their lines to."""
    path = tmp_path / "record"
    monkeypatch.setenv("MQ_TEST_RECORD", str(path))
    return path


def context_threads(mta) -> set[str]:
    runner = mta.service.getServiceNamed("plugins").runner
    return {str(ctx.thread.native_id) for ctx in runner.contexts}


@pytest_twisted.inlineCallbacks
def test_hook_order_context_and_queued_edits_over_starttls_and_auth(tmp_path, mtas, lang, recorded):
    plugins = contract_plugins(tmp_path / "plugins", lang, recorder="recorder")
    mta = yield mtas(
        tmp_path / "data",
        plugin_directory=str(plugins),
        threads="2",
        smtp_auth="hardcoded://user:secret",
    )
    rcpts = ["r1@example.com", "r2@example.org"]
    yield in_thread(send_mail, mta.port, msg=MSG, starttls=True, login=("user", "secret"), rcpts=rcpts)
    yield wait_until(lambda: any(c[0] == "close" for c in records(recorded)), 5)
    calls = records(recorded)

    # mq_context_initialize: once per worker thread, in that thread
    inits = {(c[1], c[3]) for c in calls if c[0] == "context_initialize"}
    assert len(inits) == 2 and {thread for _, thread in inits} == context_threads(mta)

    session = [c for c in calls if c[2] != "0"]
    assert [c[0] for c in session] == [
        "connect",
        "secure",
        "authenticate",
        "mailfrom",
        "rcptto",
        "rcptto",
        "data",
        "message",
        "message",
        "close",
    ]
    # one connection, one context, and that context's thread, for every hook
    assert len({c[2] for c in session}) == 1
    assert len({(c[1], c[3]) for c in session}) == 1 and (session[0][1], session[0][3]) in inits
    by_hook = {c[0]: c[4:] for c in session}
    assert by_hook["secure"] == ("1",)
    assert by_hook["authenticate"] == ("user", "secret")
    assert by_hook["mailfrom"] == ("a@example.com", "1")
    assert [c[4] for c in session if c[0] == "rcptto"] == rcpts
    assert bytes.fromhex(by_hook["data"][0]) == MSG
    assert [c[4] for c in session if c[0] == "message"] == rcpts  # once per recipient

    docs = yield mta.documents()
    assert sorted(d["recipient"] for d in docs) == rcpts
    for d in docs:
        assert "recorded" in d["tags"] and d["recorder-saw"] == d["recipient"]


@pytest_twisted.inlineCallbacks
def test_take_control_from_thread_and_timer_and_retry_over_tcp(tmp_path, mtas, lang, recorded):
    plugins = contract_plugins(tmp_path / "plugins", "python", a_count="counter")
    contract_plugins(plugins, lang, b_take="taker")
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins), threads="2")
    start = time.monotonic()
    refused = yield in_thread(send_mail, mta.port, msg=MSG)
    assert refused == {}
    assert time.monotonic() - start >= 0.25
    calls = records(recorded)
    # MQ_retry re-ran the DATA step from the first plugin
    assert [c[0] for c in calls] == ["mailfrom", "rcptto", "timer", "count", "data", "count", "data"]
    # the timer ran in the context's thread, the one the hook ran in
    rcptto, timer = calls[1], calls[2]
    assert timer[1:4] == rcptto[1:4] and rcptto[3] in context_threads(mta)
    docs = yield mta.documents()
    assert len(docs) == 1


STAGES = [("connect", 554), ("mailfrom", 550), ("rcptto", 550), ("data", 554), ("message", 554)]


@pytest_twisted.inlineCallbacks
def test_refusal_with_a_code_at_every_stage(tmp_path, mtas, lang, recorded, monkeypatch):
    plugins = contract_plugins(tmp_path / "plugins", lang, recorder="recorder")
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins), threads="2")
    for stage, code in STAGES:
        monkeypatch.setenv("MQ_TEST_REFUSE", stage)
        with pytest.raises(smtplib.SMTPException) as e:
            yield in_thread(send_mail, mta.port, msg=MSG)
        error = e.value
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            reply = error.recipients["b@example.com"]
        else:
            reply = (error.smtp_code, error.smtp_error)
        assert reply == (code, b"5.7.1 refused at " + stage.encode()), stage
    assert (yield mta.documents()) == []
    monkeypatch.delenv("MQ_TEST_REFUSE")
    assert (yield in_thread(send_mail, mta.port, msg=MSG)) == {}
    assert len((yield mta.documents())) == 1


SLEEPER = """
import os

def mq_smtp_in_rcptto(ctx, conn, address):
    if address.startswith("slow"):
        gate = os.environ["MQ_TEST_GATE"]
        open(gate + ".entered", "w").close()
        for _ in range(3000):  # blocks its context thread until the test opens the gate (30 s at most)
            if os.path.exists(gate):
                break
            time.sleep(0.01)
    return False
"""


@pytest_twisted.inlineCallbacks
def test_blocked_context_does_not_delay_a_connection_on_another(tmp_path, mtas, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("MQ_TEST_GATE", str(gate))
    plugins = write_plugins(tmp_path / "plugins", {"sleeper.py": SLEEPER})
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins), threads="2")
    slow = in_thread(send_mail, mta.port, msg=MSG, rcpts=["slow@example.com"])
    yield wait_until(lambda: (tmp_path / "gate.entered").exists(), what="the slow session inside its hook")
    yield in_thread(send_mail, mta.port, msg=MSG, rcpts=["fast@example.com"])  # while the other blocks
    assert not slow.called
    gate.touch()
    yield slow


@pytest_twisted.inlineCallbacks
def test_failing_plugin_answers_451_and_the_mta_goes_on(tmp_path, mtas):
    plugins = write_plugins(
        tmp_path / "plugins",
        {"boom.py": "def mq_smtp_in_rcptto(ctx, conn, address):\n    return 1 / 0\n"},
    )
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        yield in_thread(send_mail, mta.port, msg=MSG)
    assert e.value.recipients["b@example.com"][0] == 451
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        yield in_thread(send_mail, mta.port, msg=MSG)
    assert (yield mta.documents()) == []


# -- the example plugins ---------------------------------------------------------------------------


def copy_examples(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    for name in names:
        shutil.copy(EXAMPLES / name, d / name)
    return d


@pytest_twisted.inlineCallbacks
def test_allowlist_refuses_unlisted_recipients(tmp_path, mtas, monkeypatch):
    plugins = copy_examples(tmp_path, "allowlist.py")
    listing = tmp_path / "allow.txt"
    listing.write_text("# who may receive\nok@example.com\n@example.org\n")
    monkeypatch.setenv("MQ_ALLOWLIST", str(listing))
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins))
    refused = yield in_thread(
        send_mail, mta.port, msg=MSG, rcpts=["ok@example.com", "any@example.org", "no@example.com"]
    )
    assert refused["no@example.com"][0] == 550 and b"not allowed" in refused["no@example.com"][1]
    docs = yield mta.documents()
    assert sorted(d["recipient"] for d in docs) == ["any@example.org", "ok@example.com"]


@pytest_twisted.inlineCallbacks
def test_sqlite_login_one_connection_per_context(tmp_path, mtas, monkeypatch):
    plugins = copy_examples(tmp_path, "sqlitelogin.py")
    db_path = tmp_path / "logins.sqlite3"
    monkeypatch.setenv("MQ_LOGIN_DB", str(db_path))
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins), threads="2")
    module = plugin_module("sqlitelogin")
    db = sqlite3.connect(str(db_path))
    module.add_user(db, "ann", "s3cret")
    db.close()
    yield in_thread(send_mail, mta.port, msg=MSG, starttls=True, login=("ann", "s3cret"))
    with pytest.raises(smtplib.SMTPAuthenticationError):
        yield in_thread(send_mail, mta.port, msg=MSG, starttls=True, login=("ann", "wrong"))
    runner = mta.service.getServiceNamed("plugins").runner
    conns = [ctx.data["sqlitelogin"] for ctx in runner.contexts]
    assert all(isinstance(c, sqlite3.Connection) for c in conns) and conns[0] is not conns[1]
    docs = yield mta.documents()
    assert [d["connection"]["user"] for d in docs] == ["ann"]


@pytest_twisted.inlineCallbacks
def test_greylist_holds_then_refuses_then_accepts(tmp_path, mtas, monkeypatch):
    plugins = copy_examples(tmp_path, "greylist.py")
    monkeypatch.setenv("MQ_GREYLIST_DELAY", "0.5")
    monkeypatch.setenv("MQ_GREYLIST_PAUSE", "0.3")
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins), threads="1")
    start = time.monotonic()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        yield in_thread(send_mail, mta.port, msg=MSG)
    assert e.value.recipients["b@example.com"][0] == 451
    assert time.monotonic() - start >= 0.3  # held by take-control until the timer
    yield sleep(0.5)  # the greylist period passes (time itself is what the plugin waits for)
    assert (yield in_thread(send_mail, mta.port, msg=MSG)) == {}


@pytest_twisted.inlineCallbacks
def test_tagger_and_hooklog(tmp_path, mtas):
    plugins = copy_examples(tmp_path, "hooklog.py", "tagger.py")
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins))
    yield in_thread(send_mail, mta.port, msg=MSG, rcpts=["r1@example.com", "r2@example.com"])
    docs = yield mta.documents()
    assert len(docs) == 2
    for d in docs:
        assert d["tags"] == ["via-mqmta"]
        assert d["mime"].startswith("X-MQ-Received-By: mx.test\r\n")
        assert d["mime"].endswith(MSG.decode())


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, expected",
    [
        ("def mq_version():\n    return 7\n", "version 7, but this MTA implements version"),
        ("import nosuchmodule\n", "No module named 'nosuchmodule'"),
    ],
)
def test_twistd_refuses_to_start_with_a_bad_plugin(tmp_path, source, expected):
    import os
    import subprocess

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "fine.py").write_text("def mq_version():\n    return 1\n")
    (plugins / "old.py").write_text(source)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    args += ["-n", "--pidfile=", "mqmta", "--data-dir", str(tmp_path / "data"), "--smtp-port", "0"]
    args += ["--plugin-directory", str(plugins)]
    r = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    output = r.stdout + r.stderr
    assert "plugin 'old'" in output and expected in output


def guide_plugin() -> str:
    """The "complete plugin" of docs/plugins.rst, as written there."""
    text = (EXAMPLES.parent / "docs" / "plugins.rst").read_text()
    block = text.split("A complete plugin", 1)[1].split(".. code-block:: python", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines)


@pytest_twisted.inlineCallbacks
def test_the_guide_plugin_works_as_documented(tmp_path, mtas, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "blocklist.py").write_text(guide_plugin())
    db_path = tmp_path / "blocklist.sqlite3"
    db = sqlite3.connect(str(db_path))
    db.execute("CREATE TABLE blocked (address TEXT PRIMARY KEY)")
    db.execute("INSERT INTO blocked VALUES ('spam@example.net')")
    db.commit()
    db.close()
    monkeypatch.setenv("BLOCKLIST_DB", str(db_path))
    mta = yield mtas(tmp_path / "data", plugin_directory=str(plugins))
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        yield in_thread(send_mail, mta.port, msg=MSG, sender="Spam <spam@example.net>")
    assert e.value.smtp_code == 550
    yield in_thread(send_mail, mta.port, msg=MSG)
    (doc,) = yield mta.documents()
    assert doc["tags"] == ["not-blocked"]
