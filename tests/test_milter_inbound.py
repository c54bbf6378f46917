"""Milters (``--milters``) in a whole MTA over real TCP: a test milter (tests/milterpeer.py) answers
each step with every action the protocol has, and one that fails in each way costs only the
default action."""

from __future__ import annotations

import smtplib

import pytest
import pytest_twisted

from mqtwisted.metrics import METRICS
from mqtwisted.testing import start_mta
from tests.conftest import in_thread, wait_until
from tests.milterpeer import (
    ACCEPT,
    CLOSE,
    DISCARD,
    PROGRESS,
    REJECT,
    SKIP,
    TEMPFAIL,
    MilterPeer,
    add_header,
    add_rcpt,
    add_rcpt_par,
    change_from,
    change_header,
    del_rcpt,
    insert_header,
    pkt,
    quarantine,
    replace_body,
    reply_code,
)

MSG = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n"
       b"X-Folded: one\r\n two\r\n\r\nHello.\r\n")


@pytest.fixture
def milters():
    """Start test milters; stop them (and the MTAs) after the test."""
    running: list[MilterPeer] = []

    def start(script=None, **kw) -> MilterPeer:
        m = MilterPeer(script, **kw).start()
        running.append(m)
        return m

    yield start
    for m in running:
        pytest_twisted.blockon(m.stop())


@pytest.fixture
def mtas():
    running = []

    async def start(tmp_path, *milter_list, **options):
        specs = ",".join(m if isinstance(m, str) else m.spec for m in milter_list)
        mta = await start_mta(str(tmp_path / f"data{len(running)}"), milters=specs, **options)
        running.append(mta)
        return mta

    yield start
    for m in running:
        pytest_twisted.blockon(m.stop())


def session(port: int, steps):
    """One smtplib session: ``steps`` is a list of (method, args); returns each (code, text)."""
    out = []
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        for name, *args in steps:
            try:
                out.append(s.data(args[0]) if name == "data" else getattr(s, name)(*args))
            except smtplib.SMTPResponseException as e:  # DATA refused before 354
                out.append((e.smtp_code, e.smtp_error))
    return out


def send(port, rcpts=("b@example.com",), msg=MSG, sender="a@example.com"):
    return session(port, [("ehlo", "client.test"), ("mail", sender)] + [("rcpt", r) for r in rcpts]
                   + [("data", msg)])


@pytest_twisted.ensureDeferred
async def test_every_step_in_order_with_macros_and_a_clean_message_queued(tmp_path, milters, mtas):
    milter = milters()
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port, ("b@example.com", "c@example.com"))
    assert [code for code, _ in replies] == [250, 250, 250, 250, 250]
    await wait_until(lambda: milter.closed == 1, what="the milter connection closed after QUIT")
    assert milter.commands() == ["O", "C", "H", "M", "R", "R", "T", "L", "L", "L", "L", "N", "B", "E", "Q"]
    version, actions, steps = milter.args("O")[0]
    assert version == 6 and actions == 0x1FF and steps & 0x1000  # offers SMFIP_NR_CONN
    host, family, port, addr = milter.args("C")[0]
    assert (host, family, addr) == ("localhost", "4", "127.0.0.1") and port > 0
    assert milter.args("H") == ["client.test"]
    assert milter.args("M") == [["<a@example.com>"]]
    assert milter.args("R") == [["<b@example.com>"], ["<c@example.com>"]]
    assert milter.args("L")[3] == ("X-Folded", "one\n two")
    assert milter.args("B") == [b"Hello.\r\n"]
    assert milter.macros["C"]["j"] == "mx.test" and milter.macros["C"]["{daemon_name}"] == "mqmta"
    assert milter.macros["C"]["{client_addr}"] == "127.0.0.1"
    assert milter.macros["M"]["{mail_addr}"] == "a@example.com" and milter.macros["M"]["i"]
    assert milter.macros["R"]["{rcpt_addr}"] == "c@example.com"
    assert milter.macros["E"]["i"] == milter.macros["M"]["i"]
    docs = await mta.documents()
    assert sorted(d["recipient"] for d in docs) == ["b@example.com", "c@example.com"]
    assert docs[0]["mime"].encode() == MSG  # nothing changed: the body as received
    # Every step's round trip is counted and timed for /metrics and the console's Plugins page.
    timed = {hook: row[0] for (plugin, hook), row in METRICS.hooks().items() if plugin == f"milter {milter.spec}"}
    assert timed["rcpt"] >= 2 and timed["eom"] >= 1 and timed["connect"] >= 1


