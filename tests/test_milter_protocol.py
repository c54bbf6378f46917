"""The milter codec (every packet type, malformed ones), one milter connection over
StringTransport with a task.Clock, and the message edits: in memory, no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport

from mqtwisted.milter import edits, macros
from mqtwisted.milter import protocol as mp
from mqtwisted.milter.client import MilterConnection, MilterFailed, parse_spec, parse_specs
from tests.milterpeer import (
    add_header,
    add_rcpt,
    add_rcpt_par,
    change_from,
    change_header,
    decode,
    del_rcpt,
    insert_header,
    pkt,
    quarantine,
    replace_body,
    reply_code,
)


def split(data: bytes) -> list[tuple[str, object]]:
    """What the test milter's decoder makes of the MTA's bytes."""
    out = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        cmd, body, data = chr(data[4]), data[5 : 4 + length], data[4 + length :]
        out.append((cmd, decode(cmd, body)))
    return out


# -- encoding: every command the MTA sends ---------------------------------------------------------


def test_every_command_encodes_as_the_protocol_says():
    assert split(mp.encode_optneg()) == [("O", (6, 0x1FF, 0x1FF7FF))]
    assert split(mp.encode_macros(mp.MAIL, {"i": "Q1", "{mail_addr}": "a@b"})) == [("D", ("M", {"i": "Q1", "{mail_addr}": "a@b"}))]
    assert split(mp.encode_connect("host", mp.FAMILY_INET, 25, "192.0.2.1")) == [("C", ("host", "4", 25, "192.0.2.1"))]
    assert split(mp.encode_connect("host", mp.FAMILY_INET6, 2525, "::1")) == [("C", ("host", "6", 2525, "::1"))]
    assert split(mp.encode_connect("host", mp.FAMILY_UNKNOWN, 0, "")) == [("C", ("host", "U", None, None))]
    assert split(mp.encode_helo("client.test")) == [("H", "client.test")]
    assert split(mp.encode_mail("a@b", ["SIZE=10", "BODY=8BITMIME"])) == [("M", ["<a@b>", "SIZE=10", "BODY=8BITMIME"])]
    assert split(mp.encode_mail("", [])) == [("M", ["<>"])]
    assert split(mp.encode_rcpt("c@d", ["NOTIFY=NEVER"])) == [("R", ["<c@d>", "NOTIFY=NEVER"])]
    assert split(mp.encode_header("Subject", "hi")) == [("L", ("Subject", "hi"))]
    assert split(mp.encode_body(b"x\r\n")) == [("B", b"x\r\n")]
    for cmd in (mp.DATA, mp.EOH, mp.BODYEOB, mp.ABORT, mp.QUIT):
        assert split(mp.encode_simple(cmd)) == [(cmd.decode(), None)]
    assert mp.esmtp_args({"SIZE": "10", "SMTPUTF8": None}) == ["SIZE=10", "SMTPUTF8"]


# -- decoding: every response a milter sends -------------------------------------------------------


def one(packet: bytes) -> mp.Response:
    [(cmd, data)] = mp.Decoder().feed(packet)
    return mp.decode_response(cmd, data)


def test_every_response_decodes():
    for code, kind in [(b"c", mp.Continue), (b"a", mp.Accept), (b"r", mp.Reject), (b"t", mp.Tempfail),
                       (b"d", mp.Discard), (b"s", mp.Skip), (b"f", mp.ConnFail), (b"4", mp.ConnFail),
                       (b"p", mp.Progress)]:
        assert one(pkt(code)) == kind()
    assert one(add_header("X-A", "1")) == mp.AddHeader("X-A", "1")
    assert one(insert_header(2, "X-B", "2")) == mp.InsertHeader(2, "X-B", "2")
    assert one(change_header(1, "Subject", "")) == mp.ChangeHeader(1, "Subject", "")
    assert one(change_from("<a@b>", "SIZE=1")) == mp.ChangeFrom("a@b", ("SIZE=1",))
    assert one(add_rcpt("<c@d>")) == mp.AddRecipient("c@d", ())
    assert one(add_rcpt_par("<c@d>", "NOTIFY=NEVER")) == mp.AddRecipient("c@d", ("NOTIFY=NEVER",))
    assert one(del_rcpt("<c@d>")) == mp.DeleteRecipient("c@d")
    assert one(replace_body(b"new\r\n")) == mp.ReplaceBody(b"new\r\n")
    assert one(quarantine("virus")) == mp.Quarantine("virus")
    assert one(reply_code("550 5.7.1 Spam, 50%% sure")) == mp.ReplyCode(550, "5.7.1", ("Spam, 50% sure",))
    assert one(reply_code("451 try later")) == mp.ReplyCode(451, None, ("try later",))
    assert one(reply_code("554-5.7.0 a\r\n554-5.7.0 b\r\n554 5.7.0 c")) == mp.ReplyCode(554, "5.7.0", ("a", "b", "c"))


def test_optneg_with_macro_lists():
    data = struct.pack(">III", 6, 0x41, 0x1000) + struct.pack(">I", 2) + b"i {auth_authen}\0" + struct.pack(">I", 5) + b"i\0"
    neg = mp.decode_optneg(b"O", data)
    assert neg.version == 6 and neg.actions == mp.Action.ADDHDRS | mp.Action.CHGFROM
    assert neg.steps == mp.Step.NR_CONN
    assert neg.macros == {mp.MAIL: ("i", "{auth_authen}"), mp.BODYEOB: ("i",)}
    # a step we did not offer (send refused recipients too) is not granted, nor held against it
    assert mp.decode_optneg(b"O", struct.pack(">III", 6, 0, 0x800 | 0x1000)).steps == mp.Step.NR_CONN


@pytest.mark.parametrize("cmd, data, why", [
    (b"O", b"\0\0\0\6", "at least 12"),
    (b"O", struct.pack(">III", 7, 0, 0), "version 7"),
    (b"O", struct.pack(">III", 1, 0, 0), "version 1"),
    (b"O", struct.pack(">III", 6, 0x200, 0), "beyond what we offered"),
    (b"O", struct.pack(">III", 6, 0, 0) + struct.pack(">I", 9) + b"i\0", "macro list"),
    (b"O", struct.pack(">III", 6, 0, 0) + struct.pack(">I", 1) + b"i", "macro list"),
    (b"c", struct.pack(">III", 6, 0, 0), "option negotiation, got response"),
])
def test_bad_negotiations_are_refused(cmd, data, why):
    with pytest.raises(mp.MilterProtocolError, match=why):
        mp.decode_optneg(cmd, data)


@pytest.mark.parametrize("cmd, data, why", [
    (b"c", b"x", "unexpected bytes"),
    (b"Z", b"", "unknown response"),
    (b"h", b"X-A\0", "expected 2 strings"),
    (b"h", b"X-A\0value", "not NUL-terminated"),
    (b"m", b"\0\0", "too short for its index"),
    (b"+", b"a\0b\0", "expected 1 strings"),
    (b"y", b"250 ok\0", "not a 4xx/5xx"),
    (b"y", b"hello\0", "not a 4xx/5xx"),
    (b"y", b"550-first\r\n451 second\0", "not a 4xx/5xx"),
    (b"q", b"", "not NUL-terminated"),
])
def test_malformed_responses_are_refused(cmd, data, why):
    with pytest.raises(mp.MilterProtocolError, match=why):
        mp.decode_response(cmd, data)


def test_decoder_takes_packets_in_pieces_and_refuses_impossible_lengths():
    decoder = mp.Decoder()
    stream = pkt(b"c") + add_header("X", "y")
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == [(b"c", b""), (b"h", b"X\0y\0")]
    with pytest.raises(mp.MilterProtocolError, match="length 0"):
        mp.Decoder().feed(b"\0\0\0\0c")
    with pytest.raises(mp.MilterProtocolError, match="out of range"):
        mp.Decoder().feed(struct.pack(">I", mp.MAX_PACKET + 1))


def test_milter_addresses():
    assert parse_spec("inet:127.0.0.1:11332") == ("inet", "127.0.0.1", 11332)
    assert parse_spec("inet:[::1]:8891") == ("inet", "::1", 8891)
    assert parse_spec("unix:/run/opendkim.sock") == ("unix", "/run/opendkim.sock", 0)
    assert parse_specs(" inet:a:1 , unix:/x ") == ["inet:a:1", "unix:/x"]
    for bad in ("tcp:a:1", "inet:a", "inet:a:0", "inet:a:http", "unix:", "nothing"):
        with pytest.raises(ValueError, match="expected inet:HOST:PORT"):
            parse_spec(bad)


# -- one connection, in memory ------------------------------------------------------------------


def connection(timeout: float = 5.0) -> tuple[MilterConnection, StringTransport, task.Clock]:
    clock = task.Clock()
    conn = MilterConnection(clock, timeout, "test")
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, clock


def outcome(d) -> list:
    results: list = []
    d.addBoth(results.append)
    return results


def test_negotiate_then_ask_collects_changes_until_the_final_answer():
    conn, transport, clock = connection()
    neg = outcome(conn.negotiate(mp.encode_optneg()))
    assert transport.value() == mp.encode_optneg()
    conn.dataReceived(pkt(b"O", struct.pack(">III", 6, 1, 0)))
    assert neg[0].actions == mp.Action.ADDHDRS
    answers = outcome(conn.ask(mp.encode_simple(mp.BODYEOB)))
    conn.dataReceived(add_header("X-A", "1") + pkt(b"p"))
    assert answers == []
    conn.dataReceived(pkt(b"c"))
    assert answers == [[mp.AddHeader("X-A", "1"), mp.Continue()]]
    assert not clock.getDelayedCalls()


def test_progress_restarts_the_deadline_and_silence_fails():
    conn, transport, clock = connection(timeout=10)
    answers = outcome(conn.ask(mp.encode_simple(mp.BODYEOB)))
    clock.advance(9)
    conn.dataReceived(pkt(b"p"))
    clock.advance(9)
    assert answers == []
    clock.advance(2)
    assert isinstance(answers[0].value, MilterFailed) and "no answer in 10 s" in str(answers[0].value)
    assert transport.disconnecting or conn.lost
    later = outcome(conn.ask(mp.encode_simple(mp.EOH)))
    assert isinstance(later[0].value, MilterFailed)


@pytest.mark.parametrize("data, why", [
    (b"\0\0\0\0", "length 0"),
    (pkt(b"Z"), "unknown response"),
    (pkt(b"c", b"extra"), "unexpected bytes"),
])
def test_malformed_answers_fail_the_waiting_ask(data, why):
    conn, _, _ = connection()
    answers = outcome(conn.ask(mp.encode_simple(mp.EOH)))
    conn.dataReceived(data)
    assert why in str(answers[0].value) and conn.lost


def test_an_answer_to_nothing_asked_and_a_closed_connection_fail():
    conn, _, _ = connection()
    conn.dataReceived(pkt(b"c"))
    assert conn.lost and "to nothing asked" in (conn.why or "")
    conn, _, _ = connection()
    answers = outcome(conn.ask(mp.encode_simple(mp.EOH)))
    conn.connectionLost()
    assert "closed the connection" in str(answers[0].value)


def test_asking_twice_at_once_fails_the_second():
    conn, _, _ = connection()
    outcome(conn.ask(mp.encode_simple(mp.EOH)))
    second = outcome(conn.ask(mp.encode_simple(mp.EOH)))
    assert "asked twice" in str(second[0].value)


# -- the message as milters edit it -------------------------------------------------------------

MIME = b"From: a@b\r\nSubject: one\r\n two\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\nBody\r\n"


def test_parse_keeps_the_bytes_until_an_edit():
    msg = edits.parse(MIME)
    assert msg.headers == [("From", " a@b"), ("Subject", " one\r\n two"), ("X-Dup", " 1"), ("X-Dup", " 2")]
    assert msg.body == b"Body\r\n" and msg.to_bytes() is MIME
    assert edits.milter_value(msg.headers[1][1], leading_space=False) == "one\n two"
    assert edits.milter_value(msg.headers[1][1], leading_space=True) == " one\n two"
    # a line that is no header field starts the body, as Postfix has it
    odd = edits.parse(b"From: a\r\nnot a header\r\nrest\r\n")
    assert odd.headers == [("From", " a")] and odd.body == b"not a header\r\nrest\r\n"


def test_header_edits_by_libmilter_indexes():
    msg = edits.parse(MIME)
    edits.apply_header_edit(msg, mp.ChangeHeader(2, "x-dup", "second"), False)
    edits.apply_header_edit(msg, mp.ChangeHeader(1, "X-Dup", ""), False)
    edits.apply_header_edit(msg, mp.ChangeHeader(5, "X-New", "added\n\tfolded"), False)
    edits.apply_header_edit(msg, mp.InsertHeader(0, "Received", "by us"), False)
    edits.apply_header_edit(msg, mp.InsertHeader(99, "X-Last", "x"), False)
    edits.apply_header_edit(msg, mp.AddHeader("X-Lead", "  two spaces"), True)
    edits.apply_header_edit(msg, mp.ChangeHeader(3, "X-Missing", ""), False)  # nothing to delete
    edits.replace_body(msg, b"a\nb\r\n")
    assert msg.to_bytes() == (b"Received: by us\r\nFrom: a@b\r\nSubject: one\r\n two\r\nX-Dup: second\r\n"
                              b"X-New: added\r\n\tfolded\r\nX-Last: x\r\nX-Lead:  two spaces\r\n\r\na\r\nb\r\n")
    assert [len(c) for c in edits.chunks(b"x" * (mp.CHUNK + 1))] == [mp.CHUNK, 1]


def test_macros_per_stage_and_as_asked():
    known = {"i": "Q1", "j": "mx", "{mail_addr}": "a@b", "{auth_authen}": None}
    assert macros.for_stage(mp.MAIL, known, None) == {"i": "Q1", "{mail_addr}": "a@b"}
    assert macros.for_stage(mp.MAIL, known, ("j", "mail_addr", "{nope}")) == {"j": "mx", "{mail_addr}": "a@b"}
    assert macros.for_stage(mp.HEADER, known, None) == {}


# -- anything a milter may send -------------------------------------------------------------------

packets = st.builds(pkt, st.sampled_from([bytes([c]) for c in b"+-2abcdefhilmpqrsty4OZ"]),
                    st.binary(max_size=40))


@settings(max_examples=60)
@given(st.lists(packets | st.binary(max_size=12), max_size=8), st.booleans())
def test_whatever_arrives_is_an_answer_or_a_clean_failure(chunks, negotiating):
    """Random packets and garbage: the waiting ask fires once, with answers or MilterFailed,
    and nothing else escapes."""
    conn, _, clock = connection()
    results = outcome(conn.negotiate(mp.encode_optneg()) if negotiating else conn.ask(mp.encode_simple(mp.EOH)))
    for chunk in chunks:
        conn.dataReceived(chunk)
    clock.advance(10)  # past the deadline: whatever was pending fails now
    assert len(results) == 1
    if not isinstance(results[0], (list, mp.OptNeg)):
        assert results[0].check(MilterFailed)
