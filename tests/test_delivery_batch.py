"""Delivery sends the documents of one message to one destination in one transaction (a RCPT
each, up to max-recipients-per-transaction), and each document gets its own outcome."""

from __future__ import annotations

from mqtwisted.queue import Publication
from tests.deliveryhelpers import RecordingHooks, doc, make
from tests.smtppeers import ScriptedFactory


def publish(queue, *docs: dict) -> None:  # type: ignore[no-untyped-def]
    queue.publish([Publication("outbox", d) for d in docs])


def rcpts(server: ScriptedFactory) -> list[list[bytes]]:
    return [m["rcpt"] for m in server.messages]


def test_copies_of_one_message_share_transactions_up_to_the_limit() -> None:
    server = ScriptedFactory(replies={"RCPT": ["250 ok", "550 5.1.1 no such user"]})
    svc, queue, net, _ = make({"10.0.0.1": server}, max_recipients=3, max_connections_per_domain=1)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(7)])
    net.run()
    # u1 was refused at its RCPT: the transaction went on for the others.
    assert rcpts(server) == [[b"RCPT TO:<u0@example.com>", b"RCPT TO:<u2@example.com>"],
                             [b"RCPT TO:<u3@example.com>", b"RCPT TO:<u4@example.com>", b"RCPT TO:<u5@example.com>"],
                             [b"RCPT TO:<u6@example.com>"]]
    assert all(m["body"] == b"Subject: t\r\n\r\nhello\r\n" for m in server.messages)
    success = {d["recipient"]: d["results"][-1] for d in queue.docs("success")}
    assert sorted(success) == [f"u{i}@example.com" for i in (0, 2, 3, 4, 5, 6)]
    assert {r["messages"] for r in success.values()} == {1, 2, 3}
    (failed,) = queue.docs("failure")
    assert failed["recipient"] == "u1@example.com" and failed["results"][-1]["code"] == 550
    assert queue.docs("outbox") == []


def test_different_bodies_senders_or_dsn_envids_are_not_mixed() -> None:
    server = ScriptedFactory()
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc("a@example.com"), doc("b@example.com", mime="Subject: other\r\n\r\nhi\r\n"),
            doc("c@example.com"), doc("d@example.com", envelope="x@example.org"),
            doc("e@example.com", dsn={"envid": "E1"}), doc("f@example.com", dsn={"notify": ["NEVER"]}))
    net.run()
    assert sorted(len(r) for r in rcpts(server)) == [1, 1, 1, 3]
    # a, c and f share a message: f's NOTIFY is a parameter of its own RCPT.
    (shared,) = [r for r in rcpts(server) if len(r) == 3]
    assert shared == [b"RCPT TO:<a@example.com>", b"RCPT TO:<c@example.com>",
                      b"RCPT TO:<f@example.com> NOTIFY=NEVER"]
    assert len(queue.docs("success")) == 6


def test_an_outbound_hook_gets_one_document_per_transaction() -> None:
    server = ScriptedFactory()
    hooks = RecordingHooks(out_data=lambda conn, handle: None)
    svc, queue, net, _ = make({"10.0.0.1": server}, hooks=hooks)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(3)])
    net.run()
    assert [len(r) for r in rcpts(server)] == [1, 1, 1]


def test_connections_are_opened_for_transactions_not_documents() -> None:
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, max_recipients=3)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(7)])
    reactor.advance(0)  # the end of the turn that brought them
    assert len(reactor.tcpClients) == 3
    net.run()
    assert sorted(len(r) for r in rcpts(server)) == [1, 3, 3] and len(queue.docs("success")) == 7
