"""The delivery scheduler, deterministic: MemoryReactorClock, in-memory servers, fixed DNS."""

from __future__ import annotations

import pickle

import attrs

from mqtwisted.connection import Reply
from mqtwisted.delivery import DeliveryOptions, DeliveryService, edit_headers
from mqtwisted.dns import DNSFailure
from mqtwisted.queue import Publication
from tests.deliveryhelpers import RecordingHooks, doc, make
from tests.memqueue import MemoryQueue
from tests.smtppeers import ScriptedFactory


def publish(queue: MemoryQueue, *docs: dict) -> None:
    queue.publish([Publication("outbox", d) for d in docs])


def test_success_goes_to_results_and_success() -> None:
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc(custom="kept"))
    net.run()
    assert queue.docs("outbox") == []
    (res,) = queue.docs("results")
    assert queue.docs("success") == [res]
    assert "mime" not in res and res["custom"] == "kept"
    (r,) = res["results"]
    assert r["state"] == "message" and r["result"] == "accepted" and r["code"] == 250
    assert r["to"] == "10.0.0.1" and r["mta"] == "mx.test" and r["messages"] == 1
    assert server.messages[0]["rcpt"] == [b"RCPT TO:<user@example.com>"]
    # The connection waits max-idle-time for more mail to example.com, then QUITs.
    assert len(svc.destinations) == 1 and server.sessions[0].commands[-1] != b"QUIT"
    reactor.advance(svc.options.max_idle_time)
    net.run()
    assert server.sessions[0].commands[-1] == b"QUIT"
    assert not svc.destinations


def test_parked_connection_takes_the_next_message() -> None:
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc("a@example.com"))
    net.run()
    reactor.advance(3)
    publish(queue, doc("b@example.com"))
    net.run()
    assert server.connections == 1 and len(reactor.tcpClients) == 1
    assert [r["results"][0]["messages"] for r in queue.docs("success")] == [1, 2]
    # The idle clock starts again when the connection parks again.
    reactor.advance(4)
    net.run()
    assert server.sessions[0].commands[-1] != b"QUIT"
    reactor.advance(1)
    net.run()
    assert server.sessions[0].commands[-1] == b"QUIT" and not svc.destinations


def test_max_idle_time_zero_quits_at_once() -> None:
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, max_idle_time=0)
    svc.startService()
    publish(queue, doc())
    net.run()
    assert server.sessions[0].commands[-1] == b"QUIT" and not svc.destinations


def test_stop_quits_parked_connections_without_waiting_for_idle_time() -> None:
    server = ScriptedFactory()
    svc, queue, net, reactor = make({"10.0.0.1": server}, max_idle_time=300)
    svc.startService()
    publish(queue, doc())
    net.run()
    d = svc.stopService()
    net.run()
    assert server.sessions[0].commands[-1] == b"QUIT"
    assert d.called and not svc.destinations


def test_max_idle_time_option() -> None:
    assert DeliveryOptions.from_options({"max-idle-time": 2.5}).max_idle_time == 2.5
    assert DeliveryOptions.from_options({}).max_idle_time == 5.0


def test_reuse_and_connection_cap() -> None:
    server = ScriptedFactory()
    # One document per transaction: the cap counts transactions (messages) on a connection.
    svc, queue, net, reactor = make({"10.0.0.1": server}, max_connections_per_domain=2, max_messages_per_connection=4,
                                     max_recipients=1)
    svc.startService()
    publish(queue, *[doc(f"u{i}@example.com") for i in range(10)])
    reactor.advance(0)
    assert len(reactor.tcpClients) == 2
    net.run()
    results = queue.docs("success")
    assert len(results) == 10
    assert max(r["results"][0]["messages"] for r in results) == 4
    assert 3 <= server.connections <= 4  # ceil(10 / 4), give or take the in-memory ordering


