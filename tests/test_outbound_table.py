"""The outbound session table, row by row, without a reactor or a transport: events in, actions out."""

from __future__ import annotations

import ast
import base64
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.mail.smtp import CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator

from mqtwisted.connection import MessageHandle, Reply
from mqtwisted.hooks import OUT_DATA, OUT_SENT
from mqtwisted.smtp import outbound
from mqtwisted.smtp import outevents as ev
from mqtwisted.smtp.outbound import TABLE, Await, Outbound
from mqtwisted.smtp.outstate import Facts, Phase

ROOT = Path(__file__).resolve().parent.parent


class Msg:
    def __init__(self, rcpt: str = "b@example.com", mime: bytes = b"Subject: x\r\n\r\nhi\r\n", dsn: Any = None) -> None:
        self.envelope, self.recipient, self.mime, self.dsn = "a@example.org", rcpt, mime, dsn or {}


def table(security: str = "none", user: bytes = b"", secret: bytes | None = None, hooks: tuple = (), **kw: Any) -> Outbound:
    policy = ev.Policy(
        helo=b"c.test",
        security=security,
        tls_available=security != "none",
        username=user,
        secret=secret,
        authenticators=(CramMD5ClientAuthenticator(user), LOGINAuthenticator(user), PLAINAuthenticator(user)),
        defines=lambda name: name in hooks,
        **kw,
    )
    t = Outbound(policy, Facts(lambda: 1000.0))
    t.handle_event(ev.Connected("192.0.2.1", "198.51.100.7"))
    return t


def lines(t: Outbound, *replies: str) -> list[Any]:
    """Feed each reply (lines separated by ``|``) and return all actions."""
    out: list[Any] = []
    for reply in replies:
        for line in reply.split("|"):
            out += t.handle_event(ev.Line(line.encode()))
    return out


def sent(actions: list[Any]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, ev.Send))


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def ehlo(*keywords: str) -> str:
    return "|".join(["250-mx.test", *[f"250-{k}" for k in keywords[:-1]], f"250 {keywords[-1]}"]) if keywords else "250 mx.test"


