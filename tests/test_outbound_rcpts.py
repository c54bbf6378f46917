"""The outbound table with several recipients in one transaction (a message and its ``also``):
one MAIL, a RCPT each, one DATA and one body, and an outcome for every recipient."""

from __future__ import annotations

from typing import Any

from mqtwisted.smtp import outevents as ev
from tests.test_outbound_table import Msg, kinds, lines, lost, offer, ready, reports, sent


def batch(*rcpts: str, dsn: list[Any] | None = None) -> Msg:
    first, *rest = [Msg(r, dsn=(dsn or [None] * len(rcpts))[i]) for i, r in enumerate(rcpts)]
    first.also = rest  # type: ignore[attr-defined]
    return first


def outcomes(actions: list[Any]) -> dict[str, tuple[str, int | None]]:
    return {a.message.recipient: (a.attempt.result, a.attempt.code) for a in actions if isinstance(a, ev.Report)}


def test_one_transaction_pipelined_every_recipient_accepted() -> None:
    t = ready()
    out = offer(t, batch("a@x.test", "b@y.test", "c@x.test"))
    assert sent(out) == (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                         b"RCPT TO:<c@x.test>\r\nDATA\r\n")
    assert t.facts.messages == 1  # one message on the connection (its per-connection limit counts these)
    out = lines(t, "250 ok", "250 ok", "250 ok", "250 ok", "354 go")
    assert [type(a) for a in out] == [ev.SendBody] and out[0].data == b"Subject: x\r\n\r\nhi\r\n"
    t.handle_event(ev.BodySent())
    out = lines(t, "250 2.0.0 queued as X")
    assert outcomes(out) == {r: ("accepted", 250) for r in ("a@x.test", "b@y.test", "c@x.test")}
    attempts = reports(out)
    assert len({id(a) for a in attempts}) == 3  # one Attempt each: delivery stamps them apart
    assert kinds(out)[-1] == "Fetch" and t.reported == 3


def test_a_refused_recipient_gets_its_own_reply_and_the_others_are_sent() -> None:
    t = ready()
    offer(t, batch("a@x.test", "nobody@x.test", "c@x.test"))
    assert kinds(lines(t, "250 ok", "250 ok", "550 5.1.1 no such user", "250 ok", "354 go")) == ["SendBody"]
    t.handle_event(ev.BodySent())
    out = lines(t, "250 queued")
    assert outcomes(out) == {"a@x.test": ("accepted", 250), "nobody@x.test": ("error", 550),
                             "c@x.test": ("accepted", 250)}
    refused = [a for a in reports(out) if a.code == 550][0]
    assert (refused.state, refused.status, refused.is_permanent) == ("rcptto", "5.1.1", True)


def test_every_recipient_refused_pipelined_answers_354_with_a_lone_dot() -> None:
    t = ready()
    offer(t, batch("a@x.test", "b@x.test"))
    out = lines(t, "250 ok", "550 no a", "452 4.2.2 full")
    assert reports(out) == []
    out = lines(t, "354 go")
    assert sent(out) == b".\r\n"
    out = lines(t, "250 ignored")
    assert outcomes(out) == {"a@x.test": ("error", 550), "b@x.test": ("error", 452)}
    assert kinds(out)[-1] == "Fetch"
    # The next transaction resets the server first.
    assert sent(offer(t)).startswith(b"RSET\r\nMAIL FROM:")


def test_lock_step_goes_on_after_a_refused_recipient_and_sends_no_data_when_all_are() -> None:
    t = ready(extensions=("8BITMIME",))
    assert sent(offer(t, batch("a@x.test", "b@x.test"))) == b"MAIL FROM:<a@example.org>\r\n"
    assert sent(lines(t, "250 ok")) == b"RCPT TO:<a@x.test>\r\n"
    assert sent(lines(t, "550 no")) == b"RCPT TO:<b@x.test>\r\n"
    out = lines(t, "551 no either")
    assert outcomes(out) == {"a@x.test": ("error", 550), "b@x.test": ("error", 551)}
    assert sent(out) == b"RSET\r\n"  # lock-step: reset at once


def test_a_refused_mail_from_decides_for_every_recipient() -> None:
    t = ready()
    offer(t, batch("a@x.test", "b@x.test"))
    out = lines(t, "553 5.1.8 bad sender", "503 need MAIL", "503 need MAIL", "503 need MAIL")
    assert outcomes(out) == {"a@x.test": ("error", 553), "b@x.test": ("error", 553)}


def test_a_refused_data_decides_for_the_accepted_recipients_only() -> None:
    t = ready()
    offer(t, batch("a@x.test", "b@x.test"))
    out = lines(t, "250 ok", "250 ok", "550 no b", "451 4.3.0 try later")
    assert outcomes(out) == {"a@x.test": ("error", 451), "b@x.test": ("error", 550)}


def test_421_on_a_recipient_fails_the_rest_and_leaves() -> None:
    t = ready()
    offer(t, batch("a@x.test", "b@x.test", "c@x.test"))
    out = lines(t, "250 ok", "550 no a", "421 4.7.0 closing")
    assert outcomes(out) == {"a@x.test": ("error", 550), "b@x.test": ("error", 421), "c@x.test": ("error", 421)}
    assert kinds(out)[-1] == "Close"


def test_connection_lost_after_the_dot_reports_every_recipient() -> None:
    t = ready()
    offer(t, batch("a@x.test", "b@x.test"))
    lines(t, "250 ok", "250 ok", "250 ok", "354 go")
    t.handle_event(ev.BodySent())
    out = lost(t)
    assert outcomes(out) == {"a@x.test": ("lost", None), "b@x.test": ("lost", None)}


def test_connection_lost_before_mail_gives_every_recipient_back() -> None:
    t = ready(hooks=())
    t.policy.defines = lambda name: True  # mq_smtp_out_data runs: nothing is on the wire yet
    message = batch("a@x.test", "b@x.test")
    offer(t, message)
    out = lost(t)
    assert [a.message.recipient for a in out if isinstance(a, ev.GiveBack)] == ["a@x.test", "b@x.test"]


def test_each_recipient_has_its_own_dsn_parameters_and_mail_from_the_first() -> None:
    t = ready(extensions=("PIPELINING", "DSN", "SIZE 1000000"))
    dsn = [{"notify": ["FAILURE"], "ret": "HDRS", "envid": "e1"}, {"notify": ["NEVER"], "orcpt": "rfc822;b@orig.test"}]
    out = sent(offer(t, batch("a@x.test", "b@x.test", dsn=dsn)))
    assert out.splitlines() == [
        b"MAIL FROM:<a@example.org> SIZE=18 RET=HDRS ENVID=e1",
        b"RCPT TO:<a@x.test> NOTIFY=FAILURE",
        b"RCPT TO:<b@x.test> NOTIFY=NEVER ORCPT=rfc822;b@orig.test",
        b"DATA",
    ]
