"""The outbound table with BDAT (RFC 3030) and what a message asks of every hop (BINARYMIME,
SMTPUTF8, REQUIRETLS): events in, actions out, no reactor."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mqtwisted.smtp import outevents as ev
from mqtwisted.smtp.client import WRITE_AT_ONCE, OutboundFactory
from mqtwisted.smtp.outbody import CHUNK_SIZE, Needs, bdat_chunks, bdat_payload
from mqtwisted.smtp.outstate import Await
from tests.clienthelpers import ListSource, msg
from tests.test_outbound_table import (
    Msg,
    ehlo,
    ended,
    kinds,
    lines,
    lost,
    offer,
    ready,
    reports,
    sent,
    table,
)

BODY = b"Subject: x\r\n\r\n.hi\r\n"


class Needy(Msg):
    def __init__(self, needs: Needs, rcpt: str = "b@example.com", mime: bytes = BODY) -> None:
        super().__init__(rcpt, mime)
        self.needs = needs


def bodies(actions: list[Any]) -> list[ev.SendBody]:
    return [a for a in actions if isinstance(a, ev.SendBody)]


def written(actions: list[Any]) -> bytes:
    """Every byte the actions write, commands and body."""
    return b"".join(a.data for a in actions if isinstance(a, (ev.Send, ev.SendBody)))


def test_chunks_are_framed_exactly_and_the_last_says_last() -> None:
    data = bytes(range(256)) * 5
    chunks = bdat_chunks(data, size=500)
    assert chunks[0].startswith(b"BDAT 500\r\n") and chunks[-1].startswith(b"BDAT 280 LAST\r\n")
    assert b"".join(c.split(b"\r\n", 1)[1] for c in chunks) == data
    assert bdat_chunks(b"") == [b"BDAT 0 LAST\r\n"]
    # Text gets CRLF line endings and no dot-stuffing; binary content goes exactly as it is.
    assert bdat_payload(b"a\n.b\rc", binary=False) == b"a\r\n.b\r\nc"
    assert bdat_payload(b"a\n\0.b\r", binary=True) == b"a\n\0.b\r"


def test_pipelined_bdat_goes_right_behind_the_envelope_and_last_decides() -> None:
    t = ready(("PIPELINING", "CHUNKING", "SIZE"))
    actions = offer(t, Msg(mime=BODY))
    # One write, so one segment: the envelope and the chunk, with no dot and no stuffing.
    assert kinds(actions) == ["SendBody"] and actions[0].end == b""
    assert written(actions) == b"MAIL FROM:<a@example.org> SIZE=19\r\nRCPT TO:<b@example.com>\r\nBDAT 19 LAST\r\n" + BODY
    assert list(t.awaiting) == [Await.MAIL, Await.RCPT, Await.BDAT_LAST]
    assert t.handle_event(ev.BodySent()) == []
    (a,) = reports(lines(t, "250 ok", "250 ok", "250 2.0.0 queued as Q"))
    assert (a.state, a.result, a.code, a.description) == ("message", "accepted", 250, "queued as Q")


def test_a_large_message_goes_in_chunks_pipelined_and_each_reply_is_counted() -> None:
    t = ready(("PIPELINING", "CHUNKING"))
    mime = b"Subject: big\r\n\r\n" + b"x" * (2 * CHUNK_SIZE + 10)
    (body,) = bodies(offer(t, Msg(mime=mime)))
    assert body.data.count(b"BDAT ") == 3 and b"\r\nBDAT %d\r\n" % CHUNK_SIZE in body.data
    assert list(t.awaiting)[2:] == [Await.BDAT, Await.BDAT, Await.BDAT_LAST]
    t.handle_event(ev.BodySent())
    assert reports(lines(t, "250 ok", "250 ok", "250 chunk", "250 chunk")) == []
    (a,) = reports(lines(t, "250 done"))
    assert a.accepted


def test_lock_step_bdat_sends_each_chunk_after_the_previous_reply() -> None:
    t = ready(("CHUNKING",))
    mime = b"Subject: big\r\n\r\n" + b"y" * CHUNK_SIZE
    assert sent(offer(t, Msg(mime=mime))) == b"MAIL FROM:<a@example.org>\r\n"
    assert sent(lines(t, "250 ok")) == b"RCPT TO:<b@example.com>\r\n"
    first = lines(t, "250 ok")
    assert kinds(first) == ["Send"] and first[0].data.startswith(b"BDAT %d\r\n" % CHUNK_SIZE) and t.state == "message"
    last = lines(t, "250 chunk")
    assert kinds(last) == ["SendBody"] and last[0].data.startswith(b"BDAT 16 LAST\r\n")
    t.handle_event(ev.BodySent())
    (a,) = reports(lines(t, "250 ok"))
    assert a.accepted


def test_a_refused_chunk_decides_even_when_last_is_answered_250() -> None:
    t = ready(("PIPELINING", "CHUNKING"))
    offer(t, Msg(mime=b"x" * (CHUNK_SIZE + 1)))
    t.handle_event(ev.BodySent())
    assert reports(lines(t, "250 ok", "250 ok", "552 5.3.4 too big")) == []
    actions = lines(t, "250 ok")
    (a,) = reports(actions)
    assert (a.state, a.code, a.status, a.is_permanent) == ("message", 552, "5.3.4", True)
    assert kinds(actions) == ["Report", "Fetch"]
    # The next transaction starts with RSET (the server's transaction state is unknown).
    assert written(offer(t)).startswith(b"RSET\r\nMAIL FROM:")


def test_a_refused_mail_decides_and_the_chunks_replies_are_taken_in_order() -> None:
    t = ready(("PIPELINING", "CHUNKING"))
    offer(t)
    t.handle_event(ev.BodySent())
    (a,) = reports(lines(t, "550 5.7.1 sender refused", "503 no mail", "503 5.5.1 no valid recipients"))
    assert (a.state, a.code, a.status) == ("mailfrom", 550, "5.7.1")


def test_a_421_to_a_chunk_fails_the_message_and_leaves() -> None:
    t = ready(("CHUNKING",))
    offer(t, Msg(mime=b"z" * (CHUNK_SIZE + 1)))
    lines(t, "250 ok", "250 ok")
    actions = lines(t, "421 4.3.2 shutting down")
    (a,) = reports(actions)
    assert (a.code, a.is_permanent) == (421, False) and kinds(actions)[-1] == "Close"


def test_lost_while_chunks_go_out_is_the_messages_loss() -> None:
    t = ready(("PIPELINING", "CHUNKING"))
    offer(t)
    (a,) = reports(lost(t))
    assert (a.state, a.result) == ("mailfrom", "lost")


def test_data_when_chunking_is_not_offered() -> None:
    t = ready(("PIPELINING",))
    assert sent(offer(t)).endswith(b"DATA\r\n")


# -- what a message needs of the receiver ------------------------------------------------------


def refused_before_mail(t: Any, message: Msg) -> Any:
    actions = offer(t, message)
    assert written(actions) == b"", "nothing of the message goes out"
    (a,) = reports(actions)
    assert (a.state, a.result, a.code, a.is_permanent) == ("mailfrom", "error", None, True)
    assert kinds(actions) == ["Report", "Fetch"]
    return a


def test_binarymime_needs_chunking_and_binarymime_and_is_never_converted() -> None:
    for offered in (("PIPELINING",), ("PIPELINING", "CHUNKING"), ("PIPELINING", "BINARYMIME")):
        a = refused_before_mail(ready(offered), Needy(Needs(binarymime=True)))
        assert a.status == "5.6.3" and "BINARYMIME" in a.description


def test_binarymime_goes_byte_for_byte_with_bdat() -> None:
    t = ready(("PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME"))
    mime = b"Content-Type: application/octet-stream\r\n\r\n\0\xff\n.\r\r\n."
    actions = offer(t, Needy(Needs(binarymime=True), mime=mime))
    assert written(actions) == (b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n"
                                + b"BDAT %d LAST\r\n" % len(mime) + mime)


@pytest.mark.parametrize("message", [Needy(Needs(smtputf8=True)), Msg(rcpt="jörg@example.com")],
                         ids=["flag", "utf8-address"])
def test_smtputf8_to_a_receiver_without_it_fails_with_5_6_7(message: Msg) -> None:
    a = refused_before_mail(ready(("PIPELINING", "8BITMIME")), message)
    assert a.status == "5.6.7" and "SMTPUTF8" in a.description


def test_smtputf8_to_a_receiver_with_it_asks_for_it() -> None:
    t = ready(("PIPELINING", "SMTPUTF8"))
    assert sent(offer(t, Needy(Needs(smtputf8=True)))).startswith(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    t = ready(("PIPELINING", "SMTPUTF8"))
    assert sent(offer(t, Msg(rcpt="jörg@example.com"))).startswith(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")


def requiretls_session(offered: tuple[str, ...], **policy: Any) -> Any:
    t = table(security="opportunistic", tls_policy="verified", tls_mandatory=True, checks_certificate=True, **policy)
    lines(t, "220 mx", ehlo("STARTTLS"), "220 go")
    assert kinds(lines(t, ehlo(*offered))) == ["Secured"]
    assert kinds(t.handle_event(ev.CertificateChecked(None))) == ["Fetch"]
    return t


def test_requiretls_over_verified_tls_to_a_receiver_offering_it() -> None:
    t = requiretls_session(("PIPELINING", "REQUIRETLS"), requiretls=True)
    assert sent(offer(t, Needy(Needs(requiretls=True)))).startswith(b"MAIL FROM:<a@example.org> REQUIRETLS\r\n")


def test_a_requiretls_connection_to_a_receiver_without_it_ends_final_with_5_7_30() -> None:
    # Before any message is taken: the destination's other hosts are tried, then it is returned.
    t = table(security="opportunistic", tls_policy="verified", tls_mandatory=True, checks_certificate=True,
              requiretls=True)
    lines(t, "220 mx", ehlo("STARTTLS"), "220 go", ehlo("PIPELINING", "SMTPUTF8"))
    assert sent(t.handle_event(ev.CertificateChecked(None))) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.status, fault.is_permanent) == ("starttls", "5.7.30", True)
    assert fault.description == "REQUIRETLS support required: the receiver does not offer REQUIRETLS"


def test_requiretls_without_verified_tls_fails_with_5_7_10() -> None:
    # In plaintext, and on a connection whose TLS was not made strict for REQUIRETLS.
    a = refused_before_mail(ready(("PIPELINING", "REQUIRETLS")), Needy(Needs(requiretls=True)))
    assert a.status == "5.7.10"
    t = requiretls_session(("PIPELINING", "REQUIRETLS"))
    assert refused_before_mail(t, Needy(Needs(requiretls=True))).status == "5.7.10"


def test_a_requiretls_connection_without_starttls_or_a_verified_certificate_is_final() -> None:
    t = table(security="opportunistic", tls_policy="verified", tls_mandatory=True, checks_certificate=True,
              requiretls=True)
    lines(t, "220 mx")
    assert sent(lines(t, ehlo("PIPELINING"))) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.state, fault.status, fault.is_permanent) == ("starttls", "5.7.10", True)

    t = table(security="opportunistic", tls_policy="verified", tls_mandatory=True, checks_certificate=True,
              requiretls=True)
    lines(t, "220 mx", ehlo("STARTTLS"), "220 go", ehlo("REQUIRETLS"))
    assert sent(t.handle_event(ev.CertificateChecked("certificate chain not trusted"))) == b"QUIT\r\n"
    lines(t, "221 bye")
    fault = ended(lost(t))
    assert (fault.status, fault.is_permanent, fault.description) == ("5.7.10", True, "certificate chain not trusted")


# -- the adapter -----------------------------------------------------------------------------------


def test_the_adapter_writes_bdat_chunks_without_a_dot_also_when_streamed() -> None:
    big = b"Subject: big\r\n\r\n" + b".x\r\n" * (WRITE_AT_ONCE // 4 + 10)  # past one write: a producer
    source = ListSource([msg(mime=big)])
    proto = OutboundFactory(source, helo="c.test", security="none", clock=Clock()).buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"220 mx ESMTP\r\n")
    t.clear()
    proto.dataReceived(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    while t.producer is not None:
        t.producer.resumeProducing()
    assert t.value() == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n" + b"".join(bdat_chunks(big))
    proto.dataReceived(b"250 ok\r\n250 ok\r\n250 chunk\r\n250 2.0.0 queued\r\n")
    [(_, attempt)] = source.done
    assert (attempt.result, attempt.description) == ("accepted", "queued")