def ready(extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME"), **kw: Any) -> Outbound:
    """A table greeted and past EHLO, asking for its first message."""
    t = table(**kw)
    assert sent(lines(t, "220 mx.test ESMTP")) == b"EHLO c.test\r\n"
    assert kinds(lines(t, ehlo(*extensions))) == ["Fetch"]
    return t


def offer(t: Outbound, message: Msg | None = None) -> list[Any]:
    message = message or Msg()
    return t.handle_event(ev.Offered(message, MessageHandle({}, outgoing=True)))


def reports(actions: list[Any]) -> list[Any]:
    return [a.attempt for a in actions if isinstance(a, ev.Report)]


def lost(t: Outbound, description: str = "connection lost") -> list[Any]:
    return t.handle_event(ev.Lost(description))


def ended(actions: list[Any]) -> Any:
    (end,) = [a for a in actions if isinstance(a, ev.Ended)]
    return end.fault


# -- the table itself ----------------------------------------------------------------------------


def test_every_awaited_reply_has_a_row_and_every_row_names_a_rule() -> None:
    assert set(TABLE) == set(Await)
    for row in TABLE.values():
        assert callable(getattr(Outbound, row.on_ok)) and callable(getattr(Outbound, row.on_fail))


# -- greeting ------------------------------------------------------------------------------------


def test_greeting_220_sends_ehlo_and_names_the_mta() -> None:
    t = table()
    assert sent(lines(t, "220-mx.test ESMTP|220 more")) == b"EHLO c.test\r\n"
    assert t.facts.mta == "mx.test"


def test_greeting_refused_closes_without_quit() -> None:
    t = table()
    actions = lines(t, "554 5.3.2 go away")
    assert kinds(actions) == ["Close"] and sent(actions) == b""
    fault = ended(lost(t))
    assert (fault.state, fault.code, fault.status, fault.is_permanent) == ("intro", 554, "5.3.2", True)
    assert fault.remote_ip == "198.51.100.7" and fault.local_ip == "192.0.2.1"


def test_informational_and_continuation_lines_wait_for_the_last_line() -> None:
    t = table()
    assert lines(t, "010 hello", "220-first") == []
    assert sent(lines(t, "220 last")) == b"EHLO c.test\r\n"


def test_a_line_without_a_code_ends_the_session() -> None:
    t = table()
    assert kinds(lines(t, "garbage")) == ["Close"]
    fault = ended(lost(t))
    assert fault.result == "invalid" and "garbage" in fault.description


# -- EHLO / HELO ---------------------------------------------------------------------------------


def test_ehlo_refused_falls_back_to_helo() -> None:
    t = table()
    lines(t, "220 mx")
    assert sent(lines(t, "502 5.5.1 no")) == b"HELO c.test\r\n"
    assert kinds(lines(t, "250 hi")) == ["Fetch"]
    assert t.extensions == {}


@pytest.mark.parametrize("kw", [{"security": "required"}, {"security": "verified"}, {"user": b"u", "secret": b"p"}])
def test_ehlo_refused_without_fallback_is_the_fault(kw: dict) -> None:
    t = table(**kw)
    lines(t, "220 mx")
    assert kinds(lines(t, "502 5.5.1 no")) == ["Close"]
    fault = ended(lost(t))
    assert (fault.state, fault.code, fault.result) == ("ehlo", 502, "error")
    t = table(**kw)
    lines(t, "220 mx")
    lines(t, "399 odd")
    assert ended(lost(t)).result == "invalid"


def test_helo_refused_quits_once() -> None:
    t = table()
    lines(t, "220 mx", "502 no")
    assert sent(lines(t, "550 5.7.1 no")) == b"QUIT\r\n"
    assert kinds(lines(t, "221 bye")) == ["Close"]
    fault = ended(lost(t))
    assert (fault.state, fault.code) == ("helo", 550)


def test_extensions_are_read_from_ehlo() -> None:
    t = ready(("PIPELINING", "SIZE 1000", "dsn"))
    assert t.extensions == {b"PIPELINING": None, b"SIZE": b"1000", b"DSN": None}


# -- STARTTLS per security level -----------------------------------------------------------------


@pytest.mark.parametrize(
    "security, offered, expect",
    [
        ("none", True, "plain"),
        ("none", False, "plain"),
        ("optional", True, "starttls"),
        ("optional", False, "plain"),
        ("opportunistic", True, "starttls"),
        ("opportunistic", False, "plain"),
        ("required", True, "starttls"),
        ("required", False, "refuse"),
        ("verified", True, "starttls"),
        ("verified", False, "refuse"),
    ],
)
def test_starttls_per_security_level(security: str, offered: bool, expect: str) -> None:
    t = table(security=security)
    lines(t, "220 mx")
    actions = lines(t, ehlo("PIPELINING", *(["STARTTLS"] if offered else ["8BITMIME"])))
    if expect == "plain":
        assert kinds(actions) == ["Fetch"]
    elif expect == "starttls":
        assert sent(actions) == b"STARTTLS\r\n" and t.state == "starttls"
    else:
        assert sent(actions) == b"QUIT\r\n"
        lines(t, "221 bye")
        fault = ended(lost(t))
        assert (fault.state, fault.result, fault.is_permanent) == ("starttls", "error", False)
        assert security in fault.description


def test_starttls_220_starts_tls_then_ehlo_again_inside() -> None:
    t = table(security="opportunistic")
    lines(t, "220 mx", ehlo("STARTTLS"))
    actions = lines(t, "220 go ahead")
    assert kinds(actions) == ["StartTLS", "Send"] and sent(actions) == b"EHLO c.test\r\n"
    # Inside TLS: STARTTLS still offered is not sent again; the cipher is read before anything else.
    assert kinds(lines(t, ehlo("STARTTLS", "PIPELINING"))) == ["Secured", "Fetch"]
    assert t.tls


def test_starttls_refused_is_temporary() -> None:
    t = table(security="opportunistic")
    lines(t, "220 mx", ehlo("STARTTLS"))
    assert kinds(lines(t, "454 4.7.0 TLS not available")) == ["Close"]
    fault = ended(lost(t))
    assert (fault.state, fault.code, fault.is_permanent) == ("starttls", 454, False)


def test_verified_handshake_failure_is_a_loss_in_starttls() -> None:
    t = table(security="verified")
    lines(t, "220 mx", ehlo("STARTTLS"), "220 go")
    fault = ended(lost(t, "connection lost: certificate verify failed"))
    assert (fault.state, fault.result) == ("starttls", "lost") and "verify" in fault.description


def test_starttls_that_cannot_start_is_temporary() -> None:
    t = table(security="opportunistic")
    lines(t, "220 mx", ehlo("STARTTLS"), "220 go")
    assert kinds(t.handle_event(ev.TLSFailed("no context"))) == ["Close"]
    fault = ended(lost(t))
    assert (fault.state, fault.code, fault.is_permanent) == ("starttls", 451, False)


# -- AUTH ----------------------------------------------------------------------------------------


def test_auth_plain() -> None:
    t = table(user=b"u", secret=b"p")
    lines(t, "220 mx")
    actions = lines(t, ehlo("AUTH PLAIN"))
    assert sent(actions) == b"AUTH PLAIN " + base64.b64encode(b"u\0u\0p") + b"\r\n" and t.state == "auth"
    assert kinds(lines(t, "235 2.7.0 ok")) == ["Fetch"]


def test_auth_plain_refused_twice_quits_temporary() -> None:
    t = table(user=b"u", secret=b"p")
    lines(t, "220 mx", ehlo("AUTH PLAIN"))
    assert sent(lines(t, "535 5.7.8 bad")) == b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"
    assert sent(lines(t, "535 5.7.8 bad")) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.code, fault.is_permanent) == ("auth", 535, False)