@pytest_twisted.ensureDeferred
async def test_reject_at_rcpt_refuses_that_recipient_only(tmp_path, milters, mtas):
    milter = milters(lambda cmd, args: REJECT if cmd == "R" and args[0] == "<bad@example.com>" else None)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port, ("bad@example.com", "b@example.com"))
    assert [code for code, _ in replies] == [250, 250, 550, 250, 250]
    assert replies[2][1] == b"5.7.1 Command rejected"
    docs = await mta.documents()
    assert [d["recipient"] for d in docs] == ["b@example.com"]


@pytest.mark.parametrize("answer, code, text", [
    (REJECT, 550, b"5.7.1 Command rejected"),
    (TEMPFAIL, 451, b"4.7.1 Service unavailable - try again later"),
    (reply_code("554-5.7.0 first line\r\n554 5.7.0 second, 100%% sure"), 554, b"5.7.0 first line\n5.7.0 second, 100% sure"),
])
@pytest_twisted.ensureDeferred
async def test_refusals_at_end_of_message(tmp_path, milters, mtas, answer, code, text):
    milter = milters(lambda cmd, args: answer if cmd == "E" else None)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port)
    assert replies[-1] == (code, text)
    assert await mta.documents() == []


@pytest_twisted.ensureDeferred
async def test_reject_at_mail_and_at_helo_then_the_session_goes_on(tmp_path, milters, mtas):
    def script(cmd, args):
        if cmd == "H" and args == "bad.test":
            return reply_code("550 5.7.1 go away")
        if cmd == "M" and args[0] == "<spam@example.com>":
            return REJECT
        return None

    milter = milters(script)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(session, mta.port, [
        ("ehlo", "bad.test"), ("ehlo", "good.test"), ("mail", "spam@example.com"), ("rset",),
        ("mail", "a@example.com"), ("rcpt", "b@example.com"), ("data", MSG)])
    assert [code for code, _ in replies] == [550, 250, 550, 250, 250, 250, 250]
    assert replies[0][1] == b"5.7.1 go away"
    assert len(await mta.documents()) == 1


@pytest_twisted.ensureDeferred
async def test_reject_at_connect_refuses_the_greeting(tmp_path, milters, mtas):
    milter = milters(lambda cmd, args: REJECT if cmd == "C" else None)
    mta = await mtas(tmp_path, milter)

    def connect():
        with pytest.raises(smtplib.SMTPConnectError) as e:
            smtplib.SMTP("127.0.0.1", mta.port, timeout=10)
        return e.value.smtp_code, e.value.smtp_error

    assert await in_thread(connect) == (554, b"5.7.1 Access denied")


@pytest_twisted.ensureDeferred
async def test_header_sender_recipient_and_body_changes_are_queued(tmp_path, milters, mtas):
    def script(cmd, args):
        if cmd == "E":
            return [PROGRESS, add_header("X-Added", "yes"), insert_header(0, "X-First", "top"),
                    change_header(1, "Subject", "changed"), change_header(1, "X-Folded", ""),
                    change_from("<new@example.com>", "BODY=8BITMIME"), add_rcpt("added@example.com"),
                    add_rcpt_par("<par@example.com>", "NOTIFY=NEVER"), del_rcpt("<c@example.com>"),
                    replace_body(b"New body\n"), replace_body(b"second chunk\r\n"), pkt(b"c")]
        return None

    milter = milters(script)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port, ("b@example.com", "c@example.com"))
    assert replies[-1][0] == 250
    docs = await mta.documents()
    assert sorted(d["recipient"] for d in docs) == ["added@example.com", "b@example.com", "par@example.com"]
    assert {d["envelope"] for d in docs} == {"new@example.com"}
    par = next(d for d in docs if d["recipient"] == "par@example.com")
    assert par["dsn"]["notify"] == "NEVER"
    assert docs[0]["mime"] == ("X-First: top\r\nFrom: a@example.com\r\nTo: b@example.com\r\nSubject: changed\r\n"
                               "X-Added: yes\r\n\r\nNew body\r\nsecond chunk\r\n")


@pytest_twisted.ensureDeferred
async def test_discard_answers_250_and_keeps_nothing(tmp_path, milters, mtas):
    milter = milters(lambda cmd, args: DISCARD if cmd == "R" else None)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port)
    assert [code for code, _ in replies] == [250, 250, 250, 250]
    assert await mta.documents() == []
    assert "E" not in milter.commands()


