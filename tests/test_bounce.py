"""RFC 3464 reports and the template plugin."""

from __future__ import annotations

import email
import importlib.util
import pathlib

from mqtwisted.bounce import build_report, failed, wants_report
from mqtwisted.connection import MessageHandle
from mqtwisted.results import Attempt
from tests.deliveryhelpers import RecordingHooks, doc, make
from tests.smtppeers import ScriptedFactory


def test_dsn_structure_parses() -> None:
    d = doc(dsn={"orcpt": "orig@example.com", "envid": "X"})
    a = Attempt("rcptto", "error", 550, "5.1.1", "no such user", mta="mx.example.com")
    out = build_report(d, failed(a), reporting_mta="mqmta.test", now=0)
    assert out["envelope"] == "" and out["recipient"] == "sender@example.org"
    msg = email.message_from_bytes(out["mime"].encode())
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "message/rfc822"]
    status = parts[1].as_string()
    assert "Original-Recipient: rfc822;orig@example.com" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in status and "Remote-MTA: dns; mx.example.com" in status
    assert "hello" in parts[2].as_string()


def test_wants_report_follows_notify() -> None:
    assert wants_report({"envelope": "a@b"}, "failed")
    assert not wants_report({"envelope": ""}, "failed")
    assert not wants_report({"envelope": "a@b", "dsn": {"notify": "SUCCESS"}}, "failed")
    assert wants_report({"envelope": "a@b", "dsn": {"notify": ["SUCCESS", "FAILURE"]}}, "failed")
    # Delay and success reports only when NOTIFY names them (no NOTIFY: failures only).
    for action in ("delayed", "relayed", "delivered"):
        assert not wants_report({"envelope": "a@b"}, action)
        assert not wants_report({"envelope": "", "dsn": {"notify": "SUCCESS,DELAY"}}, action)
        assert not wants_report({"envelope": "a@b", "dsn": {"notify": "NEVER"}}, action)
        assert wants_report({"envelope": "a@b", "dsn": {"notify": "SUCCESS,DELAY"}}, action)
    assert not wants_report({"envelope": "a@b", "dsn": {"notify": "SUCCESS"}}, "delayed")
    assert not wants_report({"envelope": "a@b", "dsn": {"notify": "DELAY"}}, "relayed")


def _plugin():
    path = pathlib.Path(__file__).parent.parent / "plugins" / "template_mime.py"
    spec = importlib.util.spec_from_file_location("template_mime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_plugin_builds_mime_on_the_wire_only() -> None:
    plugin = _plugin()
    hooks = RecordingHooks(out_data=lambda conn, handle: (plugin.mq_smtp_out_data(None, conn, handle), None)[1])
    server = ScriptedFactory()
    svc, queue, net, _ = make({"10.0.0.1": server}, hooks=hooks)
    svc.startService()
    d = doc(template={"from": "n@example.org", "subject": "Hi {$name}", "text": "Dear {$name}", "html": "<b>{$name}</b>"}, data={"name": "Ann"})
    del d["mime"]
    from mqtwisted.queue import Publication

    queue.publish([Publication("outbox", d)])
    net.run()
    body = server.messages[0]["body"]
    assert b"Subject: Hi Ann" in body and b"multipart/alternative" in body and b"Dear Ann" in body
    (res,) = queue.docs("success")
    assert "mime" not in res and res["template"]["subject"] == "Hi {$name}"


def test_template_render() -> None:
    plugin = _plugin()
    h = MessageHandle({"recipient": "r@x", "template": {"subject": "{$a}{$missing}"}, "data": {"a": 1}}, outgoing=True)
    plugin.mq_smtp_out_data(None, None, h)
    assert b"Subject: 1" in h.wire_mime and b"To: r@x" in h.wire_mime


def test_arrival_date_from_the_received_time_mqmta_stores() -> None:
    from mqtwisted.connection import Connection
    from mqtwisted.message import incoming_document

    conn = Connection("10.0.0.1", 2525, "10.0.0.2", 40000)
    incoming = incoming_document(conn, "sender@example.org", {}, "user@example.com", {}, hostname="mx.test",
                                 received=1795953600.25, msgid=None, properties={})
    d = {**incoming, "mime": "Subject: t\r\n\r\nhello\r\n"}
    out = build_report(d, failed(Attempt("rcptto", "error", 550, "5.1.1", "no")), reporting_mta="mqmta.test", now=0)
    report = email.message_from_bytes(out["mime"].encode()).get_payload()[1].as_string()
    assert "Arrival-Date: Sun, 29 Nov 2026 12:00:00 -0000" in report
    # A document without it (another publisher's) reports no arrival date.
    out = build_report(doc(), failed(Attempt("rcptto", "error", 550, "5.1.1", "no")), reporting_mta="mqmta.test", now=0)
    assert "Arrival-Date" not in out["mime"]


def test_bounce_property_reads_reports_written_before_it_had_an_action() -> None:
    from mqtwisted.document import Bounce

    assert Bounce.parse("bounce", {"recipient": "a@b", "status": "5.1.1"}) == Bounce("a@b", "5.1.1", "failed")
    assert Bounce("a@b", "2.0.0", "relayed").to_json() == {"recipient": "a@b", "status": "2.0.0", "action": "relayed"}
