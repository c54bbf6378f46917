"""The server's state machine in memory: commands, AUTH, limits, timeouts, hooks' verdicts."""

from __future__ import annotations

import base64

import pytest

from mqtwisted.auth import load_checker
from mqtwisted.connection import Reply
from mqtwisted.hooks import IN_HOOKS
from mqtwisted.smtp.session import TABLE, Session, State
from tests.smtpdialog import PausableTransport, SlowHooks, ours

TX = b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


def b64(s: str) -> bytes:
    return base64.b64encode(s.encode())


def test_every_state_answers_quit_and_rset():
    for state, row in TABLE.items():
        assert {"QUIT", "RSET", "NOOP", "EHLO"} <= set(row), state


def test_table_hooks_are_inbound_hooks():
    hooks = {t.hook for row in TABLE.values() for t in row.values() if t.hook}
    assert hooks <= set(IN_HOOKS)


def test_session_refuses_out_of_state_commands():
    s = Session()
    assert isinstance(s.allow("EHLO"), Reply)  # before the greeting nothing is read
    s.greeted()
    assert s.allow("DATA").code == 503
    assert s.allow("XYZZY").code == 500
    assert s.allow("BDAT").code == 503  # offered (CHUNKING), but not before EHLO
    assert s.allow("ETRN").code == 502


def test_full_transaction_and_rset():
    dialog, rec = ours()
    dialog.send(TX + b"Subject: t\r\n\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n")
    assert dialog.codes() == [250, 250, 250, 354, 250, 250, 221]
    assert dialog.closed
    conn, env, body = rec.messages[0]
    assert env.sender == "a@example.com" and [r.address for r in env.recipients] == ["b@example.com"]
    assert body == b"Subject: t\r\n\r\nhi\r\n"


def test_null_sender_and_dsn_parameters_kept():
    dialog, rec = ours()
    dialog.send(
        b"EHLO c\r\nMAIL FROM:<> RET=HDRS ENVID=abc+2Bd SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.com\r\nDATA\r\n.\r\n"
    )
    assert dialog.codes() == [250, 250, 250, 354, 250]
    env = rec.messages[0][1]
    assert env.sender == "" and env.params["RET"] == "HDRS"
    assert env.recipients[0].params == {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;b+40example.com"}


@pytest.mark.parametrize(
    "line,code",
    [
        (b"MAIL FROM:<a@example.com> FOO=1", 555),
        (b"MAIL FROM:<a@example.com> SIZE=abc", 501),
        (b"MAIL FROM:<a@example.com> SIZE=999999999999", 552),
        (b"MAIL FROM:<not an address>", 501),
        (b"MAIL FROM:a@", 501),
        (b"MAIL TO:<a@example.com>", 501),
        (b"MAIL FROM:<j\xc3\xb6@example.com>", 553),
        (b"MAIL", 501),
        # xtext that decodes to a CR LF would write fields of its own into a delivery report
        (b"MAIL FROM:<a@example.com> ENVID=x+0D+0AAction:+20delivered", 501),
        (b"MAIL FROM:<a@example.com> ENVID=x+00", 501),
        (b"MAIL FROM:<a@example.com> ENVID=caf+C3+A9", 501),
        (b"MAIL FROM:<a@example.com> ENVID=a+G1", 501),
        (b"MAIL FROM:<a@example.com> RET=FULL RET=HDRS", 501),
        (b"MAIL FROM:<a@example.com> AUTH", 501),
        (b"MAIL FROM:<a@example.com> AUTH=a+0D+0A", 501),
        ("MAIL FROM:<a@example.com> SIZE=\u0663".encode(), 501),
    ],
)
def test_bad_mail_commands_get_errors_and_session_goes_on(line, code):
    dialog, _ = ours()
    dialog.send(b"EHLO c\r\n" + line + b"\r\nNOOP\r\n")
    assert dialog.codes() == [250, code, 250]


@pytest.mark.parametrize("params", [
    b"NOTIFY=JUNK", b"NOTIFY=NEVER,SUCCESS", b"NOTIFY=,", b"ORCPT=foo", b"ORCPT=rfc822;a+ZZb",
    b"ORCPT=rfc822;b+0D+0AAction:+20delivered@example.com", b"ORCPT=<>;b@example.com", b"ORCPT=rfc822;",
    b"NOTIFY=SUCCESS NOTIFY=NEVER",
])
def test_bad_rcpt_parameters_get_501_and_session_goes_on(params):
    dialog, rec = ours()
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com> " + params
                + b"\r\nRCPT TO:<b@example.com> ORCPT=rfc822;b+2Bx@example.com\r\nDATA\r\n.\r\n")
    replies = dialog.replies()
    assert [code for code, _ in replies] == [250, 250, 501, 250, 354, 250]
    assert params.split(b"=")[0].decode() in replies[2][1][0]  # the reply names the parameter
    assert [r.params for r in rec.messages[0][1].recipients] == [{"ORCPT": "rfc822;b+2Bx@example.com"}]