@pytest_twisted.ensureDeferred
async def test_quarantine_puts_the_message_in_the_refused_queue_with_the_reason(tmp_path, milters, mtas):
    milter = milters(lambda cmd, args: [quarantine("looks like a virus"), pkt(b"c")] if cmd == "E" else None)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port)
    assert replies[-1][0] == 250
    assert await mta.documents() == []
    held = await mta.documents("refused")
    assert [d["quarantine"] for d in held] == ["looks like a virus"]


@pytest_twisted.ensureDeferred
async def test_accept_at_mail_skips_the_rest_of_the_message_and_skip_ends_the_body(tmp_path, milters, mtas):
    first = milters(lambda cmd, args: ACCEPT if cmd == "M" else None)
    second = milters(lambda cmd, args: SKIP if cmd == "B" else None, steps=0x400)
    mta = await mtas(tmp_path, first, second)
    big = MSG + (b"x" * 998 + b"\r\n") * 70
    replies = await in_thread(send, mta.port, ("b@example.com",), big)
    assert replies[-1][0] == 250
    await wait_until(lambda: first.closed == 1, what="the session's milter connections closed")
    assert first.commands() == ["O", "C", "H", "M", "Q"]
    assert second.commands().count("B") == 1 and "E" in second.commands()
    assert len(await mta.documents()) == 1


@pytest_twisted.ensureDeferred
async def test_no_reply_steps_are_not_waited_for(tmp_path, milters, mtas):
    # NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_HDR, NR_EOH, NR_BODY, and no CONNECT at all
    milter = milters(steps=0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x80 | 0x40000 | 0x80000 | 0x01)
    mta = await mtas(tmp_path, milter)
    replies = await in_thread(send, mta.port)
    assert replies[-1][0] == 250
    assert milter.commands()[:3] == ["O", "H", "M"] and "C" not in milter.commands()


@pytest_twisted.ensureDeferred
async def test_later_milters_see_earlier_ones_changes_and_the_first_refusal_wins(tmp_path, milters, mtas):
    first = milters(lambda cmd, args: [add_header("X-First", "1"), pkt(b"c")] if cmd == "E" else None)
    second = milters(lambda cmd, args: reply_code("550 5.7.1 no thanks") if cmd == "R" and "no" in args[0] else None)
    mta = await mtas(tmp_path, first, second)
    replies = await in_thread(send, mta.port, ("no@example.com", "b@example.com"))
    assert replies[2] == (550, b"5.7.1 no thanks")
    assert ("X-First", "1") in second.args("L")
    assert first.args("R") == second.args("R") == [["<no@example.com>"], ["<b@example.com>"]]


@pytest.mark.parametrize("default, code", [("tempfail", 451), ("reject", 550), ("accept", 250)])
@pytest_twisted.ensureDeferred
async def test_a_milter_that_is_down_costs_the_default_action(tmp_path, milters, mtas, default, code):
    from tests.conftest import free_port

    mta = await mtas(tmp_path, f"inet:127.0.0.1:{free_port()}", milter_default_action=default)
    replies = await in_thread(session, mta.port, [("ehlo", "client.test"), ("mail", "a@example.com")])
    assert replies[1][0] == code


@pytest.mark.parametrize("failure", ["close", "silent", "malformed", "change-before-eom"])
@pytest_twisted.ensureDeferred
async def test_a_broken_milter_costs_only_the_default_action_and_the_mta_serves_on(
        tmp_path, milters, mtas, failure):
    answers = {"close": [CLOSE], "silent": [], "malformed": [b"\x00\x00\x00\x00garbage"],
               "change-before-eom": [add_header("X-No", "1"), pkt(b"c")]}

    broken = milters(lambda cmd, args: answers[failure] if cmd == "R" else None)
    good = milters()
    mta = await mtas(tmp_path, broken, good, milter_timeout="1")
    replies = await in_thread(send, mta.port, ("b@example.com", "c@example.com"))
    # the RCPT it broke on, and every later step of the session, get the default: tempfail
    assert [code for code, _ in replies[:4]] == [250, 250, 451, 451]
    # the next session: the same milter broken again costs the same, and nothing hangs
    replies = await in_thread(send, mta.port)
    assert replies[2][0] == 451
    assert await mta.documents() == []
    # with the default action accept, the same failure lets the mail through the good milter
    mta2 = await mtas(tmp_path, broken, good, milter_timeout="1", milter_default_action="accept")
    replies = await in_thread(send, mta2.port)
    assert [code for code, _ in replies] == [250, 250, 250, 250]
    assert len(await mta2.documents()) == 1


