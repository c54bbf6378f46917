"""DSN onward (RFC 3461): "relayed" when the next hop does not offer DSN, one "delayed" per
document after delay-warning-time, "delivered" for the local queue; every report read back with
Python's ``email`` package as an RFC 3464 ``multipart/report``.

In memory (MemoryReactorClock, scripted servers) first, then through a real mqmta on loopback,
and to a real Postfix as the next hop, whose log shows the parameters it received.
"""

from __future__ import annotations

import email
import email.utils
import smtplib

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from mqtwisted.cleanup import Cleanup
from mqtwisted.delivery import DeliveryOptions
from mqtwisted.envelope import Body, Envelope, Recipient
from mqtwisted.options import default
from mqtwisted.queue import Publication
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.testing import start_mta, test_connection
from tests.conftest import wait_until
from tests.deliveryhelpers import doc, make
from tests.dsnreports import parse_report
from tests.memqueue import MemoryQueue
from tests.postfixpeer import VERBOSE_PEER
from tests.smtppeers import ScriptedFactory

NO_DSN = ("PIPELINING", "8BITMIME", "SIZE 10000000")
ASKED = {"notify": "SUCCESS,DELAY", "orcpt": "rfc822;orig@example.net", "envid": "ENV-42", "ret": "FULL"}


def publish(queue: MemoryQueue, *docs: dict) -> None:
    queue.publish([Publication("outbox", d) for d in docs])


# -- relayed -----------------------------------------------------------------------------------


def test_relayed_report_when_the_next_hop_offers_no_dsn() -> None:
    server = ScriptedFactory(extensions=NO_DSN)
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc(dsn=ASKED, received=1000))
    net.run()
    assert server.messages[0]["rcpt"] == [b"RCPT TO:<user@example.com>"]  # nothing to pass on
    (res,) = queue.docs("success")
    (report,) = queue.docs("dsn")
    assert report["envelope"] == "" and report["recipient"] == "sender@example.org"
    assert report["bounce"] == {"recipient": "user@example.com", "status": "2.0.0", "action": "relayed"}
    parsed = parse_report(report)
    assert parsed.message["Subject"] == "Successful Mail Delivery Report"
    assert parsed.per_message["Reporting-MTA"] == "dns; mqmta.test"
    assert parsed.per_message["Original-Envelope-Id"] == "ENV-42"
    assert parsed.per_message["Arrival-Date"] == email.utils.formatdate(1000)
    rcpt = parsed.per_recipient
    assert rcpt["Original-Recipient"] == "rfc822;orig@example.net"
    assert rcpt["Final-Recipient"] == "rfc822; user@example.com"
    assert (rcpt["Action"], rcpt["Status"]) == ("relayed", "2.0.0")
    assert rcpt["Remote-MTA"] == "dns; mx.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 250 2.0.0 queued as X"
    # A success report returns the headers only, whatever RET says (RET is for failures).
    assert parsed.returned_type == "text/rfc822-headers"
    assert "Subject: t" in parsed.returned and "hello" not in parsed.returned


def test_no_relayed_report_when_the_next_hop_carries_the_request_on() -> None:
    server = ScriptedFactory()  # offers DSN
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc(dsn=ASKED))
    net.run()
    (rcpt,) = server.messages[0]["rcpt"]
    assert rcpt == b"RCPT TO:<user@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig@example.net"
    assert b"ENVID=ENV-42" in server.messages[0]["from"]
    assert len(queue.docs("success")) == 1 and queue.docs("dsn") == []


def test_relayed_report_only_when_notify_names_success() -> None:
    server = ScriptedFactory(extensions=NO_DSN)
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc("a@example.com"), doc("b@example.com", dsn={"notify": "FAILURE,DELAY"}),
            doc("c@example.com", dsn={"notify": "SUCCESS"}, envelope=""),
            doc("d@example.com", dsn={"notify": "SUCCESS"}))
    net.run()
    assert len(queue.docs("success")) == 4
    # a, b and d went in one transaction (one sender, one body): each recipient decides alone.
    assert len(server.messages[0]["rcpt"]) == 3
    assert [r["bounce"]["recipient"] for r in queue.docs("dsn")] == ["d@example.com"]


# -- delayed -----------------------------------------------------------------------------------


