"""Inbound over real TCP and TLS on loopback, with real clients: smtplib, swaks, smtp-source."""

from __future__ import annotations

import smtplib
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet import utils

from mqtwisted.testing import start_mta
from tests.conftest import in_thread, need, no_verify, send_mail

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\nMessage-ID: <m1@test>\r\n\r\nHello.\r\n"


@pytest.fixture
def mta(tmp_path):
    m = pytest_twisted.blockon(
        start_mta(str(tmp_path / "data"), smtp_auth="hardcoded://user:secret", smtp_secure_port="0")
    )
    yield m
    pytest_twisted.blockon(m.stop())


@pytest_twisted.inlineCallbacks
def test_smtplib_plain_three_recipients_three_documents(mta):
    yield in_thread(send_mail, mta.port, msg=MSG, rcpts=["r1@example.com", "r2@example.com", "r3@example.org"])
    docs = yield mta.documents()
    assert sorted(d["recipient"] for d in docs) == ["r1@example.com", "r2@example.com", "r3@example.org"]
    for d in docs:
        assert d["envelope"] == "a@example.com" and d["mime"] == MSG.decode()
        assert d["message-id"] == "<m1@test>" and d["connection"]["secure"] is False


@pytest_twisted.inlineCallbacks
def test_smtplib_starttls_marks_document_secure(mta):
    yield in_thread(send_mail, mta.port, msg=MSG, starttls=True)
    (doc,) = yield mta.documents()
    assert doc["connection"]["secure"] is True


@pytest_twisted.inlineCallbacks
def test_smtplib_implicit_tls(mta):
    yield in_thread(send_mail, mta.secure_port, msg=MSG, implicit=True)
    (doc,) = yield mta.documents()
    assert doc["connection"]["secure"] is True


@pytest_twisted.inlineCallbacks
def test_smtplib_auth_over_starttls_then_relay_from_anywhere(mta):
    yield in_thread(send_mail, mta.port, msg=MSG, starttls=True, login=("user", "secret"))
    (doc,) = yield mta.documents()
    assert doc["connection"]["user"] == "user"


@pytest_twisted.inlineCallbacks
def test_smtplib_bad_password_refused(mta):
    with pytest.raises(smtplib.SMTPAuthenticationError):
        yield in_thread(send_mail, mta.port, msg=MSG, starttls=True, login=("user", "nope"))


def _injection(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO c.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        assert f.readline().startswith(b"220")
        tls = no_verify().wrap_socket(raw, server_hostname="mx.test")
        g = tls.makefile("rb")
        tls.sendall(b"RCPT TO:<b@example.com>\r\n")
        return g.readline()


@pytest_twisted.inlineCallbacks
def test_starttls_injection_over_real_tls(mta):
    reply = yield in_thread(_injection, mta.port)
    assert reply.startswith(b"503"), reply


def _swaks(port, *extra):
    swaks = need("swaks")
    out = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{port}", "-f", "a@example.com", "-t", "b@example.com", "--timeout", "10", *extra],
        capture_output=True, text=True, timeout=60,
    )
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize(
    "extra,secure,user",
    [
        ((), False, None),
        (("--tls",), True, None),
        (("--tlsc",), True, None),
        (("--tls", "--auth", "PLAIN", "--auth-user", "user", "--auth-password", "secret"), True, "user"),
        (("--tls", "--auth", "LOGIN", "--auth-user", "user", "--auth-password", "secret"), True, "user"),
    ],
    ids=["plain", "starttls", "implicit-tls", "auth-plain", "auth-login"],
)
@pytest_twisted.inlineCallbacks
def test_swaks(mta, extra, secure, user):
    port = mta.secure_port if "--tlsc" in extra else mta.port
    code, output = yield in_thread(_swaks, port, *extra)
    assert code == 0, output
    assert "queued as" in output
    (doc,) = yield mta.documents()
    assert doc["connection"]["secure"] is secure and doc["connection"]["user"] == user


@pytest_twisted.inlineCallbacks
def test_smtp_source_2000_messages_exactly_2000_documents(mta):
    source = need("smtp-source")
    out, err, code = yield utils.getProcessOutputAndValue(
        source, ["-s", "10", "-m", "2000", "-l", "1000", "-f", "a@example.com", "-t", "b@example.com", f"127.0.0.1:{mta.port}"]
    )
    assert code == 0, err
    stats = yield mta.queue.stats()
    assert stats == {"outbox": 2000}