def test_smtputf8_allows_utf8_addresses():
    dialog, rec = ours()
    dialog.send("EHLO c\r\nMAIL FROM:<jö@exämple.com> SMTPUTF8\r\nRCPT TO:<ü@example.com>\r\n".encode())
    assert dialog.codes() == [250, 250, 250]


def test_size_enforced_while_streaming():
    dialog, rec = ours(max_size=1000)
    dialog.send(TX)
    dialog.replies()
    for _ in range(50):
        dialog.send(b"x" * 98 + b"\r\n")
    dialog.send(b".\r\nNOOP\r\n")
    assert dialog.codes() == [552, 250]
    assert rec.messages == []


def test_max_recipients():
    dialog, _ = ours(max_recipients=2)
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n" + b"RCPT TO:<b@example.com>\r\n" * 3)
    assert dialog.codes() == [250, 250, 250, 250, 452]


def test_too_many_errors_closes():
    dialog, _ = ours(max_errors=3)
    dialog.send(b"FOO\r\n" * 5)
    codes = dialog.codes()
    assert codes == [500, 500, 500, 421] and dialog.closed


def test_relay_policy_local_domain_from_anyone_foreign_refused():
    dialog, rec = ours(peer="198.51.100.7")
    dialog.send(
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n.\r\n"
    )
    assert dialog.codes() == [250, 250, 554, 250, 354, 250]
    assert [(r.address, r.local) for r in rec.messages[0][1].recipients] == [("u@local.test", True)]


def test_auth_not_offered_without_tls():
    dialog, _ = ours(auth=load_checker("hardcoded://u:p"), tls=object())
    dialog.send(b"EHLO c\r\nAUTH PLAIN " + b64("\0u\0p") + b"\r\n")
    (code, lines), (code2, _) = dialog.replies()
    assert not any(line.startswith("AUTH") for line in lines) and "STARTTLS" in lines
    assert code2 == 538


@pytest.mark.parametrize("good", [True, False])
def test_auth_plain_and_login(good):
    password = "p" if good else "wrong"
    dialog, _ = ours(auth=load_checker("hardcoded://u:p"), auth_plaintext=True, peer="198.51.100.7")
    dialog.send(b"EHLO c\r\nAUTH PLAIN " + b64(f"\0u\0{password}") + b"\r\n")
    assert dialog.codes() == [250, 235 if good else 535]
    dialog, _ = ours(auth=load_checker("hardcoded://u:p"), auth_plaintext=True, peer="198.51.100.7")
    dialog.send(b"EHLO c\r\nAUTH LOGIN\r\n" + b64("u") + b"\r\n" + b64(password) + b"\r\n")
    assert dialog.codes() == [250, 334, 334, 235 if good else 535]
    # authenticated users may relay; others not
    dialog.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.org>\r\n")
    assert dialog.codes() == [250, 250 if good else 554]


def test_auth_garbage_and_cancel():
    dialog, _ = ours(auth=load_checker("hardcoded://u:p"), auth_plaintext=True)
    dialog.send(b"EHLO c\r\nAUTH PLAIN !!!\r\nAUTH LOGIN\r\n*\r\nAUTH CRAM-MD5\r\nNOOP\r\n")
    assert dialog.codes() == [250, 501, 334, 501, 504, 250]


def test_idle_timeout_answers_421_and_closes():
    dialog, _ = ours(timeout=300)
    clock = dialog.clock
    clock.advance(299)
    assert not dialog.closed
    dialog.send(b"NOOP\r\n")
    clock.advance(299)
    assert not dialog.closed
    clock.advance(2)
    assert dialog.codes()[-1] == 421 and dialog.closed


def test_slow_drip_of_bytes_is_not_kept_alive():
    dialog, _ = ours(timeout=10)
    clock = dialog.clock
    for _ in range(20):
        if dialog.closed:
            break
        dialog.send(b"N")  # never a full line
        clock.advance(1)
    assert dialog.closed


