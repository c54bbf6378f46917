"""mqtwisted.testing as a plugin author uses it: direct hook calls, a whole MTA, the trial example."""

from __future__ import annotations

import ast
import smtplib
import socket
from pathlib import Path

import pytest
import pytest_twisted

from mqtwisted.testing import (
    hook_runner,
    incoming_message,
    outgoing_message,
    plugin_directory,
    start_mta,
    test_connection,
)
from plugins import allowlist, tagger
from tests.conftest import in_thread, no_verify

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "test_plugin_harness_trial.py"


@pytest_twisted.inlineCallbacks
def test_allowlist_refuses_unknown_recipient_directly():
    runner = hook_runner([allowlist])
    try:
        conn = test_connection(remote_ip="192.0.2.1")
        reply = yield runner.run("mq_smtp_in_rcptto", conn, "nobody@nowhere.invalid")
        assert reply is not None and reply.code >= 500
        runner.connection_closed(conn)
    finally:
        yield runner.stop()


@pytest_twisted.inlineCallbacks
def test_tagger_edits_incoming_json_not_outgoing_wire():
    runner = hook_runner([tagger])
    try:
        conn = test_connection()
        handle = incoming_message({"recipient": "a@example.com", "tags": [], "mime": "Subject: x\\r\\n\\r\\nhi\\r\\n"})
        reply = yield runner.run("mq_smtp_in_message", conn, handle)
        assert reply is None
        assert handle.document["tags"]
        assert outgoing_message({}).outgoing is True
        runner.connection_closed(conn)
    finally:
        yield runner.stop()


def documented_test_example() -> str:
    """The code block of docs/plugins.rst's "Testing a plugin", unindented."""
    text = (ROOT / "docs" / "plugins.rst").read_text()
    block = text.split("Testing a plugin\n", 1)[1].split(".. code-block:: python\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines).strip() + "\n"


def test_the_documented_trial_example_is_the_file_ci_runs():
    assert documented_test_example() == EXAMPLE.read_text()


def test_the_trial_example_imports_only_the_testing_and_api_modules_of_mqtwisted():
    imported = set()
    for node in ast.walk(ast.parse(EXAMPLE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert {name for name in imported if name.startswith("mqtwisted")} == {"mqtwisted.api", "mqtwisted.testing"}
    assert "twisted.trial.unittest" in imported


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(100)


def tls_banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with no_verify().wrap_socket(raw) as s:
            return s.recv(100)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest_twisted.inlineCallbacks
def test_ports_are_the_ones_the_mta_listens_on_until_it_stops(tmp_path):
    # RunningMTA learns the ports through the reactor its listening services are given: if
    # Twisted's TCPServer/SSLServer stopped listening through their ``reactor``, this fails.
    mta = yield start_mta(str(tmp_path / "data"), smtp_secure_port="0")
    try:
        assert mta.port != mta.secure_port
        assert (yield in_thread(banner, mta.port)).startswith(b"220 mx.test")
        assert (yield in_thread(tls_banner, mta.secure_port)).startswith(b"220 mx.test")
    finally:
        yield mta.stop()
    assert (yield in_thread(refused, mta.port)) and (yield in_thread(refused, mta.secure_port))


@pytest_twisted.inlineCallbacks
def test_an_mta_without_an_implicit_tls_port_says_so(tmp_path):
    mta = yield start_mta(str(tmp_path / "data"))
    try:
        with pytest.raises(LookupError, match="no implicit-TLS SMTP port"):
            mta.listening_port(tls=True)
    finally:
        yield mta.stop()


@pytest_twisted.inlineCallbacks
def test_send_over_starttls_with_login_and_refusals(tmp_path):
    mta = yield start_mta(str(tmp_path / "data"), smtp_auth="hardcoded://user:secret")
    try:
        message = "Subject: hi\r\n\r\nhello\r\n"
        refused_rcpts = yield mta.send(
            "a@example.com", ["b@example.com"], message, starttls=True, login=("user", "secret")
        )
        assert refused_rcpts == {}
        with pytest.raises(smtplib.SMTPAuthenticationError):
            yield mta.send("a@example.com", ["b@example.com"], message, starttls=True, login=("user", "x"))
        # without TLS the MTA offers no AUTH (smtp-auth-plaintext is off)
        with pytest.raises(smtplib.SMTPNotSupportedError):
            yield mta.send("a@example.com", ["b@example.com"], message, login=("user", "secret"))
        (doc,) = yield mta.documents()
        assert doc["recipient"] == "b@example.com" and doc["connection"]["secure"] is True
    finally:
        yield mta.stop()


@pytest_twisted.inlineCallbacks
def test_start_mta_runs_the_given_plugin_modules(tmp_path):
    mta = yield start_mta(str(tmp_path / "data"), plugins=[tagger])
    try:
        yield mta.send("a@example.com", ["b@example.com"], "Subject: hi\r\n\r\nhello\r\n")
        (doc,) = yield mta.documents()
        assert doc["tags"] == ["via-mqmta"] and doc["mime"].startswith("X-MQ-Received-By: mx.test\r\n")
    finally:
        yield mta.stop()
    with pytest.raises(ValueError, match="not both"):
        yield start_mta(str(tmp_path / "other"), plugins=[tagger], plugin_directory=str(tmp_path))


def test_plugin_directory_copies_modules_and_packages(tmp_path):
    package = tmp_path / "src" / "mypackage"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    (package / "helper.py").write_text("Y = 2\n")
    module = type(tagger)("mypackage")
    module.__file__ = str(package / "__init__.py")
    out = plugin_directory(str(tmp_path / "plugins"), [tagger, module])
    assert sorted(p.name for p in Path(out).iterdir()) == ["mypackage", "tagger.py"]
    assert (Path(out) / "mypackage" / "helper.py").read_text() == "Y = 2\n"
    assert (Path(out) / "tagger.py").read_text() == Path(tagger.__file__).read_text()


@pytest_twisted.inlineCallbacks
def test_a_reply_does_not_stick_to_the_next_hook_call_on_the_connection(tmp_path, monkeypatch):
    listed = tmp_path / "allow"
    listed.write_text("ok@example.com\n")
    monkeypatch.setenv("MQ_ALLOWLIST", str(listed))
    runner = hook_runner([allowlist])
    try:
        conn = test_connection()
        assert (yield runner.run("mq_smtp_in_rcptto", conn, "no@example.com")).code == 550
        assert (yield runner.run("mq_smtp_in_rcptto", conn, "ok@example.com")) is None
        runner.connection_closed(conn)
    finally:
        yield runner.stop()