def test_one_delayed_report_after_delay_warning_time_then_the_failure() -> None:
    server = ScriptedFactory(replies={"RCPT": ["451 4.7.1 greylisted, try later"] * 20})
    svc, queue, net, clock = make({"10.0.0.1": server}, retry_interval=(600,), delay_warning_time=1800,
                                  max_delivertime=4000)
    svc.startService()
    publish(queue, doc(dsn={**ASKED, "notify": "FAILURE,DELAY"}, received=0))
    seen = []
    for _ in range(7):  # attempts at 0, 600, ... 3600, the last (the next would pass the deadline)
        net.run()
        seen.append(len(queue.docs("dsn")))
        clock.advance(600)
    # Nothing before 1800 s, one report at the attempt at 1800, never a second on later retries;
    # the failure report at the end.
    assert seen == [0, 0, 0, 1, 1, 1, 2]
    delayed, failed = queue.docs("dsn")
    assert delayed["bounce"] == {"recipient": "user@example.com", "status": "4.7.1", "action": "delayed"}
    parsed = parse_report(delayed)
    assert parsed.message["Subject"] == "Delayed Mail (still being retried)"
    rcpt = parsed.per_recipient
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.7.1")
    assert rcpt["Diagnostic-Code"] == "smtp; 451 4.7.1 greylisted, try later"
    assert rcpt["Will-Retry-Until"] == email.utils.formatdate(4000)  # first attempt + max-delivertime
    assert rcpt["Last-Attempt-Date"] == email.utils.formatdate(1800)
    assert rcpt["Original-Recipient"] == "rfc822;orig@example.net"
    assert parsed.per_message["Original-Envelope-Id"] == "ENV-42"
    assert parsed.returned_type == "text/rfc822-headers" and "hello" not in parsed.returned
    # The failure report at the end returns the whole message (RET=FULL) and is the other action.
    final = parse_report(failed)
    assert final.per_recipient["Action"] == "failed" and final.per_recipient["Status"].startswith("5.")
    assert final.returned_type == "message/rfc822" and "hello" in final.returned
    (gone,) = queue.docs("failure")
    assert gone["delaywarning"] == 1800  # the flag that kept the retries quiet travels with it