ORDER_PLUGIN = """
def mq_smtp_in_rcptto(ctx, conn, address):
    CALLS.append(("plugin rcpt", address))
    if address.startswith("plugin-no"):
        mq.MQ_setResponse(conn, 550, "plugin says no", "5.7.1")
    return False

def mq_smtp_in_data(ctx, conn, mime):
    CALLS.append(("plugin data", b"X-Milter" in mime))
    return False

def mq_smtp_in_message(ctx, conn, message):
    CALLS.append(("plugin message", b"X-Milter: seen" in mq.MQ_mime(message), mq.MQ_recipient(message)))
    return False
"""


@pytest_twisted.ensureDeferred
async def test_milters_run_after_the_plugins_at_each_step_and_before_mq_smtp_in_message(tmp_path, milters, mtas):
    """docs/plugins.rst, "Milters and plugins": a command a plugin refused never reaches the milters;
    mq_smtp_in_data sees the MIME as received, mq_smtp_in_message the milters' changes."""
    import sys

    from tests.test_plugins_support import write_plugins

    order: list = []

    def script(cmd, args):
        if cmd == "R":
            order.append(("milter rcpt", args[0]))
            if args[0] == "<milter-no@example.com>":
                return REJECT
        if cmd == "E":
            order.append(("milter end of message",))
            return [add_header("X-Milter", "seen"), pkt(b"c")]
        return None

    milter = milters(script)
    plugins = write_plugins(tmp_path / "plugins", {"order.py": ORDER_PLUGIN})
    mta = await mtas(tmp_path, milter, plugin_directory=str(plugins))
    calls = sys.modules["mqtwisted_plugin_order"].CALLS
    replies = await in_thread(send, mta.port, ("plugin-no@example.com", "milter-no@example.com", "b@example.com"))
    assert [code for code, _ in replies] == [250, 250, 550, 550, 250, 250]
    assert replies[2][1] == b"5.7.1 plugin says no" and replies[3][1] == b"5.7.1 Command rejected"
    assert [c for c in calls if c[0].startswith("plugin")] == [
        ("plugin rcpt", "plugin-no@example.com"), ("plugin rcpt", "milter-no@example.com"),
        ("plugin rcpt", "b@example.com"), ("plugin data", False), ("plugin message", True, "b@example.com")]
    assert order == [("milter rcpt", "<milter-no@example.com>"), ("milter rcpt", "<b@example.com>"),
                     ("milter end of message",)]


@pytest_twisted.ensureDeferred
async def test_sighup_gives_new_sessions_the_new_milters(tmp_path, milters):
    first, second = milters(), milters()
    config = tmp_path / "mqmta.conf"
    config.write_text(f"milters: {first.spec}\n")
    mta = await start_mta(str(tmp_path / "data"), config=str(config))
    try:
        await in_thread(send, mta.port)
        config.write_text(f"milters: {second.spec}\nmilter-default-action: accept\n")
        assert mta.service.reload()
        await in_thread(send, mta.port)
    finally:
        await mta.stop()
    assert first.commands().count("M") == 1 and second.commands().count("M") == 1


@pytest_twisted.ensureDeferred
async def test_a_milter_on_a_unix_socket(tmp_path, mtas):
    from twisted.internet import reactor

    milter = MilterPeer(lambda cmd, args: [add_header("X-Unix", "yes"), pkt(b"c")] if cmd == "E" else None)
    path = str(tmp_path / "milter.sock")
    listening = reactor.listenUNIX(path, milter)
    try:
        mta = await mtas(tmp_path, f"unix:{path}")
        replies = await in_thread(send, mta.port)
        assert replies[-1][0] == 250
        [doc] = await mta.documents()
        assert "\r\nX-Unix: yes\r\n" in doc["mime"]
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_and_auth_macros_after_starttls_and_login(tmp_path, milters, mtas):
    from tests.conftest import send_mail

    milter = milters()
    mta = await mtas(tmp_path, milter, smtp_auth="hardcoded://alice:secret")
    await in_thread(send_mail, mta.port, starttls=True, login=("alice", "secret"))
    # HELO twice: before STARTTLS without TLS macros, after it with them
    assert milter.args("H") == ["client.test", "client.test"]
    assert milter.macros["H"]["{tls_version}"].startswith("TLS")
    assert milter.macros["H"]["{cipher}"]
    assert milter.macros["M"]["{auth_authen}"] == "alice"
    assert milter.macros["M"]["{auth_type}"] in ("PLAIN", "LOGIN")  # smtplib's choice
    assert len(await mta.documents()) == 1