def test_auth_login_answers_each_challenge() -> None:
    t = table(user=b"u", secret=b"p")
    lines(t, "220 mx")
    assert sent(lines(t, ehlo("AUTH PLAIN LOGIN"))) == b"AUTH LOGIN\r\n"  # ours, most secure first
    assert sent(lines(t, "334 " + base64.b64encode(b"Username:").decode())) == base64.b64encode(b"u") + b"\r\n"
    assert sent(lines(t, "334 " + base64.b64encode(b"Password:").decode())) == base64.b64encode(b"p") + b"\r\n"
    assert kinds(lines(t, "235 ok")) == ["Fetch"]


def test_auth_malformed_challenge_is_cancelled() -> None:
    t = table(user=b"u", secret=b"p")
    lines(t, "220 mx", ehlo("AUTH CRAM-MD5"))
    assert sent(lines(t, "334 not*base64")) == b"*\r\n"
    assert sent(lines(t, "501 cancelled")) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.code, fault.is_permanent) == ("auth", 501, False)


def test_auth_start_refused_quits_temporary() -> None:
    t = table(user=b"u", secret=b"p")
    lines(t, "220 mx", ehlo("AUTH LOGIN"))
    assert sent(lines(t, "504 5.5.4 no")) == b"QUIT\r\n"


@pytest.mark.parametrize("extensions", [("PIPELINING",), ("AUTH GSSAPI",)])
def test_auth_required_without_a_usable_mechanism(extensions: tuple) -> None:
    t = table(user=b"u", secret=b"p")
    lines(t, "220 mx")
    assert sent(lines(t, ehlo(*extensions))) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.is_permanent) == ("auth", False) and "AUTH" in fault.description


def test_no_credentials_no_auth_even_when_offered() -> None:
    t = table()
    lines(t, "220 mx")
    assert kinds(lines(t, ehlo("AUTH PLAIN"))) == ["Fetch"]


# -- one transaction -----------------------------------------------------------------------------


ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