def test_greylisted_then_accepted_on_schedule() -> None:
    server = ScriptedFactory(replies={"RCPT": ["451 4.7.1 greylisted"]})
    svc, queue, net, reactor = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc())
    net.run()
    (waiting,) = queue.docs("outbox")
    assert waiting["nextattempt"] == 600 and "mime" in waiting
    (retry,) = queue.docs("retry")
    assert retry["results"][0]["code"] == 451 and "mime" not in retry
    assert queue.docs("results") == []
    reactor.advance(599)
    net.run()
    assert len(server.messages) == 0
    reactor.advance(1)
    net.run()
    (res,) = queue.docs("success")
    assert [r["result"] for r in res["results"]] == ["error", "accepted"]
    assert "nextattempt" not in res


def test_rejected_gives_failure_and_one_dsn() -> None:
    server = ScriptedFactory(replies={"RCPT": ["550 5.1.1 no such user"]})
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc(dsn={"envid": "E1", "ret": "HDRS"}))
    net.run()
    (fail,) = queue.docs("failure")
    assert fail["results"][0]["state"] == "rcptto"
    assert queue.docs("results") == [fail]
    (bounce,) = queue.docs("dsn")
    assert bounce["envelope"] == "" and bounce["recipient"] == "sender@example.org"
    mime = bounce["mime"]
    assert "multipart/report; report-type=delivery-status" in mime
    assert "Final-Recipient: rfc822; user@example.com" in mime and "Status: 5.1.1" in mime
    assert "Original-Envelope-Id: E1" in mime and "text/rfc822-headers" in mime
    assert "hello" not in mime.split("text/rfc822-headers")[1]


def test_no_dsn_for_null_sender_or_notify_never() -> None:
    server = ScriptedFactory(replies={"RCPT": ["550 5.1.1 no", "550 5.1.1 no"]})
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc(envelope=""), doc(dsn={"notify": "NEVER"}))
    net.run()
    assert len(queue.docs("failure")) == 2 and queue.docs("dsn") == []


def test_unreachable_mx_fails_over_to_next() -> None:
    server = ScriptedFactory()
    table = {"example.com": [("mx1.example.com", ["10.0.0.9"]), ("mx2.example.com", ["10.0.0.2"])]}
    svc, queue, net, _ = make({"10.0.0.2": server}, table)
    svc.startService()
    publish(queue, doc())
    net.run()
    (res,) = queue.docs("success")
    assert res["results"][0]["to"] == "10.0.0.2" and len(res["results"]) == 1


def test_all_mx_unreachable_is_retried() -> None:
    svc, queue, net, _ = make({})
    svc.startService()
    publish(queue, doc(), doc("b@example.com"))
    net.run()
    retries = queue.docs("retry")
    assert len(retries) == 2
    r = retries[0]["results"][0]
    assert r["state"] == "connect" and r["result"] == "error" and r["to"] == "10.0.0.1"


def test_dns_failures() -> None:
    table = {"temp.example": DNSFailure("SERVFAIL", permanent=False), "nullmx.example": DNSFailure("null MX", permanent=True, status="5.1.10")}
    svc, queue, net, _ = make({}, table)
    svc.startService()
    publish(queue, doc("a@temp.example"), doc("a@nullmx.example"), doc("a@nxdomain.example"))
    net.run()
    assert [d["recipient"] for d in queue.docs("retry")] == ["a@temp.example"]
    failed = {d["recipient"]: d["results"][0] for d in queue.docs("failure")}
    assert failed["a@nullmx.example"]["status"] == "5.1.10" and failed["a@nullmx.example"]["state"] == "dns"
    assert failed["a@nxdomain.example"]["code"] == 550
    assert len(queue.docs("dsn")) == 2