def test_no_delayed_report_unless_asked_and_enabled() -> None:
    server = ScriptedFactory(replies={"RCPT": ["451 4.3.0 later"] * 20})
    svc, queue, net, clock = make({"10.0.0.1": server}, retry_interval=(600,), delay_warning_time=600)
    svc.startService()
    publish(queue, doc("a@example.com", received=0), doc("b@example.com", dsn={"notify": "FAILURE"}, received=0),
            doc("c@example.com", dsn={"notify": "DELAY"}, received=0, delaywarning=1))
    for _ in range(3):
        net.run()
        clock.advance(600)
    assert len(server.sessions[0].commands) > 3 and queue.docs("dsn") == []
    # delay-warning-time 0 turns it off even for a sender who asked.
    server = ScriptedFactory(replies={"RCPT": ["451 4.3.0 later"] * 20})
    svc, queue, net, clock = make({"10.0.0.1": server}, retry_interval=(600,), delay_warning_time=0)
    svc.startService()
    publish(queue, doc(dsn={"notify": "DELAY"}, received=0))
    for _ in range(3):
        net.run()
        clock.advance(86400 // 4)
    assert queue.docs("dsn") == []


def test_delay_warning_time_option_takes_units() -> None:
    assert default("delay-warning-time") == 14400 == DeliveryOptions().delay_warning_time
    assert DeliveryOptions.from_options({"delay-warning-time": "30m"}).delay_warning_time == 1800
    assert DeliveryOptions.from_options({"delay-warning-time": "0"}).delay_warning_time == 0


# -- delivered (local queue) -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delivered_report_for_the_local_queue_in_the_same_publish() -> None:
    queue = MemoryQueue(reactor)
    cleanup = Cleanup(queue, RelayPolicy(local_domains=frozenset({"local.test"})), "mx.test")
    envelope = Envelope("a@example.org", {"ENVID": "E+2B7", "RET": "FULL"}, [
        Recipient("u@local.test", {"NOTIFY": "SUCCESS", "ORCPT": "rfc822;alias@local.test"}, True),
        Recipient("v@local.test", {}, True),
        Recipient("w@example.com", {"NOTIFY": "SUCCESS"}, False),
    ])
    envelope.received = 1500.0
    mime = b"Subject: local\r\n\r\nbody text\r\n"
    ids = await cleanup(test_connection(), envelope, Body(data=mime, size=len(mime)))
    assert len(ids) == 4  # three recipients and one report, stored together
    assert len(queue.docs("local")) == 2 and len(queue.docs("outbox")) == 1
    (report,) = queue.docs("dsn")
    assert report["recipient"] == "a@example.org" and report["bounce"]["action"] == "delivered"
    parsed = parse_report(report)
    rcpt = parsed.per_recipient
    assert (rcpt["Action"], rcpt["Status"]) == ("delivered", "2.0.0")
    assert rcpt["Final-Recipient"] == "rfc822; u@local.test"
    assert rcpt["Original-Recipient"] == "rfc822;alias@local.test"
    assert parsed.per_message["Original-Envelope-Id"] == "E+7"  # xtext decoded
    assert parsed.per_message["Reporting-MTA"] == "dns; mx.test"
    assert parsed.returned_type == "text/rfc822-headers" and "Subject: local" in parsed.returned
    assert "body text" not in parsed.returned


# -- through a real mqmta on loopback ------------------------------------------------------------


def _send(port: int, rcpt: str, notify: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        s.sendmail("sender@example.org", [rcpt], b"Subject: real\r\n\r\nreal body\r\n",
                   mail_options=["ENVID=REAL-1"], rcpt_options=[f"NOTIFY={notify}", "ORCPT=rfc822;x@y.test"])


@pytest_twisted.ensureDeferred
async def test_real_mqmta_one_delayed_report_and_a_delivered_one(tmp_path) -> None:
    server = ScriptedFactory(replies={"RCPT": ["451 4.2.0 mailbox busy"] * 100})
    listening = reactor.listenTCP(0, server, interface="127.0.0.1")
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", smarthost=f"127.0.0.1:{listening.getHost().port}",
                          retry_interval="1", delay_warning_time="2s", max_idle_time="0",
                          local_domains="local.test")
    try:
        await threads.deferToThread(_send, mta.port, "b@example.com", "DELAY")
        await threads.deferToThread(_send, mta.port, "u@local.test", "SUCCESS")

        def attempts() -> int:
            return sum(c.startswith(b"RCPT") for s in server.sessions for c in s.commands)

        async def reported() -> bool:
            return len(await mta.documents("dsn")) >= 2

        await wait_until(reported, 30, "the delayed and delivered reports")
        after = attempts()
        await wait_until(lambda: attempts() >= after + 3, 30, "three more attempts after the warning")
        documents = await mta.documents("dsn")
        assert sorted(r["bounce"]["action"] for r in documents) == ["delayed", "delivered"]  # still one delayed
        reports = {r["bounce"]["action"]: r for r in documents}
        delayed = parse_report(reports["delayed"]).per_recipient
        assert (delayed["Action"], delayed["Status"]) == ("delayed", "4.2.0")
        assert delayed["Diagnostic-Code"] == "smtp; 451 4.2.0 mailbox busy"
        assert delayed["Original-Recipient"] == "rfc822;x@y.test" and "Will-Retry-Until" in delayed
        assert parse_report(reports["delivered"]).per_message["Original-Envelope-Id"] == "REAL-1"
        (waiting,) = await mta.documents("outbox")
        assert waiting["delaywarning"] >= waiting["received"] + 2
    finally:
        await mta.stop()
        await listening.stopListening()


# -- a real Postfix as the next hop --------------------------------------------------------------


def _send_asking(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        s.sendmail("dsn-sender@example.com", ["dsn-rcpt@example.com"],
                   b"From: dsn-sender@example.com\r\nSubject: dsn onward\r\n\r\nto postfix\r\n",
                   mail_options=["ENVID=ENV-PF-1", "RET=HDRS"],
                   rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;x@y"])


@pytest.mark.slow
@pytest.mark.xdist_group("postfix")
@pytest_twisted.ensureDeferred
async def test_postfix_as_next_hop_receives_notify_orcpt_and_envid(tmp_path, postfix_keeper) -> None:
    postfix = postfix_keeper
    # Sent from VERBOSE_PEER, whose commands the shared Postfix writes to its log.
    mta = await start_mta(str(tmp_path / "mta"), delivery="on", smarthost=f"127.0.0.1:{postfix.port}",
                          smtp_defaultips=VERBOSE_PEER)
    try:
        await threads.deferToThread(_send_asking, mta.port)

        async def delivered() -> bool:
            return len(await mta.documents("success")) >= 1

        await wait_until(delivered, 30, "mqmta's success result")
        (res,) = await mta.documents("success")
        assert res["results"][-1]["dsn"] is True  # Postfix offered DSN: the request went on
        assert await mta.documents("dsn") == []  # so no "relayed" report from mqmta

        def received(command: str) -> list[str]:
            return [line for line in postfix.log().splitlines() if f"[{VERBOSE_PEER}]: {command}" in line]

        await wait_until(lambda: received("RCPT TO:<dsn-rcpt@example.com>"), 30, "the RCPT in Postfix's log")
        (rcpt,) = received("RCPT TO:<dsn-rcpt@example.com>")
        assert rcpt.endswith("RCPT TO:<dsn-rcpt@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x@y"), rcpt
        (mail,) = received("MAIL FROM:<dsn-sender@example.com>")
        assert "RET=HDRS" in mail and "ENVID=ENV-PF-1" in mail, mail

        # Postfix acted on it: its own "delivered" report (NOTIFY=SUCCESS), back to the sender,
        # carries the ORCPT and ENVID it received from mqmta.
        def postfix_report() -> list[bytes]:
            return [m for m in postfix.kept(b"ENV-PF-1") if b"multipart/report" in m]

        await wait_until(postfix_report, 30, "Postfix's delivery report in the Maildir")
        assert "sender delivery status notification" in postfix.log()
        (report,) = postfix_report()
        parsed = parse_report({"mime": report})
        assert parsed.per_message["Original-Envelope-Id"] == "ENV-PF-1"
        rcpt_fields = parsed.per_recipient
        assert rcpt_fields["Original-Recipient"] == "rfc822;x@y"
        assert rcpt_fields["Final-Recipient"] == "rfc822; dsn-rcpt@example.com"
        assert (rcpt_fields["Action"], rcpt_fields["Status"][:2]) == ("delivered", "2.")
        assert email.message_from_bytes(report)["To"] == "dsn-sender@example.com"
    finally:
        await mta.stop()