def test_pipelined_transaction_accepted() -> None:
    t = ready(("PIPELINING", "DSN"))
    assert sent(offer(t)) == ENVELOPE and t.state == "mailfrom"
    actions = lines(t, "250 ok", "250 ok", "354 go")
    assert kinds(actions) == ["SendBody"] and actions[0].data == b"Subject: x\r\n\r\nhi\r\n"
    assert t.handle_event(ev.BodySent()) == []
    actions = lines(t, "250 2.0.0 queued as X")
    (a,) = reports(actions)
    assert (a.state, a.result, a.code, a.description, a.messages, a.dsn) == ("message", "accepted", 250, "queued as X", 1, True)
    assert a.mta == "mx.test" and kinds(actions) == ["Report", "Fetch"]


def test_lock_step_transaction_sends_one_command_per_reply() -> None:
    t = ready(("8BITMIME",))
    assert sent(offer(t)) == b"MAIL FROM:<a@example.org>\r\n"
    assert sent(lines(t, "250 ok")) == b"RCPT TO:<b@example.com>\r\n" and t.state == "rcptto"
    assert sent(lines(t, "250 ok")) == b"DATA\r\n"
    assert kinds(lines(t, "354 go")) == ["SendBody"]


def test_pipelined_refusals_the_first_decides_and_354_gets_a_lone_dot() -> None:
    t = ready()
    offer(t)
    assert lines(t, "250 ok", "550 5.1.1 no such user") == []
    actions = lines(t, "354 go anyway")
    assert sent(actions) == b".\r\n" and reports(actions) == []
    actions = lines(t, "554 no valid recipients")
    (a,) = reports(actions)
    assert (a.state, a.code, a.status, a.is_permanent) == ("rcptto", 550, "5.1.1", True)
    assert kinds(actions) == ["Report", "Fetch"]
    # The failed transaction is reset in front of the next one, in the same write.
    assert sent(offer(t)) == b"RSET\r\n" + ENVELOPE


def test_all_recipients_refused_lock_step_resets_at_once() -> None:
    t = ready(("8BITMIME",))
    offer(t)
    lines(t, "250 ok")
    actions = lines(t, "550 5.1.1 no")
    assert [a.state for a in reports(actions)] == ["rcptto"] and sent(actions) == b"RSET\r\n"
    assert t.state == "rset"
    assert kinds(lines(t, "250 reset")) == ["Fetch"]
    assert sent(offer(t)) == b"MAIL FROM:<a@example.org>\r\n"


def test_lock_step_rset_refused_quits_temporary() -> None:
    t = ready(("8BITMIME",))
    offer(t)
    lines(t, "451 4.3.0 later")
    assert sent(lines(t, "500 what")) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.is_permanent) == ("rset", False)


def test_pipelined_rset_refused_is_not_the_messages_fault() -> None:
    t = ready()
    offer(t)
    lines(t, "451 4.7.1 greylisted", "250", "554 no")  # MAIL refused: RSET goes in front of the next
    assert sent(offer(t)).startswith(b"RSET\r\n")
    actions = lines(t, "500 RSET broken", "250", "250", "554 no")
    (a,) = reports(actions)
    assert (a.state, a.code, a.is_permanent) == ("rset", 500, False)
    assert sent(actions) == b"QUIT\r\n"


def test_data_refused() -> None:
    t = ready()
    offer(t)
    (a,) = reports(lines(t, "250", "250", "554 5.3.4 too big"))
    assert (a.state, a.code) == ("data", 554)


def test_final_reply_refused_and_session_goes_on() -> None:
    t = ready()
    offer(t)
    lines(t, "250", "250", "354 go")
    t.handle_event(ev.BodySent())
    actions = lines(t, "554 5.7.1 spam")
    (a,) = reports(actions)
    assert (a.state, a.result, a.code, a.description) == ("message", "error", 554, "spam")
    assert kinds(actions) == ["Report", "Fetch"]
    # A completed transaction needs no RSET.
    assert sent(offer(t)) == ENVELOPE


