"""mqtwisted.api: the MQ_* functions plugins call, outside any MTA."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from mqtwisted import api as mq
from mqtwisted.connection import Connection, MessageHandle, Reply
from mqtwisted.contexts import MQ_Context, current_plugin


@pytest.fixture
def as_plugin():
    # Set, not token-reset: pytest-twisted may run the teardown in another contextvars Context.
    yield current_plugin.set
    current_plugin.set("")


def incoming() -> MessageHandle:
    return MessageHandle(
        {
            "envelope": "a@example.com",
            "recipient": "b@example.com",
            "mime": "Subject: \udce9\r\n\r\nx",
        }
    )


def test_incoming_setters_edit_the_document():
    m = incoming()
    assert mq.MQ_json(m) is m.document
    assert mq.MQ_envelope(m) == "a@example.com" and mq.MQ_recipient(m) == "b@example.com"
    assert mq.MQ_mime(m) == b"Subject: \xe9\r\n\r\nx"  # 8-bit octets survive
    mq.MQ_setEnvelope(m, "bounce@example.com")
    mq.MQ_setRecipient(m, "c@example.com")
    mq.MQ_setMime(m, b"X: \xff\r\n\r\ny")
    mq.MQ_setLocal(m, True)
    assert m.document["envelope"] == "bounce@example.com"
    assert m.document["recipient"] == "c@example.com"
    assert m.document["mime"] == "X: \udcff\r\n\r\ny" and mq.MQ_mime(m) == b"X: \xff\r\n\r\ny"
    assert mq.MQ_local(m) is True and m.document["local"] is True
    assert m.wire_envelope is m.wire_recipient is m.wire_mime is None


def test_outgoing_setters_change_only_the_wire():
    m = incoming()
    m.outgoing = True
    before = dict(m.document)
    mq.MQ_setEnvelope(m, "x@example.com")
    mq.MQ_setRecipient(m, "y@example.com")
    mq.MQ_setMime(m, "Subject: new\r\n\r\nbody")
    mq.MQ_setLocal(m, True)  # meaningless outbound: ignored
    assert m.document == before
    assert (mq.MQ_envelope(m), mq.MQ_recipient(m)) == ("x@example.com", "y@example.com")
    assert mq.MQ_mime(m) == m.wire_mime == b"Subject: new\r\n\r\nbody"


def test_mime_absent_when_body_is_on_disk():
    assert mq.MQ_mime(MessageHandle({"recipient": "b@example.com"})) is None


@pytest.mark.parametrize(
    "raw, bare",
    [
        ("ann@example.com", "ann@example.com"),
        ("<ann@example.com>", "ann@example.com"),
        ("Ann Example <ann@example.com>", "ann@example.com"),
        ('"Doe, Ann" <ann@example.com>', "ann@example.com"),
        ("  ann@example.com ", "ann@example.com"),
        ("<>", ""),
    ],
)
def test_email(raw, bare):
    assert mq.MQ_email(raw) == bare


def test_connection_accessors():
    conn = Connection("192.0.2.1", 4000, "198.51.100.2", 25, helo="client.test", user="ann")
    conn.tls_version, conn.tls_cipher, conn.secure = "TLSv1.3", "TLS_AES_256_GCM_SHA384", True
    assert mq.MQ_remoteAddress(conn) == ("192.0.2.1", 4000) and mq.MQ_remoteIp(conn) == "192.0.2.1"
    assert (
        mq.MQ_localAddress(conn) == ("198.51.100.2", 25) and mq.MQ_localIp(conn) == "198.51.100.2"
    )
    assert mq.MQ_helo(conn) == "client.test" and mq.MQ_connectionId(conn) == conn.id
    assert mq.MQ_inbound(conn) and mq.MQ_secure(conn)
    assert mq.MQ_tlsVersion(conn) == "TLSv1.3" and mq.MQ_tlsCipher(conn).startswith("TLS_")
    assert mq.MQ_peerCertificate(conn) is None
    assert mq.MQ_user(conn) is None  # a login that did not succeed is nobody
    mq.MQ_setAuthenticated(conn, True)
    assert mq.MQ_authenticated(conn) and mq.MQ_user(conn) == "ann"
    mq.MQ_setAuthenticated(conn, 0)
    assert conn.authenticated is False


def test_set_response():
    conn = Connection()
    assert mq.MQ_response(conn) is None
    mq.MQ_setResponse(conn, 550, "no", "5.7.1")
    assert conn.response == Reply(550, "no", "5.7.1") and mq.MQ_response(conn) is conn.response


def test_file_descriptor_and_send():
    conn = Connection()
    assert mq.MQ_fileDescriptor(conn) == -1
    conn.transport = StringTransport()
    assert mq.MQ_fileDescriptor(conn) == -1  # not a socket
    mq.MQ_send(conn, "250 hi\r\n")  # on the reactor thread: written at once
    mq.MQ_send(conn, b"more")
    assert conn.transport.value() == b"250 hi\r\nmore"

    class Sock:
        def fileno(self) -> int:
            return 7

    class WithHandle:
        def getHandle(self) -> Sock:
            return Sock()

    conn.transport = WithHandle()
    assert mq.MQ_fileDescriptor(conn) == 7


def test_data_is_kept_per_plugin(as_plugin):
    conn, ctx = Connection(), MQ_Context(0)
    as_plugin("a")
    mq.MQ_setConnectionData(conn, 1)
    mq.MQ_setContextData(ctx, "ctx-a")
    as_plugin("b")
    assert mq.MQ_connectionData(conn) is None and mq.MQ_contextData(ctx) is None
    mq.MQ_setConnectionData(conn, 2)
    assert mq.MQ_connectionData(conn) == 2
    as_plugin("a")
    assert mq.MQ_connectionData(conn) == 1 and mq.MQ_contextData(ctx) == "ctx-a"
    assert mq.MQ_contextId(ctx) == 0


def test_log_levels_and_plugin_name(as_plugin):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        as_plugin("mine")
        mq.MQ_log(mq.MQ_CRIT, "disk on fire")
        mq.MQ_log(mq.MQ_WARN, "hmm")
        mq.MQ_log(mq.MQ_INFO, "fine")
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("plugin") == "mine"]
    assert [e["log_level"] for e in ours] == [LogLevel.critical, LogLevel.warn, LogLevel.info]
    assert [e["text"] for e in ours] == ["disk on fire", "hmm", "fine"]
    assert ours[0]["log_namespace"] == "mqtwisted.plugin.mine"


def test_control_outside_a_hook_is_an_error():
    with pytest.raises(RuntimeError, match="not running any hook"):
        mq.MQ_continue(Connection())


def test_everything_in_all_exists():
    missing = [name for name in mq.__all__ if not hasattr(mq, name)]
    assert missing == []
    for name in (
        "MQ_fileDescriptor MQ_send MQ_authenticated MQ_setAuthenticated MQ_secure "
        "MQ_connectionData MQ_setConnectionData MQ_continue MQ_complete MQ_retry MQ_contextData "
        "MQ_setContextData MQ_startTimer MQ_stopTimer MQ_resetTimer MQ_ioWatch MQ_ioUnwatch "
        "MQ_json MQ_envelope MQ_setEnvelope MQ_recipient MQ_setRecipient MQ_mime MQ_setMime "
        "MQ_local MQ_setLocal MQ_email MQ_log MQ_CRIT MQ_WARN MQ_INFO MQ_API_VERSION"
    ).split():
        assert name in mq.__all__, name
