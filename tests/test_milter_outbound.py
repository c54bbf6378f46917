"""``--milters-out``: milters on each message before delivery, as its prepare step.  With the test
milter (tests/milterpeer.py) for the verdicts, and with real OpenDKIM (Debian's ``opendkim``, in
``Mode s``) signing what mqmta delivers: dkimpy verifies the delivered message with the key from
a twisted.names zone on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from mqtwisted.connection import Reply
from mqtwisted.milter.outbound import OutboundMilters
from mqtwisted.signing import RSA, generate_key_pair
from mqtwisted.testing import start_mta
from tests.conftest import free_port, in_thread, send_mail, wait_port, wait_until
from tests.milterpeer import (
    CLOSE,
    REJECT,
    TEMPFAIL,
    MilterPeer,
    add_header,
    change_from,
    pkt,
    replace_body,
)
from tests.test_delivery_signing import MESSAGE, Peers

MIME = b"From: a@example.org\r\nSubject: out\r\n\r\nBody\r\n"


@pytest.fixture
def milters():
    running: list[MilterPeer] = []

    def start(script=None, **kw) -> MilterPeer:
        m = MilterPeer(script, **kw).start()
        running.append(m)
        return m

    yield start
    for m in running:
        pytest_twisted.blockon(m.stop())


def outbound(*specs: str, default: str = "tempfail", timeout: float = 2.0) -> OutboundMilters:
    return OutboundMilters(list(specs), timeout, default, "mx.test")


@pytest_twisted.ensureDeferred
async def test_changes_are_what_is_sent_and_the_envelope_is_left_alone(milters):
    milter = milters(lambda cmd, args: [add_header("X-Out", "1"), change_from("<other@example.org>"),
                                        replace_body(b"New\r\n"), pkt(b"c")] if cmd == "E" else None)
    result = await outbound(milter.spec).run(MIME, "a@example.org", "b@example.net")
    assert result == b"From: a@example.org\r\nSubject: out\r\nX-Out: 1\r\n\r\nNew\r\n"
    await wait_until(lambda: milter.closed == 1, what="the milter session closed")
    host, family, _, addr = milter.args("C")[0]
    assert (host, family, addr) == ("localhost", "4", "127.0.0.1")
    assert milter.args("H") == ["mx.test"]
    assert milter.args("M") == [["<a@example.org>"]] and milter.args("R") == [["<b@example.net>"]]


@pytest.mark.parametrize("answer, default, expected", [
    (REJECT, "tempfail", Reply(550, "Command rejected", "5.7.1")),
    (TEMPFAIL, "tempfail", Reply(451, "Service unavailable - try again later", "4.7.1")),
    (CLOSE, "tempfail", Reply(451, "Service unavailable - try again later", "4.7.1")),
    (CLOSE, "accept", MIME),
    (pkt(b"d"), "tempfail", Reply(550, "Not sent: a milter discarded the message", "5.7.1")),
    ([pkt(b"q", b"held\0"), pkt(b"c")], "tempfail",
     Reply(550, "Not sent: a milter quarantined the message: held", "5.7.1")),
])
@pytest_twisted.ensureDeferred
async def test_verdicts_stop_or_defer_the_attempt(milters, answer, default, expected):
    milter = milters(lambda cmd, args: answer if cmd == "E" else None)
    assert await outbound(milter.spec, default=default).run(MIME, "a@example.org", "b@example.net") == expected


@pytest_twisted.ensureDeferred
async def test_a_milter_that_is_down_defers_the_message():
    result = await outbound(f"inet:127.0.0.1:{free_port()}").run(MIME, "a@example.org", "b@example.net")
    assert result == Reply(451, "Service unavailable - try again later", "4.7.1")


# -- real OpenDKIM -------------------------------------------------------------------------------


def opendkim_path() -> str:
    path = shutil.which("opendkim") or ("/usr/sbin/opendkim" if os.path.exists("/usr/sbin/opendkim") else None)
    if path is None:
        pytest.skip("opendkim is not installed (apt-get install opendkim; .ci/run does this)")
    return path


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory):
    """OpenDKIM signing (Mode s) for example.org with selector ``rsa1``, on a loopback port."""
    binary = opendkim_path()
    workdir: Path = tmp_path_factory.mktemp("opendkim")
    pair = generate_key_pair(RSA)
    key = workdir / "rsa1.private"
    key.write_bytes(pair.private_pem)
    key.chmod(0o600)
    port = free_port()
    conf = workdir / "opendkim.conf"
    conf.write_text(
        f"Mode s\nDomain example.org\nSelector rsa1\nKeyFile {key}\nSocket inet:{port}@127.0.0.1\n"
        f"Canonicalization simple/simple\nBackground no\nSyslog no\nPidFile {workdir}/pid\n"
        "RequireSafeKeys no\nUMask 002\n"
    )
    proc = subprocess.Popen([binary, "-f", "-x", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 20, proc)
        yield f"inet:127.0.0.1:{port}", pair
    finally:
        proc.kill()  # SIGTERM: OpenDKIM takes 5 s to exit, and a signer keeps nothing to save
        proc.wait(10)


@pytest_twisted.ensureDeferred
async def test_opendkim_signs_what_mqmta_delivers_and_dkimpy_verifies_it(tmp_path, opendkim):
    spec, pair = opendkim
    # The zone publishes the key OpenDKIM signs with as rsa1._domainkey.example.org.
    peers = Peers({"rsa": pair, "ed": pair, "prop": pair})
    try:
        mta = await start_mta(str(tmp_path / "data"), milters_out=spec, **peers.options)
        try:
            await in_thread(send_mail, mta.port, sender="alice@example.org", rcpts=["bob@example.net"], msg=MESSAGE)
            await wait_until(lambda: peers.received(), what="the message delivered")
        finally:
            await mta.stop()
        [delivered] = peers.received()
        assert delivered.startswith(b"DKIM-Signature:")
        signature = delivered.split(b"\r\n\r\n")[0]
        assert b"d=example.org" in signature and b"s=rsa1" in signature
        assert await peers.verify(delivered) == [True]
    finally:
        await peers.stop()


@pytest_twisted.ensureDeferred
async def test_the_prepare_step_runs_the_milters_after_the_headers_edits_and_sighup_changes_them(milters):
    from mqtwisted.delivery.options import DeliveryOptions
    from mqtwisted.delivery.service import DeliveryService
    from mqtwisted.document import OutgoingDocument
    from tests.memqueue import MemoryQueue

    milter = milters(lambda cmd, args: [add_header("X-Milter", "out"), pkt(b"c")] if cmd == "E" else None)
    service = DeliveryService(MemoryQueue.__new__(MemoryQueue), None,
                              DeliveryOptions(helo="mx.test", milters_out=(milter.spec,)))
    doc = OutgoingDocument({"envelope": "a@example.org", "recipient": "b@example.net", "mime": MIME.decode(),
                            "headers": {"append": {"X-Edit": "1"}}})
    step = service.signing.step(doc)
    assert step is not None
    assert await step(MIME) == MIME.replace(b"\r\n\r\n", b"\r\nX-Edit: 1\r\nX-Milter: out\r\n\r\n")
    # the milter saw the MailerQ headers edit: it runs after it
    assert ("X-Edit", "1") in milter.args("L")
    service.reconfigure({"hostname": "mx.test", "milters-out": ""})
    assert service.signing.step(OutgoingDocument({"envelope": "a@example.org", "recipient": "b@example.net",
                                                  "mime": MIME.decode()})) is None