def test_expiry_gives_process_timeout_and_dsn() -> None:
    server = ScriptedFactory(replies={"MAIL": ["451 4.3.0 later"] * 10})
    svc, queue, net, reactor = make({"10.0.0.1": server}, retry_interval=(60,), max_delivertime=150)
    svc.startService()
    publish(queue, doc())
    for _ in range(5):
        net.run()
        reactor.advance(60)
    (fail,) = queue.docs("failure")
    states = [(r["state"], r["result"]) for r in fail["results"]]
    assert states == [("mailfrom", "error"), ("mailfrom", "error"), ("mailfrom", "error"), ("process", "timeout")]
    assert "Status: 5.4.7" in queue.docs("dsn")[0]["mime"]
    assert queue.docs("outbox") == []


def test_expired_on_pickup_and_maxattempts() -> None:
    svc, queue, net, _ = make({})
    svc.startService()
    publish(queue, doc(maxdelivertime="1969-12-31 00:00:00"), doc(maxattempts=1, results=[{"time": "1970-01-01 00:00:00", "state": "connect", "result": "error"}]))
    net.run()
    assert [d["results"][-1]["state"] for d in queue.docs("failure")] == ["process", "process"]


def test_per_message_queues() -> None:
    server = ScriptedFactory()
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    publish(queue, doc(queues={"results": None, "success": "mine"}, keepmime=True))
    net.run()
    assert queue.docs("results") == [] and queue.docs("success") == []
    (mine,) = queue.docs("mine")
    assert "mime" in mine


def test_header_edits_change_the_wire_only() -> None:
    server = ScriptedFactory()
    svc, queue, net, _ = make({"10.0.0.1": server})
    svc.startService()
    mime = "From: a@x\r\nDummy: 1\r\nSubject: s\r\nSubject: again\r\n\r\nbody\r\n"
    publish(queue, doc(mime=mime, keepmime=True, headers={"remove": "dummy", "prepend": {"X-A": ["1", "2"]}, "replace": {"subject": "new"}, "append": {"X-Z": "z"}}))
    net.run()
    assert server.messages[0]["body"] == b"X-A: 1\r\nX-A: 2\r\nFrom: a@x\r\nsubject: new\r\nX-Z: z\r\n\r\nbody\r\n"
    assert queue.docs("success")[0]["mime"] == mime


def test_edit_headers_update_does_not_append() -> None:
    assert edit_headers(b"A: 1\n\nb\n", {"update": {"B": "2"}}) == b"A: 1\n\nb\n"
    assert edit_headers(b"A: 1\n\nb\n", {"update": {"a": "2"}}) == b"a: 2\n\nb\n"


def test_out_hooks_change_wire_and_can_refuse() -> None:
    def out_data(conn, handle):
        if handle.document.get("refuse"):
            return Reply(550, "policy says no", "5.7.1")
        handle.wire_mime = b"Subject: from plugin\r\n\r\nnew\r\n"
        handle.wire_envelope = "bounces+x@example.org"
        return None

    sent = []
    hooks = RecordingHooks(out_data=out_data, out_sent=lambda conn, handle: sent.append(conn.remote_ip))
    server = ScriptedFactory()
    svc, queue, net, _ = make({"10.0.0.1": server}, hooks=hooks)
    svc.startService()
    publish(queue, doc(keepmime=True), doc(refuse=True))
    net.run()
    assert server.messages[0]["body"] == b"Subject: from plugin\r\n\r\nnew\r\n"
    assert server.messages[0]["from"].startswith(b"MAIL FROM:<bounces+x@example.org>")
    ok = queue.docs("success")[0]
    assert ok["envelope"] == "sender@example.org" and ok["mime"].startswith("Subject: t")
    (refused,) = queue.docs("failure")
    assert refused["results"][0]["code"] == 550 and refused["results"][0]["status"] == "5.7.1"
    assert len(server.messages) == 1 and len(sent) == 1