def test_hook_refusal_at_each_step():
    hooks = SlowHooks(
        {"mq_smtp_in_mailfrom", "mq_smtp_in_rcptto"},
        verdicts={"mq_smtp_in_rcptto": Reply(550, "no such user", "5.1.1")},
    )
    dialog, rec = ours(hooks=hooks)
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    while hooks.pending:
        hooks.release_all()
    assert dialog.codes() == [250, 250, 550, 503]
    assert [h for h, _ in hooks.calls] == ["mq_smtp_in_mailfrom", "mq_smtp_in_rcptto"]


def test_connect_hook_refusal_greets_with_it_and_closes():
    hooks = SlowHooks({"mq_smtp_in_connect"}, verdicts={"mq_smtp_in_connect": Reply(554, "go away", "5.7.1")})
    dialog, _ = ours(hooks=hooks, greet=False)
    assert dialog.codes() == []
    hooks.release_all()
    assert dialog.codes() == [554] and dialog.closed


def test_data_hook_sees_the_whole_mime_and_may_refuse():
    hooks = SlowHooks({"mq_smtp_in_data"}, verdicts={"mq_smtp_in_data": Reply(554, "spam", "5.7.1")})
    dialog, rec = ours(hooks=hooks)
    dialog.send(TX + b"Subject: s\r\n\r\n..dot\r\n.\r\n")
    hooks.release_all()
    assert dialog.codes()[-1] == 554 and rec.messages == []
    assert hooks.calls == [("mq_smtp_in_data", (b"Subject: s\r\n\r\n.dot\r\n",))]


def test_connection_limits():
    from mqtwisted.smtp.config import ServerConfig
    from mqtwisted.smtp.factory import SMTPFactory
    from mqtwisted.smtp.policy import RelayPolicy
    from tests.smtpdialog import Dialog, PausableTransport, Recorder

    factory = SMTPFactory(
        ServerConfig(hostname="mx.test", max_connections=3, max_connections_per_ip=2), Recorder(), RelayPolicy()
    )
    dialogs = []
    for ip in ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"]:
        p = factory.buildProtocol(None)
        t = PausableTransport(ip)
        p.makeConnection(t)
        dialogs.append(Dialog(p, t))
    assert [d.codes()[0] for d in dialogs] == [220, 220, 421, 220, 421]
    dialogs[0].protocol.connectionLost(None)
    p = factory.buildProtocol(None)
    p.makeConnection(PausableTransport("10.0.0.1"))
    assert p.transport.value().startswith(b"220")
    assert factory.per_ip == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_session_state_after_data_is_ready():
    dialog, _ = ours()
    dialog.send(TX + b".\r\n")
    dialog.replies()
    assert dialog.protocol.session.state is State.READY


def test_bare_postmaster_is_accepted_from_anyone_as_local():
    dialog, rec = ours(peer="198.51.100.7")
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n.\r\n")
    assert dialog.codes() == [250, 250, 250, 354, 250]
    (recipient,) = rec.messages[0][1].recipients
    assert recipient.address == "postmaster@mx.test" and recipient.local


def test_greetings_wait_until_the_queue_has_started() -> None:
    # The MTA listens at once; a client greeted before the queue could store (a broker still
    # connecting) would only learn it after DATA, with a 451.
    dialog, _ = ours(greet=False)
    factory = dialog.protocol.factory
    assert dialog.codes() == [220]  # not held: greeted at once
    factory.hold_greetings()
    held = factory.buildProtocol(None)
    held.callLater = dialog.clock.callLater
    transport = PausableTransport("127.0.0.1")
    held.makeConnection(transport)
    gone = factory.buildProtocol(None)
    gone.callLater = dialog.clock.callLater
    gone.makeConnection(PausableTransport("127.0.0.1"))
    gone.connectionLost(None)  # left while waiting: must not be greeted nor break the others
    assert transport.value() == b""
    factory.release_greetings()
    assert transport.value().startswith(b"220 mx.test ESMTP")


def test_nul_in_data_is_refused_and_nothing_is_relayed():
    # CRLF NUL . CRLF: a receiver that drops NULs would see an end of data where there was none.
    dialog, rec = ours()
    dialog.send(TX + b"Subject: t\r\n\r\nhi\r\n\x00.\r\nMAIL FROM:<evil@x.test>\r\n.\r\nNOOP\r\n")
    replies = dialog.replies()
    assert [code for code, _ in replies] == [250, 250, 250, 354, 550, 250]
    assert replies[4][1] == ["5.6.0 NUL character in message"]
    assert rec.messages == []


