"""The edges of the SMTP server in memory: PROXY headers, per-client event limits, free space."""

from __future__ import annotations

from twisted.internet import task

from mqtwisted.anvil import Rate
from mqtwisted.connection import NoHooks
from mqtwisted.smtp.config import ServerConfig
from mqtwisted.smtp.factory import SMTPFactory
from mqtwisted.smtp.policy import RelayPolicy
from tests.smtpdialog import Dialog, PausableTransport, Recorder, ours

TX = b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nhi\r\n.\r\n"


def test_proxy_v1_header_gives_the_real_client_to_everything_after_it():
    dialog, rec = ours(proxy=True, greet=False, proxy_from=("127.0.0.0/8",))
    assert dialog.codes() == []  # nothing before the header: the greeting waits for the client
    dialog.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
    assert dialog.codes() == [220]
    # 127.0.0.1 may relay (smtp-range), 192.0.2.7 may not: the decision is on the real client
    dialog.send(TX + b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@elsewhere.test>\r\n")
    assert dialog.codes() == [250, 250, 250, 354, 250, 250, 554]
    conn = rec.messages[0][0]
    assert (conn.remote_ip, conn.remote_port, conn.local_ip, conn.local_port) == ("192.0.2.7", 40000, "198.51.100.1", 25)


def test_proxy_header_split_and_followed_by_pipelined_commands():
    dialog, rec = ours(proxy=True, greet=False, proxy_from=("127.0.0.0/8",))
    header = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 25\r\n"
    for i in range(len(header) - 1):
        dialog.send(header[i : i + 1])
    dialog.send(header[-1:] + b"EHLO c.test\r\n")
    assert dialog.codes() == [220, 250]
    assert dialog.protocol.conn.remote_ip == "2001:db8::7"


def test_proxy_header_from_outside_smtp_proxy_from_is_refused():
    dialog, rec = ours(peer="10.9.9.9", proxy=True, greet=False, proxy_from=("127.0.0.0/8",))
    replies = dialog.replies()
    assert replies == [(421, ["4.7.0 PROXY protocol not accepted from this address"])]
    assert dialog.closed


def test_malformed_proxy_header_is_refused_and_closed():
    dialog, rec = ours(proxy=True, greet=False, proxy_from=("127.0.0.0/8",))
    dialog.send(b"EHLO pretending-to-be-direct\r\n")
    assert dialog.codes() == [421] and dialog.closed
    assert rec.messages == []


def test_ports_without_proxy_take_no_header():
    dialog, rec = ours(proxy_from=("127.0.0.0/8",))
    dialog.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
    assert dialog.codes() == [500]
    assert dialog.protocol.conn.remote_ip == "127.0.0.1"


def _factory(**config) -> tuple[SMTPFactory, task.Clock]:
    clock = task.Clock()
    factory = SMTPFactory(ServerConfig(hostname="mx.test", **config), Recorder(),
                          RelayPolicy(local_domains=frozenset({"local.test"})), hooks=NoHooks())
    factory.clock = clock.seconds
    return factory, clock


def _connect(factory: SMTPFactory, peer: str) -> Dialog:
    proto = factory.buildProtocol(None)
    proto.makeConnection(PausableTransport(peer))
    return Dialog(proto, proto.transport)


def test_connection_rate_per_client_ip_and_its_window():
    factory, clock = _factory(connection_rate=Rate(3, 60), limit_exceptions=("10.0.0.0/8",))
    for _ in range(3):
        assert _connect(factory, "192.0.2.1").codes() == [220]
    refused = _connect(factory, "192.0.2.1")
    assert refused.replies() == [(421, ["4.7.0 mx.test Too many connections from 192.0.2.1, slow down"])]
    assert refused.closed
    assert _connect(factory, "192.0.2.2").codes() == [220]  # another client is not affected
    for _ in range(10):
        assert _connect(factory, "10.1.2.3").codes() == [220]  # exempt network
    clock.advance(59)
    assert _connect(factory, "192.0.2.1").codes() == [421]
    clock.advance(1.5)
    assert _connect(factory, "192.0.2.1").codes() == [220]


def test_storage_below_minfree_refuses_mail_with_452_and_recovers(tmp_path):
    factory, clock = _factory(spill_dir=str(tmp_path), min_free=1 << 62)
    dialog = _connect(factory, "192.0.2.1")
    assert dialog.codes() == [220]
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n")
    assert dialog.replies()[1] == (452, ["4.3.1 Insufficient system storage, try again later"])
    factory.config.min_free = 1
    clock.advance(1)
    dialog.send(b"MAIL FROM:<a@example.com>\r\n")
    assert dialog.codes() == [250]


def test_event_limit_memory_is_bounded(monkeypatch):
    from mqtwisted import anvil

    monkeypatch.setattr(anvil, "MAX_CLIENTS", 100)
    limit = anvil.EventLimit(Rate(2, 60), lambda: 0.0)
    for i in range(1000):
        limit.record(f"192.0.2.{i % 250}-{i}")
    assert len(limit.events) == 100


def test_rate_parsing_errors_name_the_form():
    import pytest

    assert Rate.parse("5/600") == Rate(5, 600.0) and str(Rate.parse("0")) == "0"
    for bad in ("5", "x/600", "5/0", "-1/5"):
        with pytest.raises(ValueError, match="COUNT/SECONDS"):
            Rate.parse(bad)


def test_failed_auth_per_client_ip_across_sessions_then_454_until_the_window_passes():
    from mqtwisted.auth import load_checker

    factory, clock = _factory(auth_failures=Rate(2, 600), auth_plaintext=True)
    factory.auth = load_checker("hardcoded://u:p")
    import base64

    def attempt(peer: str, password: str) -> int:
        dialog = _connect(factory, peer)
        token = base64.b64encode(f"\0u\0{password}".encode())
        dialog.send(b"EHLO c\r\nAUTH PLAIN " + token + b"\r\n")
        return dialog.codes()[-1]

    assert attempt("192.0.2.1", "bad") == 535
    assert attempt("192.0.2.1", "bad") == 535
    assert attempt("192.0.2.1", "p") == 454  # even the right password: the guesser is locked out
    assert attempt("192.0.2.2", "p") == 235  # another client is not
    clock.advance(601)
    assert attempt("192.0.2.1", "p") == 235
