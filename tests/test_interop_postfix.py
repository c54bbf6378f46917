"""Interop with Postfix, the reference MTA, in both directions:

* mqmta delivering to Postfix, which keeps the mail in a Maildir (virtual mailbox domain);
* Postfix relaying into mqmta (``relayhost = [127.0.0.1]:PORT``).

The first uses the session's shared Postfix (``postfix_keeper``), the second one of its own that
relays to this test's mqmta (tests/postfixpeer.py).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import threads

from mqtwisted.testing import start_mta
from tests.conftest import send_mail, wait_until
from tests.postfixpeer import PostfixInstance, need_postfix

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postfix")]


BODY = (
    "From: sender@example.org\r\nTo: b@example.com\r\nSubject: interop {n}\r\n\r\n"
    "hello {n}\r\n.a line that starts with a dot\r\n..two dots\r\nlast\r\n"
)


@pytest_twisted.ensureDeferred
async def test_mqmta_delivers_to_postfix_which_keeps_the_mail(tmp_path, postfix_keeper) -> None:
    postfix = postfix_keeper
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", smarthost=f"127.0.0.1:{postfix.port}")
    try:
        for n in range(3):
            await threads.deferToThread(send_mail, mta.port, rcpts=[f"user{n}@example.com"], msg=BODY.format(n=n), sender="sender@example.org", timeout=30)

        async def delivered() -> bool:
            return (await mta.queue.stats()).get("success", 0) >= 3

        await wait_until(delivered, 30, "mqmta success results")
        await wait_until(lambda: len(postfix.kept(b"Subject: interop ")) >= 3, 30, "messages in Postfix's Maildir")
        sent = [line for line in postfix.log().splitlines() if "status=sent" in line and "@example.com>" in line]
        assert sorted(n for n in range(3) for line in sent if f"to=<user{n}@example.com>" in line) == [0, 1, 2]
        kept = postfix.kept(b"Subject: interop ")
        for message in kept:
            # Dot-stuffing undone by Postfix: the body arrives exactly as sent.
            assert b"\n.a line that starts with a dot\n..two dots\nlast\n" in message.replace(b"\r\n", b"\n")
        assert sorted(m.split(b"Subject: interop ")[1][:1] for m in kept) == [b"0", b"1", b"2"]
        success = await mta.documents("success")
        attempts = [d["results"][-1] for d in success]
        assert {(a["state"], a["result"], a["code"]) for a in attempts} == {("message", "accepted", 250)}
        assert {a["mta"] for a in attempts} == {"postfix.test"}
        assert max(a["messages"] for a in attempts) >= 1
        assert (await mta.queue.stats()).get("outbox", 0) == 0
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_postfix_relays_into_mqmta(tmp_path) -> None:
    need_postfix()
    mta = await start_mta(str(tmp_path / "mta"), delivery="off")
    postfix = PostfixInstance(relay_port=mta.port)
    await threads.deferToThread(postfix.start)
    try:
        await threads.deferToThread(send_mail, postfix.port, rcpts=["b@example.com", "c@example.com"], msg=BODY.format(n=7), sender="sender@example.org", timeout=30)

        async def arrived() -> bool:
            return len(await mta.documents("outbox")) >= 2

        await wait_until(arrived, 30, "documents on mqmta's outbox")
        await wait_until(lambda: postfix.log().count("status=sent") >= 2, 15, "status=sent in Postfix's log")
        docs = sorted(await mta.documents("outbox"), key=lambda d: d["recipient"])
        assert [d["recipient"] for d in docs] == ["b@example.com", "c@example.com"]
        assert {d["envelope"] for d in docs} == {"sender@example.org"}
        mime = docs[0]["mime"].replace("\r\n", "\n")
        assert "by postfix.test (Postfix)" in mime  # Postfix's own Received: line
        assert "\nhello 7\n.a line that starts with a dot\n..two dots\nlast\n" in mime
        assert docs[0]["connection"]["remote-ip"] == "127.0.0.1"
    finally:
        await threads.deferToThread(postfix.stop)
        await mta.stop()