def test_nul_in_a_command_is_refused_and_the_session_goes_on():
    dialog, rec = ours()
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\x00\r\nNOOP\r\n")
    assert dialog.codes() == [250, 500, 250]


# -- BDAT (RFC 3030) ------------------------------------------------------------------------------

MAIL_RCPT = b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"


def bdat(chunks: list[bytes]) -> bytes:
    return b"".join(
        f"BDAT {len(c)}{' LAST' if i == len(chunks) - 1 else ''}\r\n".encode() + c for i, c in enumerate(chunks)
    )


def test_bdat_chunks_pipelined_are_stored_as_sent_and_last_reply_has_the_ids():
    dialog, rec = ours()
    dialog.send(b"EHLO c.test\r\n")
    assert {"CHUNKING", "BINARYMIME"} <= set(dialog.replies()[0][1])
    chunks = [b"Subject: t\r\n", b"\r\n", b"a", b".\r\n.\r\n", b"line\r\n" * 3]
    dialog.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n" + bdat(chunks) + b"NOOP\r\n")
    replies = dialog.replies()
    assert [code for code, _ in replies] == [250, 250, 250, 250, 250, 250, 250, 250]
    assert replies[2][1] == ["2.0.0 12 octets received"]
    assert replies[6][1] == ["2.0.0 Ok, queued as:", "2.0.0 id1-0"]
    assert rec.messages[0][2] == b"".join(chunks)  # no dot-unstuffing: ".\r\n.\r\n" is content


def test_binarymime_takes_any_octets_with_bdat_and_is_refused_with_data():
    dialog, rec = ours()
    body = bytes(range(256)) * 8
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                + bdat([body[:1000], body[1000:]]))
    assert dialog.codes() == [250, 250, 250, 503, 250, 250]
    assert rec.messages[0][2] == body and rec.messages[0][1].params["BODY"] == "BINARYMIME"


def test_bdat_out_of_sequence_is_refused_after_its_chunk_is_read():
    dialog, rec = ours()
    dialog.send(b"EHLO c\r\nBDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
    assert dialog.codes() == [250, 503, 250]  # "NOOP\r\n" was the chunk, not a command
    dialog.send(b"MAIL FROM:<a@example.com>\r\nBDAT 4\r\nRSETRSET\r\n")
    assert dialog.codes() == [250, 503, 250]
    assert rec.messages == []


def test_data_after_bdat_is_refused_and_rset_drops_the_chunks():
    dialog, rec = ours()
    dialog.send(MAIL_RCPT + b"BDAT 3\r\nabcDATA\r\nRSET\r\n" + b"MAIL FROM:<a@example.com>\r\n"
                b"RCPT TO:<b@example.com>\r\nBDAT 2 LAST\r\nxy")
    assert dialog.codes() == [250, 250, 250, 250, 503, 250, 250, 250, 250]
    assert [m[2] for m in rec.messages] == [b"xy"]


def test_bdat_over_the_size_limit_ends_the_transaction_at_that_chunk():
    dialog, rec = ours(max_size=100)
    dialog.send(MAIL_RCPT + b"BDAT 60\r\n" + b"a" * 60 + b"BDAT 60\r\n" + b"b" * 60 + b"BDAT 1 LAST\r\nc")
    assert dialog.codes() == [250, 250, 250, 250, 552, 503]
    assert rec.messages == []


def test_bdat_text_is_judged_like_data_but_binary_is_not():
    dialog, rec = ours()
    dialog.send(MAIL_RCPT + bdat([b"bare\nlf\r\n"]) + MAIL_RCPT[13:] + bdat([b"nul\x00\r\n"]))
    assert dialog.codes() == [250, 250, 250, 550, 250, 250, 550]
    assert rec.messages == []


def test_bdat_of_no_octets_is_an_empty_message_as_data_dot_is():
    dialog, rec = ours()
    dialog.send(MAIL_RCPT + b"BDAT 0 LAST\r\n" + MAIL_RCPT[13:] + b"BDAT 0\r\nBDAT 0 LAST\r\n")
    assert dialog.codes() == [250, 250, 250, 250, 250, 250, 250, 250]  # was 550 5.6.11 "bare CR or LF"
    assert [m[2] for m in rec.messages] == [b"", b""]


def test_bdat_without_a_size_ends_the_session():
    dialog, rec = ours()
    dialog.send(MAIL_RCPT + b"BDAT lots\r\nwhatever\r\n")
    assert dialog.replies()[-1] == (501, ["5.5.4 Syntax: BDAT size [LAST]"])
    assert dialog.closed