@pytest.mark.parametrize("at", ["mail", "dot"])
def test_421_closes_without_rset_or_quit(at: str) -> None:
    t = ready()
    offer(t)
    if at == "mail":
        actions = lines(t, "421 4.3.2 closing")
    else:
        lines(t, "250", "250", "354 go")
        t.handle_event(ev.BodySent())
        actions = lines(t, "421 4.3.2 closing")
    assert kinds(actions) == ["Report", "Close"] and reports(actions)[0].code == 421
    assert lines(t, "250 late") == []
    assert ended(lost(t)) is None


def test_reply_in_the_middle_of_the_body_ends_the_session() -> None:
    t = ready()
    offer(t)
    lines(t, "250", "250", "354 go")
    actions = lines(t, "250 too early")
    assert kinds(actions) == ["Report", "Close"] and reports(actions)[0].state == "message"


def test_mime_and_envelope_follow_the_hook_overrides() -> None:
    t = ready()
    handle = MessageHandle({}, outgoing=True)
    handle.wire_recipient = "other@example.com"
    assert b"RCPT TO:<other@example.com>" in sent(t.handle_event(ev.Offered(Msg(), handle)))


def test_dsn_and_size_parameters_when_advertised() -> None:
    t = ready(("PIPELINING", "DSN", "SIZE 100000"))
    wire = sent(offer(t, Msg(dsn={"notify": ["SUCCESS", "FAILURE"], "ret": "hdrs", "envid": "a b", "orcpt": "b@example.com"})))
    assert b"MAIL FROM:<a@example.org> SIZE=18 RET=HDRS ENVID=a+20b\r\n" in wire
    assert b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com\r\n" in wire


# -- hooks ---------------------------------------------------------------------------------------


def test_out_data_hook_runs_before_mail_without_a_reply_timer() -> None:
    t = ready(hooks=(OUT_DATA,))
    actions = offer(t)
    assert actions == [ev.Timer(False), ev.RunHook(OUT_DATA)]
    actions = t.handle_event(ev.HookDone(None))
    assert actions[0] == ev.Timer(True) and sent(actions) == ENVELOPE


def test_out_data_hook_refusal_is_the_attempt() -> None:
    t = ready(hooks=(OUT_DATA,))
    offer(t)
    actions = t.handle_event(ev.HookDone(Reply(550, "no", "5.7.1")))
    (a,) = reports(actions)
    assert (a.state, a.result, a.code, a.status) == ("data", "error", 550, "5.7.1")
    assert kinds(actions)[-1] == "Fetch"


def test_reply_while_a_hook_runs_is_unexpected_and_the_message_goes_back() -> None:
    t = ready(hooks=(OUT_DATA,))
    message = Msg()
    offer(t, message)
    assert kinds(lines(t, "250 what")) == ["Close"]
    actions = lost(t)
    assert actions[0] == ev.GiveBack(message)
    fault = ended(actions)
    assert fault.result == "invalid" and not fault.is_permanent


def test_out_sent_hook_holds_the_final_reply_and_may_replace_it() -> None:
    t = ready(hooks=(OUT_SENT,))
    offer(t)
    lines(t, "250", "250", "354 go")
    assert t.handle_event(ev.BodySent()) == [ev.RunHook(OUT_SENT)]
    assert lines(t, "250 queued") == []  # held until the plugin is done
    actions = t.handle_event(ev.HookDone(Reply(451, "plugin says later", "4.3.0")))
    (a,) = reports(actions)
    assert (a.state, a.result, a.code) == ("message", "error", 451)


def test_out_sent_hook_done_before_the_reply() -> None:
    t = ready(hooks=(OUT_SENT,))
    offer(t)
    lines(t, "250", "250", "354 go")
    t.handle_event(ev.BodySent())
    assert t.handle_event(ev.HookDone(None)) == []
    (a,) = reports(lines(t, "250 queued"))
    assert a.accepted


# -- reuse, parking, QUIT ------------------------------------------------------------------------