def test_smarthost_option_and_per_message() -> None:
    relay = ScriptedFactory(name="relay.test", extensions=("AUTH PLAIN",))
    table = {"relay.example": [("relay.example", ["10.0.0.5"])], "other.example": [("other.example", ["10.0.0.6"])]}
    svc, queue, net, reactor = make({"10.0.0.5": relay, "10.0.0.6": ScriptedFactory()}, table, smarthost="relay.example:2525")
    svc.startService()
    publish(queue, doc("x@nowhere.example"), doc(smarthost={"hostname": "other.example", "port": 26, "username": "u", "password": "p"}))
    net.run()
    assert sorted(net.connected) == [("10.0.0.5", 2525), ("10.0.0.6", 26)]
    assert len(queue.docs("success")) == 1
    # 10.0.0.6 offers no AUTH: credentials given, so it is a temporary failure in state auth
    assert queue.docs("retry")[0]["results"][0]["state"] == "auth"


def test_invalid_document() -> None:
    svc, queue, net, _ = make({})
    svc.startService()
    publish(queue, {"envelope": "a@b", "recipient": "nobody", "mime": "x"}, doc(maxattempts="many", queues=["x"]))
    net.run()
    failed = {d["recipient"]: d["results"][0] for d in queue.docs("failure")}
    assert [r["result"] for r in failed.values()] == ["invalid", "invalid"]
    # The description names the property; a property that cannot be used is read as absent on
    # the way out (the default queues here).
    assert "'recipient'" in failed["nobody"]["description"]
    assert "'maxattempts'" in failed["user@example.com"]["description"]
    assert len(queue.docs("results")) == 2 and len(queue.docs("dsn")) == 2


def test_service_pickles_without_live_state() -> None:
    svc = DeliveryService(MemoryQueue.__new__(MemoryQueue), None, DeliveryOptions(smarthost="h:1"))
    svc.queue = None  # MemoryQueue holds a clock; the spool test covers a real queue
    copy = pickle.loads(pickle.dumps(svc))
    assert copy.options.smarthost == "h:1" and copy.destinations == {} and copy._reactor is None


def test_stop_releases_pending_and_waits() -> None:
    svc, queue, net, reactor = make({"10.0.0.1": ScriptedFactory()}, max_connections_per_domain=1)
    svc.startService()
    publish(queue, doc(), doc())
    d = svc.stopService()
    net.run()
    assert d.called
    assert len(queue.docs("outbox")) == 2
    assert not reactor.getDelayedCalls() or all(not c.active() for c in reactor.getDelayedCalls())


def test_options_from_mapping() -> None:
    o = DeliveryOptions.from_options({"smarthost": "h:2", "retry-interval": "1,2", "max-connections-per-domain": "3", "dns-server": "127.0.0.1:5353"})
    assert o.smarthost == "h:2" and o.retry_interval == (1, 2) and o.max_connections_per_domain == 3 and o.dns_server == "127.0.0.1:5353"


def test_make_delivery_service_from_mta_options() -> None:
    from mqtwisted.delivery import make_delivery_service
    from mqtwisted.options import MQOptions

    opts = MQOptions()
    opts.parseOptions(["--smarthost", "relay:2525", "--retry-interval", "5,10", "--outbox", "out2"])
    svc = make_delivery_service(opts, MemoryQueue.__new__(MemoryQueue), None)
    assert svc.options.smarthost == "relay:2525" and svc.options.retry_interval == (5, 10)
    assert svc.options.queues["outbox"] == "out2" and svc.options.max_connections_per_domain == 10



def test_smtp_client_timeout_and_connect_timeout_reach_the_connection() -> None:
    from mqtwisted.options import MQOptions

    opts = MQOptions()
    opts.parseOptions(["--smtp-client-timeout", "7", "--connect-timeout", "3", "--smtp-timeout", "99"])
    svc, queue, net, reactor = make({}, **{k: v for k, v in attrs.asdict(DeliveryOptions.from_options(opts)).items() if k != "helo"})
    svc.startService()
    publish(queue, doc())
    reactor.advance(0)
    (_host, _port, factory, connect_timeout, _bind) = reactor.tcpClients[0]
    assert factory.timeout == 7 and connect_timeout == 3
