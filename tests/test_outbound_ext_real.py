"""What a message asks of the next hop, over real sockets: BDAT (RFC 3030) from mqmta to mqmta and
to Postfix, byte for byte; SMTPUTF8 onward (RFC 6531 §3.2); REQUIRETLS (RFC 8689) between two
mqmta with a test CA, and its refusal by receivers that cannot keep it (bounces parsed back with
Python's email package)."""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import socket
import ssl
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from mqtwisted.jsonvalues import mime_bytes, mime_text
from mqtwisted.queue import Publication
from mqtwisted.smtp.outbody import CHUNK_SIZE
from mqtwisted.testing import start_mta
from tests.conftest import wait_until
from tests.dnszone import DNSZone
from tests.postfixpeer import VERBOSE_PEER
from tests.smtppeers import ScriptedFactory
from tests.tlsca import CA

pytestmark = pytest.mark.slow

SIZES = (1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1 << 20)


def text_of(size: int, n: int) -> bytes:
    """A text message of exactly ``size`` octets, CRLF lines starting with dots (DATA would stuff them)."""
    head = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: size %d #%d\r\nMessage-ID: <%d.%d@example.org>\r\n" \
           b"Date: Sun, 29 Nov 2026 18:00:00 +0000\r\n\r\n" % (size, n, size, n)
    body = (b".a line with a dot\r\n..two dots\r\n.\r\nplain text, 8bit: \xc3\xa9\r\n" * (size // 40 + 1))
    data = (head + body)[:size]
    if size > len(head):
        data = data[:-2] + b"\r\n"  # ends with a whole line
    return data


def send_binary(port: int, mime: bytes, rcpt: str) -> None:
    """A raw client: MAIL with BODY=BINARYMIME and the message in two BDAT chunks."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        half = len(mime) // 2
        s.sendall(b"EHLO client.test\r\nMAIL FROM:<a@example.org> BODY=BINARYMIME\r\nRCPT TO:<%s>\r\n"
                  b"BDAT %d\r\n%sBDAT %d LAST\r\n%sQUIT\r\n" % (rcpt.encode(), half, mime[:half], len(mime) - half,
                                                                  mime[half:]))
        replies = b""
        while not replies.endswith(b"\r\n") or b"\r\n221" not in replies:
            data = s.recv(65536)
            if not data:
                break
            replies += data
    codes = [line[:3] for line in replies.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220", b"250", b"250", b"250", b"250", b"250", b"221"], replies


async def publish(mta: Any, docs: list[dict[str, Any]]) -> None:
    await mta.queue.publish([Publication("outbox", doc) for doc in docs])


def doc(mime: bytes, recipient: str, smarthost: str, **more: Any) -> dict[str, Any]:
    return {"envelope": "a@example.org", "recipient": recipient, "mime": mime_text(mime), "smarthost": smarthost,
            **more}


def bounces(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The RFC 3464 reports, by failed recipient, parsed with the email package."""
    out = {}
    for d in docs:
        report = email.message_from_bytes(mime_bytes(d["mime"]), policy=email.policy.default)
        assert report.get_content_type() == "multipart/report"
        _, status, original = report.iter_parts()
        per_message, per_recipient = status.get_payload()
        out[per_recipient["Final-Recipient"].split(";")[1].strip()] = (report, per_recipient, original)
    return out


@pytest_twisted.ensureDeferred
async def test_bdat_from_mqmta_to_mqmta_keeps_binary_and_text_byte_for_byte(tmp_path) -> None:
    receiver = await start_mta(str(tmp_path / "b"), delivery="off")
    sender = await start_mta(str(tmp_path / "a"), delivery="on")
    try:
        hop = f"127.0.0.1:{receiver.port}"
        sent = {}
        for i, size in enumerate(SIZES):
            sent[f"bin{i}@example.com"] = (os.urandom(size), True)
            sent[f"text{i}@example.com"] = (text_of(size, i), False)
        await publish(sender, [doc(mime, rcpt, hop, **({"binarymime": True} if binary else {}))
                               for rcpt, (mime, binary) in sent.items()])
        # And one that came to the sender over SMTP with BODY=BINARYMIME: the flag is the document's.
        relayed = b"X-MQ-Smarthost: " + hop.encode() + b"\r\n\r\n" + bytes(range(256)) * 3
        # smtp-extract takes the X-MQ-Smarthost header off, and nothing else.
        sent["relayed@example.com"] = (relayed.replace(b"X-MQ-Smarthost: " + hop.encode() + b"\r\n", b""), True)
        await threads.deferToThread(send_binary, sender.port, relayed, "relayed@example.com")

        async def arrived() -> bool:
            return len(await receiver.documents("outbox")) == len(sent)

        await wait_until(arrived, 60, "every message at the receiver")

        async def settled() -> bool:  # the sender stores its outcomes a moment after the 250s
            return len(await sender.documents("success")) == len(sent)

        await wait_until(settled, 30, "every outcome at the sender")
        for kept in await receiver.documents("outbox"):
            mime, binary = sent[kept["recipient"]]
            assert mime_bytes(kept["mime"]) == mime, kept["recipient"]
            # The receiver refuses BODY=BINARYMIME with DATA: these went as BDAT, and say so onward.
            assert kept.get("binarymime", False) is binary
        attempts = [d["results"][-1] for d in await sender.documents("success")]
        assert len(attempts) == len(sent) and {a["code"] for a in attempts} == {250}
    finally:
        await sender.stop()
        await receiver.stop()


@pytest.mark.xdist_group("postfix")
@pytest_twisted.ensureDeferred
async def test_bdat_to_postfix_which_keeps_the_message_as_sent(tmp_path, postfix_keeper) -> None:
    postfix = postfix_keeper
    sender = await start_mta(str(tmp_path / "a"), delivery="on")
    try:
        sent = {f"bdat{i}@example.com": text_of(size, i) for i, size in enumerate(SIZES)}
        # From 127.0.0.2: Postfix's debug_peer_list logs every command that address sends.
        hop = f"127.0.0.1:{postfix.port}"
        await publish(sender, [doc(mime, rcpt, hop, ips=[VERBOSE_PEER]) for rcpt, mime in sent.items()])
        # Postfix offers CHUNKING but not BINARYMIME: binary content is returned, never converted.
        await publish(sender, [{**doc(b"\0\xff binary", "binary@example.com", hop, ips=[VERBOSE_PEER], binarymime=True),
                                "envelope": "binary@example.org"}])
        await wait_until(lambda: all(postfix.kept(b"Delivered-To: " + r.encode() + b"\n") for r in sent), 60,
                         "every message in Postfix's Maildir")
        for rcpt, mime in sent.items():
            (kept,) = postfix.kept(b"Delivered-To: " + rcpt.encode() + b"\n")
            # Postfix's Maildir has LF line ends and its own trace headers on top (and the ones a
            # 1-octet message lacks); after them, the message exactly as sent (dots and all: BDAT
            # has no stuffing to undo), a last line without its end given one.
            ending = b"" if mime.endswith(b"\r\n") else b"\r\n"
            assert kept.replace(b"\n", b"\r\n").endswith(b"\r\n" + mime + ending)
        # Postfix's debug log shows each message's MAIL and BDAT commands as it received them;
        # mqmta sends over several connections at once, so each smtpd process's lines apart.
        received = [(line.split("smtpd[", 1)[-1].split("]", 1)[0], line.rsplit(": ", 1)[-1])
                    for line in postfix.log().splitlines() if f"[{VERBOSE_PEER}]: " in line]
        for mime in sent.values():
            size = len(mime)
            (at,) = [i for i, (_, c) in enumerate(received)
                     if (c + " ").startswith(f"MAIL FROM:<a@example.org> SIZE={size} ")]
            chunks = [f"BDAT {CHUNK_SIZE}"] * ((size - 1) // CHUNK_SIZE) + [f"BDAT {(size - 1) % CHUNK_SIZE + 1} LAST"]
            session = received[at][0]
            commands = [c for pid, c in received[at + 1 :] if pid == session and c.startswith(("BDAT", "DATA", "MAIL"))]
            assert commands[: len(chunks)] == chunks
        assert not [c for c in received if "binary@example.org" in c]
        await wait_until(lambda: sender.documents("failure"), 30, "the binary message's failure")
        (failed,) = await sender.documents("failure")
        assert (failed["recipient"], failed["results"][-1]["status"]) == ("binary@example.com", "5.6.3")
        (_, per_recipient, _) = bounces(await sender.documents("dsn"))["binary@example.com"]
        assert per_recipient["Status"] == "5.6.3" and "BINARYMIME" in per_recipient["Diagnostic-Code"]
    finally:
        await sender.stop()


@pytest_twisted.ensureDeferred
async def test_smtputf8_goes_to_a_receiver_offering_it_and_is_returned_by_one_without(tmp_path) -> None:
    receiver = await start_mta(str(tmp_path / "b"), delivery="off")
    without = ScriptedFactory(extensions=("PIPELINING", "8BITMIME", "CHUNKING"))
    port = reactor.listenTCP(0, without, interface="127.0.0.1")
    sender = await start_mta(str(tmp_path / "a"), delivery="on")
    try:
        mime = "From: jörg@exämple.org\r\nSubject: utf8\r\n\r\nGrüße\r\n".encode()
        with_it, plain = f"127.0.0.1:{receiver.port}", f"127.0.0.1:{port.getHost().port}"
        await publish(sender, [
            doc(mime, "jörg@example.com", with_it, smtputf8=True),
            doc(mime, "flagged@example.com", plain, smtputf8=True),
            doc(mime, "jörg@example.net", plain),
        ])

        async def done() -> bool:
            return len(await receiver.documents("outbox")) == 1 and len(await sender.documents("dsn")) == 2

        await wait_until(done, 30, "one delivery and two bounces")
        (kept,) = await receiver.documents("outbox")
        assert (kept["recipient"], kept["smtputf8"], mime_bytes(kept["mime"])) == ("jörg@example.com", True, mime)
        assert not any(line.startswith(b"MAIL") for s in without.sessions for line in s.commands), "never sent mangled"
        reports = bounces(await sender.documents("dsn"))
        assert set(reports) == {"flagged@example.com", "jörg@example.net"}
        for _, per_recipient, _ in reports.values():
            assert (per_recipient["Action"], per_recipient["Status"]) == ("failed", "5.6.7")
            assert "SMTPUTF8" in per_recipient["Diagnostic-Code"]
    finally:
        await sender.stop()
        await receiver.stop()
        await port.stopListening()


def send_requiretls(port: int, mime: bytes, rcpt: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        assert not client.has_extn("requiretls")  # advertised only inside TLS
        client.starttls(context=context)
        client.ehlo("client.test")
        assert client.has_extn("requiretls")
        client.sendmail("a@example.org", [rcpt], mime, mail_options=["REQUIRETLS"])


@pytest_twisted.ensureDeferred
async def test_requiretls_between_two_mqmta_with_a_test_ca_and_refused_by_the_others(tmp_path) -> None:
    ca = CA()
    issued = ca.issue("peer.test")
    cert, key = tmp_path / "peer.pem", tmp_path / "peer.key"
    cert.write_bytes(issued.pem())
    key.write_bytes(issued.key_pem())
    zone = DNSZone({"peer.test": [("A", "127.0.0.1")]})
    zone.start()
    receiver = await start_mta(str(tmp_path / "b"), delivery="off", smtp_certificate=str(cert), smtp_key=str(key))
    no_requiretls = ScriptedFactory(extensions=("PIPELINING", "SMTPUTF8"), tls=issued.server_options())
    no_tls = ScriptedFactory(extensions=("PIPELINING",))
    ports = [reactor.listenTCP(0, f, interface="127.0.0.1") for f in (no_requiretls, no_tls)]
    sender = await start_mta(str(tmp_path / "a"), delivery="on", dns_server=f"127.0.0.1:{zone.port}",
                             tls_ca=ca.bundle(tmp_path / "ca.pem"))
    try:
        def message(n: int, hop: int, *extra: str) -> bytes:
            return "\r\n".join([f"X-MQ-Smarthost: peer.test:{hop}", "From: a@example.org", f"Subject: secret {n}",
                                *extra, "", "the secret body", ""]).encode()

        await threads.deferToThread(send_requiretls, sender.port, message(1, receiver.port), "ok@example.com")
        for n, rcpt in enumerate(("norequiretls@example.com", "notls@example.com")):
            await threads.deferToThread(send_requiretls, sender.port, message(2 + n, ports[n].getHost().port), rcpt)
        # TLS-Required: No (no REQUIRETLS) to a receiver without STARTTLS, though the message asks
        # for verified TLS: sent in the clear, as the sender asked.
        await publish(sender, [doc(message(9, ports[1].getHost().port, "TLS-Required: No"), "optional@example.com",
                                   f"peer.test:{ports[1].getHost().port}", security="verified")])

        async def done() -> bool:
            return len(await receiver.documents("outbox")) == 1 and len(await sender.documents("dsn")) == 2 \
                and len(no_tls.messages) == 1

        await wait_until(done, 60, "one REQUIRETLS delivery, two bounces, one TLS-Required: No delivery")
        (kept,) = await receiver.documents("outbox")
        assert (kept["recipient"], kept["requiretls"], kept["connection"]["secure"]) == ("ok@example.com", True, True)
        (accepted,) = [d["results"][-1] for d in await sender.documents("success") if d["recipient"] == "ok@example.com"]
        assert accepted["cipher"] and accepted["tls_policy"] == "verified"
        reports = bounces(await sender.documents("dsn"))
        status = {rcpt: r[1]["Status"] for rcpt, r in reports.items()}
        assert status == {"norequiretls@example.com": "5.7.30", "notls@example.com": "5.7.10"}
        for _, _, original in reports.values():
            # The report itself is a new message from the null sender, without REQUIRETLS, so it
            # carries the original's headers only (RFC 8689 §5).
            assert original.get_content_type() == "text/rfc822-headers" and "Subject: secret" in original.as_string()
        for report in await sender.documents("dsn"):
            assert b"secret body" not in mime_bytes(report["mime"]) and "requiretls" not in report
        # Neither refusing receiver saw the message; the TLS-Required: No one did, in plaintext.
        assert no_requiretls.messages == [] and [m["tls"] for m in no_tls.messages] == [False]
        assert not any(line.startswith(b"MAIL") and b"REQUIRETLS" in line for s in no_tls.sessions for line in s.commands)
    finally:
        await sender.stop()
        await receiver.stop()
        for port in ports:
            await port.stopListening()
        await zone.stop()