def test_max_messages_then_quit() -> None:
    t = ready(max_messages=1)
    offer(t)
    lines(t, "250", "250", "354 go")
    t.handle_event(ev.BodySent())
    actions = lines(t, "250 ok")
    assert kinds(actions) == ["Report", "Send"] and sent(actions) == b"QUIT\r\n"
    assert kinds(lines(t, "221 bye")) == ["Close"]
    assert ended(lost(t)) is None


def test_nothing_to_send_quits_unless_the_source_parks() -> None:
    t = ready()
    assert sent(t.handle_event(ev.NothingToSend(park=False))) == b"QUIT\r\n"
    t = ready()
    assert t.handle_event(ev.NothingToSend(park=True)) == [ev.Timer(False)]
    assert t.parked and t.state == "idle" and t.phase is Phase.PARKED


def test_resume_and_quit_idle() -> None:
    t = ready()
    assert t.handle_event(ev.Resume()) == []  # not parked: nothing happens
    t.handle_event(ev.NothingToSend(park=True))
    assert t.handle_event(ev.Resume()) == [ev.Timer(True), ev.Fetch()]
    assert sent(offer(t)) == ENVELOPE
    lines(t, "250", "250", "354 go")
    t.handle_event(ev.BodySent())
    lines(t, "250 ok")
    t.handle_event(ev.NothingToSend(park=True))
    actions = t.handle_event(ev.QuitIdle())
    assert actions[0] == ev.Timer(True) and sent(actions) == b"QUIT\r\n"
    assert t.handle_event(ev.Resume()) == []


def test_reply_while_parked_leaves_quietly() -> None:
    t = ready()
    t.handle_event(ev.NothingToSend(park=True))
    assert kinds(lines(t, "421 4.4.2 idle too long")) == ["Close"]
    assert ended(lost(t)) is None


def test_resumed_connection_lost_before_any_reply_gives_the_message_back() -> None:
    t = ready()
    t.handle_event(ev.NothingToSend(park=True))
    t.handle_event(ev.Resume())
    message = Msg()
    offer(t, message)
    actions = lost(t)
    assert actions[0] == ev.GiveBack(message)
    assert ended(actions).result == "lost"


def test_connection_lost_in_transaction_fails_the_message() -> None:
    t = ready(("8BITMIME",))
    message = Msg()
    offer(t, message)
    lines(t, "250 ok")
    actions = lost(t, "connection lost: reset by peer")
    (a,) = reports(actions)
    assert (a.state, a.result, a.description) == ("rcptto", "lost", "connection lost: reset by peer")
    assert t.reported == 1


def test_offer_after_close_goes_back() -> None:
    t = ready()
    lines(t, "250 unexpected")  # nothing awaited: the session ends
    message = Msg()
    assert t.handle_event(ev.Offered(message, None)) == [ev.GiveBack(message)]


# -- timeouts and unexpected replies -------------------------------------------------------------


def test_timeout_aborts_and_is_reported_in_the_current_state() -> None:
    t = ready()
    offer(t)
    lines(t, "250", "250", "354 go")
    t.handle_event(ev.BodySent())
    assert t.handle_event(ev.TimedOut()) == [ev.Close(abort=True)]
    (a,) = reports(lost(t))
    assert (a.state, a.result) == ("message", "timeout")


def test_timeout_before_the_greeting() -> None:
    t = table()
    t.handle_event(ev.TimedOut())
    fault = ended(lost(t))
    assert (fault.state, fault.result) == ("intro", "timeout")


def test_unexpected_reply_ends_the_session_temporary() -> None:
    t = ready()
    assert kinds(lines(t, "250 surprise")) == ["Close"]
    fault = ended(lost(t))
    assert (fault.result, fault.is_permanent) == ("invalid", False)


def test_garbage_in_a_transaction_fails_the_message() -> None:
    t = ready()
    offer(t)
    actions = lines(t, "2x0 ok")
    assert kinds(actions) == ["Report", "Close"] and reports(actions)[0].result == "invalid"
    assert ended(lost(t)).result == "invalid"


