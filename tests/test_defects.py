"""One regression test per twisted.mail server defect that the server fixes (listed in the
docstring of mqtwisted/smtp/server.py).

Each test runs against our server and against bare ``twisted.mail.smtp.ESMTP``; the bare runs are
strict xfails, which proves each test really detects the defect it is named after.
"""

from __future__ import annotations

import re

import pytest

from mqtwisted.connection import Reply
from tests.smtpdialog import Recorder, SlowHooks, bare, ours

BARE_FAILS = pytest.mark.xfail(strict=True, reason="the defect in bare twisted.mail")
KINDS = ["ours", pytest.param("bare", marks=BARE_FAILS)]
BARE_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class _Ctx:
    def getContext(self):  # pragma: no cover - never called in memory
        raise AssertionError


def session(kind, **kw):
    """A greeted session and a function returning the messages stored so far (as CRLF bytes)."""
    if kind == "ours":
        dialog, rec = ours(**kw)
        return dialog, lambda: [m[2] for m in rec.messages]
    dialog, store = bare(**kw)
    return dialog, lambda: list(store)


TRANSACTION = b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


@pytest.mark.parametrize("kind", KINDS)
def test_starttls_forgets_commands_pipelined_behind_it(kind):
    dialog, _ = session(kind, tls=_Ctx()) if kind == "ours" else session(kind, ctx=_Ctx())
    dialog.send(b"EHLO c.test\r\n")
    dialog.replies()
    dialog.send(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
    assert dialog.codes() == [220]  # the injected MAIL was not answered, hence not run
    if hasattr(dialog.protocol, "handshakeCompleted"):
        dialog.protocol.handshakeCompleted()
    dialog.send(b"RCPT TO:<b@example.com>\r\n")
    codes = dialog.codes()
    assert codes == [503], "RCPT after TLS must fail: neither EHLO nor MAIL is remembered"


@pytest.mark.parametrize("kind", KINDS)
def test_starttls_requires_a_new_ehlo(kind):
    dialog, _ = session(kind, tls=_Ctx()) if kind == "ours" else session(kind, ctx=_Ctx())
    dialog.send(b"EHLO c.test\r\n")
    dialog.replies()
    dialog.send(b"STARTTLS\r\n")
    assert dialog.codes() == [220]
    dialog.send(b"MAIL FROM:<a@example.com>\r\n")
    assert dialog.codes() == [503]


@pytest.mark.parametrize("kind", KINDS)
def test_overlong_line_in_data_does_not_leave_data(kind):
    dialog, stored = session(kind)
    dialog.send(TRANSACTION)
    assert dialog.codes()[-1] == 354
    dialog.send(b"Subject: x\r\n\r\n" + b"A" * 20000 + b"\r\n")
    dialog.send(b"RSET\r\nMAIL FROM:<evil@example.com>\r\nQUIT\r\n.\r\n")
    codes = dialog.codes()
    assert len(codes) == 1 and codes[0] >= 500, codes  # one reply: the end of DATA, refused
    assert not dialog.closed
    assert stored() == []


@pytest.mark.parametrize("kind", KINDS)
def test_unterminated_line_is_not_buffered_without_limit(kind):
    dialog, _ = session(kind)
    dialog.send(b"EHLO c.test\r\n")
    for _ in range(64):
        dialog.send(b"X" * 16384)
    assert len(dialog.protocol._buffer) <= 16384
    dialog.send(b"\r\nNOOP\r\n")
    codes = dialog.codes()
    assert codes[0] == 250 and codes[-1] == 250 and set(codes[1:-1]) == {500}


@pytest.mark.parametrize("kind", KINDS)
def test_bare_lf_dot_is_not_an_end_and_never_stored(kind):
    dialog, stored = session(kind)
    dialog.send(TRANSACTION)
    dialog.replies()
    dialog.send(
        b"Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.com>\r\n"
        b"DATA\r\nsmuggled\r\n.\r\n"
    )
    dialog.codes()
    assert all(not BARE_LF.search(m) for m in stored()), "a bare LF was kept for the next hop"
    assert len(stored()) <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_non_ascii_verb_gets_an_error_and_the_session_goes_on(kind):
    dialog, _ = session(kind)
    dialog.send(b"EHLO c.test\r\n\xc3\xa9HLO x\r\n\xff\xfe\r\nNOOP\r\n")
    codes = dialog.codes()
    assert codes[0] == 250 and codes[1] == 500 and codes[2] == 500 and codes[3] == 250
    assert not dialog.closed


@pytest.mark.parametrize("kind", KINDS)
def test_auth_without_argument_gets_an_error(kind):
    dialog, _ = session(kind)
    dialog.send(b"EHLO c.test\r\nAUTH\r\nNOOP\r\n")
    codes = dialog.codes()
    assert codes[0] == 250 and 500 <= codes[1] < 600 and codes[2] == 250


def test_pipelined_commands_answered_in_order_while_hooks_decide():
    hooks = SlowHooks({"mq_smtp_in_mailfrom", "mq_smtp_in_rcptto"})
    dialog, rec = ours(hooks=hooks)
    dialog.send(TRANSACTION.replace(b"DATA\r\n", b"RCPT TO:<c@example.com>\r\nDATA\r\n"))
    assert dialog.codes() == [250]  # EHLO; the rest waits for the mailfrom hook
    dialog.send(b"NOOP\r\n" * 20000)  # a flood behind a pending command: reading pauses
    assert dialog.transport.producerState == "paused"
    while hooks.pending:
        hooks.release_all()
    assert dialog.codes() == [250, 250, 250, 354]  # the NOOPs are DATA content now
    assert dialog.transport.producerState == "producing"


def test_pipelined_commands_in_order_bare_twisted_fails():
    slow = []
    dialog, _ = bare(slow=slow)
    dialog.send(TRANSACTION)
    while slow:
        slow.pop(0).callback(None)
    codes = dialog.codes()
    # Twisted #8126: RCPT and DATA are answered 503 while MAIL's Deferred is pending.
    assert codes != [250, 250, 250, 354]


@pytest.mark.parametrize("kind", KINDS)
def test_ehlo_advertises_the_extensions_it_implements(kind):
    dialog, _ = session(kind)
    dialog.send(b"EHLO c.test\r\n")
    (code, lines), = dialog.replies()
    keywords = {line.split()[0] for line in lines[1:]}
    assert {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN"} <= keywords


@pytest.mark.parametrize("kind", KINDS)
def test_noop_help_vrfy_answered(kind):
    dialog, _ = session(kind)
    dialog.send(b"EHLO c.test\r\nNOOP\r\nHELP\r\nVRFY someone\r\n")
    assert dialog.codes() == [250, 250, 214, 252]


@pytest.mark.parametrize("kind", KINDS)
def test_mail_requires_ehlo_first(kind):
    dialog, _ = session(kind)
    dialog.send(b"MAIL FROM:<a@example.com>\r\n")
    assert dialog.codes() == [503]


def test_temporary_storage_failure_is_4xx():
    dialog, _ = ours(accept=Recorder(answer=Reply(451, "Queue unavailable", "4.3.0")))
    dialog.send(TRANSACTION + b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert dialog.codes()[-1] == 451


def test_temporary_storage_failure_bare_twisted_says_550():
    dialog, _ = bare(fail_eom=True)
    dialog.send(TRANSACTION + b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert dialog.codes()[-1] == 550  # the defect: a full disk is reported as a permanent failure


@pytest.mark.parametrize("kind", KINDS)
def test_no_open_relay(kind):
    if kind == "ours":
        dialog, _ = ours(peer="203.0.113.9")
    else:
        dialog, _ = bare()
        dialog.transport.peerAddress = type(dialog.transport.peerAddress)("TCP", "203.0.113.9", 1)
    dialog.send(b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<victim@example.org>\r\n")
    codes = dialog.codes()
    assert codes[-1] == 554


def test_data_reply_carries_one_queue_id_per_recipient():
    dialog, _ = ours()
    dialog.send(TRANSACTION.replace(b"DATA", b"RCPT TO:<c@example.com>\r\nDATA"))
    dialog.replies()
    dialog.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    (code, lines), = dialog.replies()
    assert code == 250 and lines == ["2.0.0 Ok, queued as:", "2.0.0 id1-0", "2.0.0 id1-1"]
