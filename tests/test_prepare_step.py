"""The message's prepare step (delivery signs there), in memory: the outbound table's rows for it,
and delivery's step with a runner that signs at once, between a scripted server and the
mq_smtp_out_data hook.  The real end to end runs are in tests/test_delivery_signing.py."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mqtwisted.connection import MessageHandle, Reply
from mqtwisted.delivery.signing import relayed
from mqtwisted.document import OutgoingDocument
from mqtwisted.hooks import OUT_DATA
from mqtwisted.queue import Publication
from mqtwisted.signing import RSA, generate_key_pair
from mqtwisted.smtp import outevents as ev
from tests.deliveryhelpers import RecordingHooks, doc, make
from tests.smtppeers import ScriptedFactory
from tests.test_dkim import dkim_headers, verify_each
from tests.test_outbound_table import Msg, kinds, lines, ready, reports, sent

MIME = b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n"


class Prepared(Msg):
    prepare = staticmethod(lambda mime: None)  # the table only checks that there is one


def test_the_prepare_step_runs_before_mail_without_a_reply_timer() -> None:
    t = ready()
    message = Prepared(mime=MIME)
    actions = t.handle_event(ev.Offered(message, MessageHandle({}, outgoing=True)))
    assert actions == [ev.Timer(False), ev.Prepare(message, MIME)]
    actions = t.handle_event(ev.Prepared(b"DKIM-Signature: x\r\n" + MIME))
    assert kinds(actions) == ["Timer", "Send"] and actions[0] == ev.Timer(True)
    assert sent(actions).startswith(b"MAIL FROM:<a@example.org>")
    body = [a for a in lines(t, "250 ok", "250 ok", "354 go") if isinstance(a, ev.SendBody)]
    assert body[0].data == b"DKIM-Signature: x\r\n" + MIME


def test_the_prepare_step_runs_on_what_the_out_data_hook_left() -> None:
    t = ready(hooks=(OUT_DATA,))
    handle = MessageHandle({}, outgoing=True)
    message = Prepared(mime=MIME)
    assert kinds(t.handle_event(ev.Offered(message, handle))) == ["Timer", "RunHook"]
    handle.wire_mime = b"X-Hook: 1\r\n" + MIME
    # The timer stays off from the hook through the prepare step.
    assert t.handle_event(ev.HookDone(None)) == [ev.Prepare(message, b"X-Hook: 1\r\n" + MIME)]


def test_a_refusal_of_the_prepare_step_fails_the_message_before_mail() -> None:
    t = ready()
    t.handle_event(ev.Offered(Prepared(mime=MIME), MessageHandle({}, outgoing=True)))
    actions = t.handle_event(ev.Prepared(Reply(451, "could not be signed", "4.3.0")))
    attempt = reports(actions)[0]
    assert (attempt.state, attempt.result, attempt.code, attempt.is_permanent) == ("data", "error", 451, False)
    assert attempt.description == "could not be signed" and sent(actions) == b""
    assert kinds(actions)[-1] == "Fetch"  # the connection goes on with the next message


def test_a_connection_lost_while_preparing_gives_the_message_back() -> None:
    t = ready()
    message = Prepared(mime=MIME)
    t.handle_event(ev.Offered(message, MessageHandle({}, outgoing=True)))
    actions = t.handle_event(ev.Lost("connection lost"))
    assert ev.GiveBack(message) in actions and not reports(actions)
    assert t.handle_event(ev.Prepared(MIME)) == []  # the step's late answer changes nothing


def test_a_message_without_a_prepare_step_goes_straight_to_mail() -> None:
    t = ready()
    assert kinds(t.handle_event(ev.Offered(Msg(), MessageHandle({}, outgoing=True)))) == ["Send"]


# -- delivery's step, in memory ------------------------------------------------------------------

def at_once(f: Any, *args: Any) -> defer.Deferred:
    return defer.maybeDeferred(f, *args)


def keyed(pair: Any) -> dict[str, Any]:
    return {"domain": "example.org", "selector": "s1", "key": pair.private_pem.decode()}


def test_delivery_signs_after_the_edits_and_the_hook_once_per_message(tmp_path: Any) -> None:
    pair = generate_key_pair(RSA)

    def out_data(conn: Any, handle: Any) -> None:
        handle.wire_mime = b"X-Hook: yes\r\n" + MIME

    server = ScriptedFactory()
    svc, queue, net, _ = make({"10.0.0.1": server}, hooks=RecordingHooks(out_data=out_data))
    svc.signing.run_in_thread = at_once
    svc.startService()
    prop = {**keyed(pair), "headers": ["x-hook", "x-edit"]}
    queue.publish([Publication("outbox", doc(rcpt, dkim=prop, headers={"prepend": {"X-Edit": "1"}}))
                   for rcpt in ("u1@example.com", "u2@example.com")])
    net.run()
    assert len(server.messages) == 2
    body = server.messages[0]["body"]
    assert body.index(b"DKIM-Signature") < body.index(b"X-Edit: 1") < body.index(b"X-Hook: yes")

    def dnsfunc(name: Any, timeout: float = 5) -> bytes:
        return pair.record.encode()

    assert verify_each(body, dnsfunc) == [True]
    assert verify_each(body.replace(b"X-Hook: yes", b"X-Hook: no"), dnsfunc) == [False]
    assert len(dkim_headers(server.messages[1]["body"])) == 1
    assert svc.signing.signer.signatures_made == 1


def test_a_message_with_nothing_to_sign_or_edit_has_no_prepare_step() -> None:
    svc, *_ = make({})
    assert svc.signing.step(OutgoingDocument(doc())) is None
    assert svc.signing.step(OutgoingDocument(doc(headers={"prepend": {"X-A": "1"}}))) is not None


def test_relayed_means_another_server_handed_it_over() -> None:
    def connection(**kw: Any) -> OutgoingDocument:
        return OutgoingDocument(doc(connection={"remote-ip": "192.0.2.7", **kw}))

    assert relayed(connection())
    assert not relayed(connection(user="alice"))  # authenticated submission
    assert not relayed(connection(**{"remote-ip": "127.0.0.1"}))  # an application on this host
    assert not relayed(OutgoingDocument(doc()))  # put in the queue by an application


def test_sighup_reads_the_keys_file_again_and_keeps_the_old_keys_if_it_broke(tmp_path: Any) -> None:
    from mqtwisted.options import OPTIONS

    pair = generate_key_pair(RSA)
    (tmp_path / "k.pem").write_bytes(pair.private_pem)
    keys = tmp_path / "keys.toml"
    keys.write_text('[[key]]\ndomain = "example.org"\nselector = "old"\nfile = "k.pem"\n')
    svc, *_ = make({}, dkim_keys=str(keys))
    assert [r.selector for r in svc.signing.keys.for_domain("example.org")] == ["old"]
    options = {name: default for name, default, *_ in OPTIONS}
    options["dkim-keys"] = str(keys)
    keys.write_text(keys.read_text().replace('"old"', '"new"'))
    svc.reconfigure(options)  # same file name, new content
    assert [r.selector for r in svc.signing.keys.for_domain("example.org")] == ["new"]
    keys.write_text("not toml [")
    svc.reconfigure(options)
    assert [r.selector for r in svc.signing.keys.for_domain("example.org")] == ["new"]
    options["dkim-keys"] = ""
    svc.reconfigure(options)
    assert svc.signing.keys is None and svc.options.dkim_keys is None


def test_a_copy_already_signed_is_taken_from_the_cache_without_a_thread(tmp_path: Any) -> None:
    pair = generate_key_pair(RSA)
    (tmp_path / "k.pem").write_bytes(pair.private_pem)
    keys = tmp_path / "keys.toml"
    keys.write_text('[[key]]\ndomain = "example.org"\nselector = "s1"\nfile = "k.pem"\n')
    svc, *_ = make({}, dkim_keys=str(keys))
    hops: list[Any] = []

    def counted(f: Any, *args: Any) -> defer.Deferred:
        hops.append(f)
        return defer.maybeDeferred(f, *args)

    svc.signing.run_in_thread = counted
    outputs: list[Any] = []
    for rcpt in ("u1@example.com", "u2@example.com", "u3@example.com"):
        prepare = svc.signing.step(OutgoingDocument(doc(rcpt)))
        prepare(MIME).addCallback(outputs.append)
    assert len(hops) == 1 and len(set(outputs)) == 1 and outputs[0].startswith(b"DKIM-Signature:")
    # A dkim property, or a message too large to hash on the reactor's thread, always goes there.
    svc.signing.step(OutgoingDocument(doc(dkim=keyed(pair))))(MIME)
    large = MIME + b"x" * (64 * 1024) + b"\r\n"
    svc.signing.step(OutgoingDocument(doc()))(large)
    svc.signing.step(OutgoingDocument(doc()))(large)
    # The property names the same key as the file: the thread found that signature cached.
    assert len(hops) == 4 and svc.signing.signer.signatures_made == 2