def test_body_upload_failure_is_a_loss() -> None:
    t = ready()
    offer(t)
    lines(t, "250", "250", "354 go")
    assert kinds(t.handle_event(ev.BodyFailed("broken pipe"))) == ["Close"]
    (a,) = reports(lost(t))
    assert (a.state, a.result, a.description) == ("message", "lost", "broken pipe")


def test_lost_twice_ends_once() -> None:
    t = ready()
    assert len(lost(t)) == 1 and lost(t) == []


# -- no private attributes of other libraries in the outbound modules ----------------------------

OWNED = [
    "mqtwisted/smtp/client.py", "mqtwisted/smtp/outbound.py", "mqtwisted/smtp/outbody.py", "mqtwisted/smtp/outending.py",
    "mqtwisted/smtp/outevents.py", "mqtwisted/smtp/outstate.py", "mqtwisted/smtp/wire.py",
]


@pytest.mark.parametrize("path", OWNED)
def test_no_private_attribute_is_touched(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    private = [
        f"{path}:{node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__")
    ]
    assert private == []


def test_no_dunder_setattr_override() -> None:
    source = (ROOT / "mqtwisted/smtp/client.py").read_text()
    assert "__setattr__" not in source and outbound.__doc__


# -- any order of events: the invariants the adapter relies on ------------------------------------

REPLIES = ["220 mx", "250 ok", "250-mx|250 PIPELINING", "250-mx|250 STARTTLS", "250-mx|250 AUTH PLAIN", "354 go",
           "250-mx|250-PIPELINING|250 CHUNKING", "250-mx|250 CHUNKING",
           "235 ok", "334 VXNlcg==", "334 !!", "421 bye", "451 later", "550 no", "221 bye", "garbage", "010 info"]
