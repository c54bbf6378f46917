"""REQUIRETLS (RFC 8689) and the other MAIL FROM obligations inbound (advertised and accepted,
kept in the document) and in delivery's choices (destination, TLS policy, ``TLS-Required: No``),
in memory."""

from __future__ import annotations

import datetime

from mqtwisted.connection import Connection
from mqtwisted.delivery.connections import batch_key, destination_key, needs_of
from mqtwisted.delivery.options import DeliveryOptions
from mqtwisted.document import OutgoingDocument
from mqtwisted.message import incoming_document
from mqtwisted.smtp.outbody import Needs
from mqtwisted.tlspolicy.certs import Trust
from mqtwisted.tlspolicy.policy import HostTLS, TLSPolicies
from tests.smtpdialog import ours


def ehlo_keywords(dialog) -> list[str]:
    (code, lines), *_ = dialog.replies()
    assert code == 250
    return lines


def test_requiretls_is_advertised_and_accepted_only_inside_tls() -> None:
    dialog, rec = ours(tls=object())
    dialog.send(b"EHLO c\r\n")
    assert "REQUIRETLS" not in ehlo_keywords(dialog)
    dialog.send(b"MAIL FROM:<a@example.com> REQUIRETLS\r\n")
    [(code, [text])] = dialog.replies()
    assert (code, text) == (530, "5.7.10 REQUIRETLS needs a TLS session (STARTTLS first)")
    dialog.send(b"STARTTLS\r\n")
    assert dialog.codes() == [220]
    dialog.send(b"EHLO c\r\n")
    assert "REQUIRETLS" in ehlo_keywords(dialog)
    dialog.send(b"MAIL FROM:<a@example.com> REQUIRETLS=yes\r\nMAIL FROM:<a@example.com> REQUIRETLS\r\n"
                b"RCPT TO:<b@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert dialog.codes() == [501, 250, 250, 354, 250]
    assert rec.messages[0][1].params == {"REQUIRETLS": None}


def test_the_document_keeps_what_mail_from_asked_of_every_hop() -> None:
    def doc(params: dict) -> OutgoingDocument:
        return OutgoingDocument(incoming_document(Connection(), "a@example.com", params, "b@example.com", {},
                                                  hostname="mx.test", received=1.0, msgid=None, properties={}))

    flagged = doc({"BODY": "binarymime", "SMTPUTF8": None, "REQUIRETLS": None})
    assert (flagged.json["binarymime"], flagged.json["smtputf8"], flagged.json["requiretls"]) == (True, True, True)
    assert needs_of(flagged) == Needs(True, True, True)
    plain = doc({"BODY": "8BITMIME"})
    assert not {"binarymime", "smtputf8", "requiretls"} & set(plain.json) and needs_of(plain) == Needs()
    flagged.check()


def test_requiretls_and_tls_required_no_have_destinations_of_their_own() -> None:
    options = DeliveryOptions(security="verified")
    base = {"recipient": "b@example.com", "mime": "Subject: x\r\n\r\nhi\r\n"}
    plain = destination_key(OutgoingDocument(dict(base)), options)
    strict = destination_key(OutgoingDocument({**base, "requiretls": True}), options)
    assert (plain.requiretls, strict.requiretls) == (False, True) and plain != strict
    optional = destination_key(OutgoingDocument({**base, "mime": "TLS-Required: No\r\n\r\nhi\r\n"}), options)
    # RFC 8689 §4.2.2: TLS when offered, the sender's or the domain's policy does not hold it back.
    assert (optional.tls_optional, optional.security) == (True, "opportunistic")
    # REQUIRETLS wins over the header.
    both = destination_key(OutgoingDocument({**base, "requiretls": True, "mime": "TLS-Required: No\r\n\r\nhi\r\n"}),
                           options)
    assert (both.requiretls, both.tls_optional, both.security) == (True, False, "verified")
    # Documents that ask differently of the next hop never share a transaction.
    assert batch_key(OutgoingDocument({**base, "smtputf8": True}), False) != batch_key(OutgoingDocument(dict(base)), False)


def test_tls_required_no_is_a_header_of_the_message_not_of_its_body() -> None:
    assert OutgoingDocument({"mime": "Subject: x\ntls-required:  NO \n\nb"}).tls_optional
    assert not OutgoingDocument({"mime": "Subject: x\r\n\r\nTLS-Required: No\r\n"}).tls_optional
    assert not OutgoingDocument({"mime": "TLS-Required: Yes\r\n\r\n"}).tls_optional


def test_requiretls_makes_a_host_policy_strict() -> None:
    clock = lambda: datetime.datetime.now(datetime.UTC).timestamp()  # noqa: E731
    policies = TLSPolicies(None, Trust(None), None, clock, dane=False)
    opportunistic = policies.strict(HostTLS("opportunistic", host="mx.example.com"))
    assert (opportunistic.name, opportunistic.mandatory, len(opportunistic.checks)) == ("verified", True, 1)
    assert opportunistic.problem([]) == "verified: the server sent no certificate"
    # MTA-STS testing only reports: REQUIRETLS wants a verdict.
    testing = policies.strict(HostTLS("mta-sts-testing", checks=(lambda chain: "bad",), report_only=True, host="h"))
    assert (testing.name, testing.report_only) == ("verified", False)
    dane = HostTLS("dane", False, (lambda chain: None,), host="h")
    assert policies.strict(dane) == HostTLS("dane", True, dane.checks, host="h")
