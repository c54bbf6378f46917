"""The outbound SMTP session in memory: wire format, reuse, results, and every client defect that
mqtwisted/smtp/client.py lists at its top, with a regression test that is shown to fail against plain twisted.mail."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import ssl
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.test import iosim

from mqtwisted.smtp.client import OutboundFactory, encode_body
from mqtwisted.xtext import xtext_encode as xtext
from tests.clienthelpers import ListSource, TLSStringTransport, msg, run_ours, run_plain_twisted
from tests.smtppeers import ScriptedFactory

# -- body encoding -------------------------------------------------------------------------------


def test_encode_body_normalises_and_stuffs() -> None:
    assert encode_body(b".a\n.b\r\nc\r.\rd") == b"..a\r\n..b\r\nc\r\n..\r\nd\r\n"
    assert encode_body(b"") == b""
    assert encode_body(b"x\r\n") == b"x\r\n"


def _unstuff(wire: bytes) -> list[bytes]:
    lines = wire.split(b"\r\n")[:-1]
    assert b"." not in lines, "an end-of-data line inside the body"
    return [line[1:] if line.startswith(b".") else line for line in lines]


@given(st.lists(st.sampled_from([b".", b"..", b"a", b".x", b"", b"\r", b"\n", b"\r\n", b"b."]), max_size=40))
def test_encode_body_round_trips(parts: list[bytes]) -> None:
    mime = b"".join(parts)
    wire = encode_body(mime)
    assert b"\r\r\n" not in wire
    assert wire.replace(b"\r\n", b"").count(b"\n") == 0 and wire.replace(b"\r\n", b"").count(b"\r") == 0
    import re

    expected = re.split(rb"\r\n|\r|\n", mime)
    if expected and expected[-1] == b"":
        expected.pop()
    assert _unstuff(wire) == expected


def test_xtext() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"


# -- §5 defects, each against ours and against plain Twisted -------------------------------------

# Twisted's client expects LF-delimited input, so the attacks are written that way: the fair test.
FIRST_LINE_DOT = b".\nMAIL FROM:<evil@example.net>\n"


def _chunk_boundary_mime() -> bytes:
    # A line that starts exactly at Twisted's 16 KiB FileSender chunk boundary.
    first = b"x" * (16384 - 1) + b"\n"
    return first + b".\nRCPT TO:<smuggled@example.net>\nrest\n"


def test_first_line_dot_is_stuffed() -> None:
    server = ScriptedFactory()
    source = run_ours(server, [msg(FIRST_LINE_DOT)])
    assert [a.result for _, a in source.done] == ["accepted"]
    assert server.messages[0]["body"] == FIRST_LINE_DOT.replace(b"\n", b"\r\n")
    assert not any(c.startswith(b"MAIL FROM:<evil") for c in server.sessions[0].commands)


def test_plain_twisted_misses_first_line_dot() -> None:
    server = ScriptedFactory()
    run_plain_twisted(server, FIRST_LINE_DOT)
    assert any(c.startswith(b"MAIL FROM:<evil") for c in server.sessions[0].commands)


def test_dot_at_chunk_boundary_is_stuffed() -> None:
    server = ScriptedFactory()
    mime = _chunk_boundary_mime()
    run_ours(server, [msg(mime)])
    assert server.messages[0]["body"] == mime.replace(b"\n", b"\r\n")
    assert not any(b"smuggled" in c for c in server.sessions[0].commands)


def test_plain_twisted_misses_dot_at_chunk_boundary() -> None:
    server = ScriptedFactory()
    run_plain_twisted(server, _chunk_boundary_mime())
    assert any(b"smuggled" in c for c in server.sessions[0].commands)


def test_crlf_input_is_not_doubled_and_bare_lf_never_sent() -> None:
    server = ScriptedFactory()
    run_ours(server, [msg(b"a\r\nb\nc\r\n")])
    raw = bytes(server.sessions[0].raw)
    assert b"\r\r\n" not in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert server.messages[0]["body"] == b"a\r\nb\r\nc\r\n"


def test_plain_twisted_doubles_cr() -> None:
    server = ScriptedFactory()
    run_plain_twisted(server, b"a\r\nb\r\n")
    assert b"\r\r\n" in bytes(server.sessions[0].raw)


def _starttls_injection(factory) -> TLSStringTransport:
    proto = factory.buildProtocol(None)
    t = TLSStringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"220 mx ESMTP\r\n")
    proto.dataReceived(b"250-mx\r\n250 STARTTLS\r\n")
    assert t.value().endswith(b"STARTTLS\r\n")
    t.clear()
    # The 220 and a forged EHLO reply in one plaintext packet.
    proto.dataReceived(b"220 go ahead\r\n250-mx\r\n250 AUTH PLAIN\r\n")
    assert t.tls_context is not None
    return t


def test_plaintext_after_starttls_is_discarded() -> None:
    factory = OutboundFactory(ListSource([msg()]), helo="c.test", security="required", clock=Clock())
    t = _starttls_injection(factory)
    assert t.value() == b"EHLO c.test\r\n"


def test_plain_twisted_reads_injected_reply_inside_tls() -> None:
    from twisted.internet.defer import Deferred

    d = Deferred()
    d.addErrback(lambda f: None)
    factory = smtp.ESMTPSenderFactory(
        b"", None, "a@example.org", ["b@example.com"], None, d, retries=0,
        contextFactory=ssl.CertificateOptions(), requireAuthentication=False,
    )
    t = _starttls_injection(factory)
    assert b"MAIL FROM" in t.value()


# -- sessions -------------------------------------------------------------------------------------


def _verbs(server: ScriptedFactory, session: int = 0) -> list[bytes]:
    return [c.split(b":")[0].split(b" ")[0] for c in server.sessions[session].commands]


def test_several_messages_on_one_connection() -> None:
    # A completed transaction resets the server (RFC 5321 §4.1.1.4): no RSET between them.
    server = ScriptedFactory()
    source = run_ours(server, [msg(rcpt=f"r{i}@example.com") for i in range(3)])
    assert [a.result for _, a in source.done] == ["accepted"] * 3
    assert [a.messages for _, a in source.done] == [1, 2, 3]
    cmds = _verbs(server)
    assert cmds == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"MAIL", b"RCPT", b"DATA", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
    assert server.connections == 1
    assert source.ended[0][1] is None
    rec = source.done[0][1].record()
    assert rec["state"] == "message" and rec["code"] == 250 and rec["status"] == "2.0.0"
    assert rec["mta"] == "mx.test" and rec["description"] == "queued as X"
    assert set(rec) >= {"time", "state", "result", "code", "status", "description", "mta", "messages"}


def test_max_messages_per_connection() -> None:
    server = ScriptedFactory()
    source = run_ours(server, [msg(), msg(), msg()], max_messages=2)
    assert len(source.done) == 2 and len(source.pending) == 1


def test_refusals_recorded_per_state_and_session_goes_on() -> None:
    server = ScriptedFactory(replies={"RCPT": ["550 5.1.1 no such user"], "MAIL": ["250 ok", "451 4.7.1 greylisted"]})
    source = run_ours(server, [msg(), msg(), msg()])
    states = [(a.state, a.result, a.code, a.status, a.is_permanent) for _, a in source.done]
    assert states == [
        ("rcptto", "error", 550, "5.1.1", True),
        ("mailfrom", "error", 451, "4.7.1", False),
        ("message", "accepted", 250, "2.0.0", False),
    ]
    # Pipelined: RCPT and DATA went out behind the refused command anyway; RSET only after a
    # failed transaction, in front of the next MAIL.
    assert _verbs(server) == [
        b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"MAIL", b"RCPT", b"DATA",
        b"RSET", b"MAIL", b"RCPT", b"DATA", b"QUIT",
    ]


def test_refusals_without_pipelining_stop_at_the_refused_command() -> None:
    server = ScriptedFactory(extensions=("8BITMIME",), replies={"RCPT": ["550 5.1.1 no such user"]})
    source = run_ours(server, [msg(), msg()])
    assert [(a.state, a.code) for _, a in source.done] == [("rcptto", 550), ("message", 250)]
    assert _verbs(server) == [b"EHLO", b"MAIL", b"RCPT", b"RSET", b"MAIL", b"RCPT", b"DATA", b"QUIT"]


def test_pipelined_refusal_with_354_is_ended_by_a_lone_dot() -> None:
    # RFC 2920 §3.1: a server may still answer 354 after refusing every recipient.
    server = ScriptedFactory(replies={"RCPT": ["550 5.1.1 no such user"]})
    server.data_without_recipients = True
    source = run_ours(server, [msg(), msg(rcpt="ok@example.com")])
    assert [(a.state, a.code) for _, a in source.done] == [("rcptto", 550), ("message", 250)]
    assert [m["rcpt"] for m in server.messages] == [[b"RCPT TO:<ok@example.com>"]]


def _session(extensions: bytes) -> tuple[ListSource, object, StringTransport]:
    source = ListSource([msg()])
    factory = OutboundFactory(source, helo="c.test", security="none", clock=Clock())
    proto = factory.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"220 mx ESMTP\r\n")
    t.clear()
    proto.dataReceived(b"250-mx\r\n" + extensions + b"250 8BITMIME\r\n")
    return source, proto, t


def test_pipelining_sends_the_envelope_in_one_write() -> None:
    _, proto, t = _session(b"250-PIPELINING\r\n")
    assert t.value() == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    t.clear()
    proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
    # Body and final dot together: nothing left for Nagle to hold back.
    assert t.value() == b"Subject: hi\r\n\r\nbody\r\n.\r\n"


def test_without_pipelining_commands_wait_for_replies() -> None:
    _, proto, t = _session(b"")
    assert t.value() == b"MAIL FROM:<a@example.org>\r\n"
    t.clear()
    proto.dataReceived(b"250 ok\r\n")
    assert t.value() == b"RCPT TO:<b@example.com>\r\n"


class ParkingSource(ListSource):
    def __init__(self, messages: list) -> None:
        super().__init__(messages)
        self.parked: list = []

    def park(self, session: object) -> bool:
        self.parked.append(session)
        return True


def _connected(server: ScriptedFactory, source: ListSource) -> tuple[object, object]:
    factory = OutboundFactory(source, helo="client.test", security="none", clock=Clock())
    client = factory.buildProtocol(None)
    srv = server.buildProtocol(None)
    pump = iosim.connect(srv, iosim.makeFakeServer(srv), client, iosim.makeFakeClient(client))
    pump.flush()
    return client, pump


def test_idle_session_parks_and_is_resumed_on_the_same_connection() -> None:
    server = ScriptedFactory()
    source = ParkingSource([msg()])
    client, pump = _connected(server, source)
    assert len(source.done) == 1 and source.parked == [client] and client.parked
    assert b"QUIT" not in server.sessions[0].commands and source.ended == []
    source.pending.append(msg(rcpt="later@example.com"))
    assert client.resume()
    pump.flush()
    assert [a.messages for _, a in source.done] == [1, 2] and server.connections == 1
    client.quit_idle()
    pump.flush()
    assert server.sessions[0].commands[-1] == b"QUIT"
    assert source.ended == [(client, None)]
    assert not client.resume()


def test_resumed_session_lost_before_any_reply_gives_the_message_back() -> None:
    # The server closed the idle connection as we reused it: nothing was delivered, so the
    # message goes back to the scheduler instead of failing (and waiting a retry interval).
    server = ScriptedFactory()
    source = ParkingSource([msg()])
    client, pump = _connected(server, source)
    source.pending.append(msg(rcpt="later@example.com"))
    server.sessions[0].transport.loseConnection()
    assert client.resume()
    pump.flush()
    assert len(source.done) == 1
    assert [m.recipient for m in source.given_back] == ["later@example.com"]


def test_reply_while_parked_ends_the_session_quietly() -> None:
    server = ScriptedFactory()
    source = ParkingSource([msg()])
    client, pump = _connected(server, source)
    server.sessions[0].sendLine(b"421 4.4.2 idle too long")
    pump.flush()
    assert source.ended == [(client, None)]


def test_final_reply_refusal() -> None:
    server = ScriptedFactory(replies={"END": ["554 5.7.1 spam"]})
    source = run_ours(server, [msg()])
    a = source.done[0][1]
    assert (a.state, a.result, a.code, a.description) == ("message", "error", 554, "spam")


def test_greeting_refused_is_a_connection_fault() -> None:
    server = ScriptedFactory(replies={"greeting": ["554 5.3.2 go away"]})
    source = run_ours(server, [msg()])
    assert source.done == []
    assert source.given_back == []
    (_, fault), = source.ended
    assert fault.state == "intro" and fault.code == 554


def test_required_without_starttls_fails_in_starttls_state() -> None:
    server = ScriptedFactory()
    source = run_ours(server, [msg()], security="required")
    (_, fault), = source.ended
    assert fault.state == "starttls" and fault.result == "error" and not fault.is_permanent
    assert not any(c.startswith(b"MAIL") for c in server.sessions[0].commands)


def test_ehlo_refused_falls_back_to_helo() -> None:
    server = ScriptedFactory(replies={"EHLO": ["502 no"]})
    source = run_ours(server, [msg()])
    assert source.done[0][1].accepted


def test_helo_refused_does_not_loop() -> None:
    server = ScriptedFactory(replies={"EHLO": ["502 no"], "HELO": ["550 no"]})
    source = run_ours(server, [msg()])
    (_, fault), = source.ended
    assert fault.state == "helo" and fault.code == 550
    assert sum(c.startswith(b"HELO") for c in server.sessions[0].commands) == 1


def test_dsn_parameters_passed_when_advertised() -> None:
    dsn = {"notify": "SUCCESS,FAILURE", "ret": "HDRS", "orcpt": "b@example.com", "envid": "id 1"}
    server = ScriptedFactory()
    run_ours(server, [msg(dsn=dsn)])
    mail, rcpt = server.messages[0]["from"], server.messages[0]["rcpt"][0]
    assert b"RET=HDRS" in mail and b"ENVID=id+201" in mail
    assert b"NOTIFY=SUCCESS,FAILURE" in rcpt and b"ORCPT=rfc822;b@example.com" in rcpt
    server = ScriptedFactory(extensions=("8BITMIME",))
    run_ours(server, [msg(dsn=dsn)])
    assert server.messages[0]["from"] == b"MAIL FROM:<a@example.org>"


def test_auth_plain_to_smarthost() -> None:
    server = ScriptedFactory(extensions=("AUTH PLAIN",))
    source = run_ours(server, [msg()], username="u", password="p")
    assert source.done[0][1].accepted
    assert any(c.startswith(b"AUTH PLAIN") for c in server.sessions[0].commands)


def test_auth_refused_is_temporary() -> None:
    server = ScriptedFactory(extensions=("AUTH PLAIN",), replies={"AUTH": ["535 5.7.8 bad", "535 5.7.8 bad"]})
    source = run_ours(server, [msg()], username="u", password="p")
    (_, fault), = source.ended
    assert fault.state == "auth" and not fault.is_permanent