#: the reply a cooperative server gives to what the table waits for
SANE = {
    Await.GREETING: "220 mx", Await.EHLO: "250-mx|250-PIPELINING|250-STARTTLS|250 AUTH PLAIN LOGIN",
    Await.STARTTLS: "220 go", Await.AUTH_START: "334 VXNlcg==", Await.AUTH_CHALLENGE: "235 ok",
    Await.AUTH_PLAIN: "235 ok", Await.AUTH_PLAIN_AGAIN: "235 ok", Await.DATA: "354 go", Await.QUIT: "221 bye",
}
STEPS = st.one_of(
    st.tuples(st.just("sane"), st.booleans()),
    st.tuples(st.just("sane"), st.booleans()),
    st.tuples(st.just("line"), st.sampled_from(REPLIES)),
    st.tuples(st.sampled_from(["fetched", "hook", "body", "timeout", "resume", "quit_idle", "tls_failed"]), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(
    security=st.sampled_from(["none", "opportunistic", "required"]),
    auth=st.booleans(),
    hooks=st.sets(st.sampled_from([OUT_DATA, OUT_SENT])),
    max_messages=st.integers(1, 3),
    steps=st.lists(STEPS, max_size=60),
)
def test_any_order_of_events_keeps_the_invariants(security, auth, hooks, max_messages, steps) -> None:
    kw = {"user": b"u", "secret": b"p"} if auth else {}
    t = table(security=security, hooks=tuple(hooks), max_messages=max_messages, **kw)
    offered: list[Msg] = []
    outcomes: list[int] = []
    owed = {"fetch": False, "hook": False, "body": False}
    closed = False
    reports = 0

    def apply(actions: list[Any]) -> None:
        nonlocal closed, reports
        for a in actions:
            assert not closed or not isinstance(a, (ev.Send, ev.SendBody, ev.Fetch)), f"{a} after Close"
            if isinstance(a, ev.Fetch):
                assert not owed["fetch"] and t.tx is None, "a second message while one is in flight"
                owed["fetch"] = True
            elif isinstance(a, ev.RunHook):
                owed["hook"] = True
            elif isinstance(a, ev.SendBody):
                owed["body"] = True
            elif isinstance(a, ev.Close):
                closed = True
            elif isinstance(a, (ev.Report, ev.GiveBack)):
                outcomes.append(id(a.message))
                reports += isinstance(a, ev.Report)

    for kind, arg in steps:
        if kind == "sane":
            # Answer the oldest command sanely, or take the next step a session is owed.
            if t.awaiting and not (t.awaiting[0] in (Await.DOT, Await.BDAT_LAST) and owed["body"]):
                kind, arg = "line", SANE.get(t.awaiting[0], "250 ok")
            else:
                kind = next((k for k, v in (("fetched", "fetch"), ("hook", "hook"), ("body", "body")) if owed[v]), "none")
                arg = not arg if kind == "hook" else True
        if kind == "line":
            for line in arg.split("|"):
                apply(t.handle_event(ev.Line(line.encode())))
        elif kind == "fetched" and owed["fetch"]:
            owed["fetch"] = False
            if arg:
                offered.append(Msg())
                apply(t.handle_event(ev.Offered(offered[-1], None)))
            else:
                apply(t.handle_event(ev.NothingToSend(park=True)))
        elif kind == "hook" and owed["hook"]:
            owed["hook"] = False
            apply(t.handle_event(ev.HookDone(Reply(550, "no") if arg else None)))
        elif kind == "body" and owed["body"]:
            owed["body"] = False
            apply(t.handle_event(ev.BodySent() if arg else ev.BodyFailed("broken pipe")))
        elif kind == "timeout":
            apply(t.handle_event(ev.TimedOut()))
        elif kind == "resume":
            apply(t.handle_event(ev.Resume()))
        elif kind == "quit_idle":
            apply(t.handle_event(ev.QuitIdle()))
        elif kind == "tls_failed" and arg and t.state == "starttls":
            apply(t.handle_event(ev.TLSFailed("handshake")))
    final = t.handle_event(ev.Lost("connection lost"))
    apply(final)
    assert [type(a) for a in final].count(ev.Ended) == 1 and isinstance(final[-1], ev.Ended)
    assert t.handle_event(ev.Lost("again")) == []
    assert sorted(outcomes) == sorted(id(m) for m in offered), "every message taken gets exactly one outcome"
    assert t.reported == reports


# -- the certificate check of a TLS policy (MTA-STS, DANE, verified) -----------------------------


def test_a_checking_policy_waits_for_the_check_before_auth_or_mail() -> None:
    t = table(security="opportunistic", tls_policy="mta-sts", tls_mandatory=True, checks_certificate=True)
    lines(t, "220 mx", ehlo("STARTTLS"), "220 go")
    # Secured asks the adapter to check the chain; nothing else goes out until it reports.
    assert kinds(lines(t, ehlo("PIPELINING"))) == ["Secured"]
    assert kinds(t.handle_event(ev.CertificateChecked(None))) == ["Fetch"]


def test_a_refused_certificate_quits_in_starttls_temporary_with_the_reason() -> None:
    t = table(security="opportunistic", tls_policy="dane", tls_mandatory=True, checks_certificate=True,
              secret=b"pw", user=b"u")
    lines(t, "220 mx", ehlo("STARTTLS", "AUTH PLAIN"), "220 go", ehlo("AUTH PLAIN"))
    actions = t.handle_event(ev.CertificateChecked("dane: no TLSA record matches the certificate chain"))
    assert sent(actions) == b"QUIT\r\n"  # no AUTH: the credentials never reach an unchecked server
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.result, fault.is_permanent) == ("starttls", "error", False)
    assert fault.description == "dane: no TLSA record matches the certificate chain"


@pytest.mark.parametrize("security", ["none", "opportunistic"])
def test_a_mandatory_policy_refuses_a_server_without_starttls(security: str) -> None:
    t = table(security=security, tls_policy="mta-sts", tls_mandatory=True)
    lines(t, "220 mx")
    assert sent(lines(t, ehlo("PIPELINING"))) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert fault.state == "starttls" and "TLS policy (mta-sts) requires it" in fault.description
