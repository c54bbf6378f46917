"""DKIM signing wired into delivery, with real parts: an in-process MTA (``--dkim-keys``) takes
mail over SMTP and delivers it, by MX from a twisted.names zone on loopback, to a scripted
receiver on loopback; the received bytes are verified with dkimpy, the public keys fetched from
the same zone.  Also the worker process (``--delivery-processes 1``) as a real ``twistd``.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import dkim
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mqtwisted.delivery import signing as delivery_signing
from mqtwisted.options import ConfigError
from mqtwisted.queue import Publication
from mqtwisted.signing import ED25519, RSA, KeyPair, generate_key_pair
from mqtwisted.testing import start_mta
from tests.conftest import in_thread, send_mail, wait_until
from tests.dnszone import DNSZone
from tests.realmta import MTAProcess
from tests.smtppeers import ScriptedFactory
from tests.test_dkim import dkim_headers, tag, verify_each, zone_dnsfunc

pytestmark = pytest.mark.slow

MESSAGE = (
    "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: signed on the way out\r\n"
    "Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <wire@example.org>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain\r\n\r\nHello Bob.\r\n.leading dot\r\n\r\n\r\n"
)


@pytest.fixture(scope="module")
def pairs() -> dict[str, KeyPair]:
    return {"rsa": generate_key_pair(RSA), "ed": generate_key_pair(ED25519), "prop": generate_key_pair(RSA)}


class Peers:
    """The DNS zone (MX of example.net, DKIM keys of example.org) and the receiver."""

    def __init__(self, pairs: dict[str, KeyPair]) -> None:
        self.zone = DNSZone({
            "example.net": [("MX", 10, "mx.example.net")],
            "mx.example.net": [("A", "127.0.0.1")],
            "rsa1._domainkey.example.org": [("TXT", pairs["rsa"].record)],
            "ed1._domainkey.example.org": [("TXT", pairs["ed"].record)],
            "prop1._domainkey.example.org": [("TXT", pairs["prop"].record)],
        })
        self.zone.start()
        self.receiver = ScriptedFactory(name="mx.example.net")
        self.port = reactor.listenTCP(0, self.receiver, interface="127.0.0.1")

    @property
    def options(self) -> dict[str, str]:
        return {"delivery": "on", "dns_server": f"127.0.0.1:{self.zone.port}",
                "delivery_port": str(self.port.getHost().port), "retry_interval": "3600"}

    def received(self) -> list[bytes]:
        return [m["body"] for m in self.receiver.messages]

    def verify(self, message: bytes) -> defer.Deferred:
        """dkimpy's verdict on each DKIM-Signature, keys from the zone (blocking DNS: a thread)."""
        return in_thread(verify_each, message, zone_dnsfunc(self.zone.port))

    def stop(self) -> defer.Deferred:
        return defer.gatherResults([defer.maybeDeferred(self.port.stopListening), self.zone.stop()])


@pytest.fixture
def peers(pairs: dict[str, KeyPair]) -> Any:
    p = Peers(pairs)
    yield p
    pytest_twisted.blockon(p.stop())


def keys_file(directory: Path, pairs: dict[str, KeyPair], headers: list[str] | None = None) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rsa1.pem").write_bytes(pairs["rsa"].private_pem)
    (directory / "ed1.pem").write_bytes(pairs["ed"].private_pem)
    extra = f"headers = {json.dumps(headers)}\n" if headers else ""
    (directory / "keys.toml").write_text(
        f'[[key]]\ndomain = "example.org"\nselector = "rsa1"\nfile = "rsa1.pem"\n{extra}\n'
        f'[[key]]\ndomain = "example.org"\nselector = "ed1"\nfile = "ed1.pem"\n{extra}'
    )
    return str(directory / "keys.toml")


def signer_of(mta: Any) -> Any:
    return mta.service.getServiceNamed("delivery").signing.signer


async def results(mta: Any, queue: str) -> list[dict[str, Any]]:
    return await mta.documents(queue)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("per_transaction", [1, 50])
async def test_mail_is_signed_rsa_and_ed25519_once_for_many_recipients(tmp_path: Path, pairs: Any,
                                                                       peers: Peers, per_transaction: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    original = delivery_signing.sign

    def sign(*args: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(delivery_signing, "sign", sign)
    mta = await start_mta(str(tmp_path / "mta"), dkim_keys=keys_file(tmp_path / "keys", pairs),
                          max_recipients_per_transaction=per_transaction, **peers.options)
    # Five copies in five transactions (each signed, by the signer's cache), or all in one.
    transactions = 5 if per_transaction == 1 else 1
    try:
        recipients = [f"bob{i}@example.net" for i in range(5)]
        await mta.send("alice@example.org", recipients, MESSAGE)
        await wait_until(lambda: len(peers.received()) == transactions, what=f"{transactions} deliveries")
        assert sorted(r for m in peers.receiver.messages for r in m["rcpt"]) == [
            f"RCPT TO:<{r}>".encode() for r in recipients]
        for body in peers.received():
            signatures = dkim_headers(body)
            assert [tag(s, "a") for s in signatures] == ["rsa-sha256", "ed25519-sha256"]
            assert {tag(s, "s") for s in signatures} == {"rsa1", "ed1"}
            assert await peers.verify(body) == [True, True]
            assert await peers.verify(body.replace(b"Hello Bob.", b"Hello Eve.")) == [False, False]
        # One signing for the five copies: two signatures (RSA, Ed25519), not ten.
        assert signer_of(mta).signatures_made == 2
        # Never on the reactor's thread; the copies after the first signing come from its cache
        # there, or from a thread when they were asked for while it was signing.
        assert 1 <= len(threads) <= transactions and threading.main_thread().name not in threads
        assert ("rsa1._domainkey.example.org", 16) in peers.zone.resolver.queries
        success = await results(mta, "success")
        assert len(success) == 5 and all(d["results"][0]["result"] == "accepted" for d in success)
    finally:
        await mta.stop()


OUT_DATA_PLUGIN = '''
from mqtwisted import api as mq

def mq_version():
    return mq.MQ_API_VERSION

def mq_smtp_out_data(ctx, conn, message):
    mime = mq.MQ_mime(message)
    mq.MQ_setMime(message, b"X-Out-Data: added by a plugin\\r\\n" + mime)
    return False
'''


@pytest_twisted.ensureDeferred
async def test_header_edits_and_an_out_data_plugin_come_before_signing(tmp_path: Path, pairs: Any,
                                                                      peers: Peers) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "outdata.py").write_text(OUT_DATA_PLUGIN)
    signed = ["from", "to", "subject", "date", "message-id", "x-out-data", "x-edited"]
    mta = await start_mta(str(tmp_path / "mta"), dkim_keys=keys_file(tmp_path / "keys", pairs, signed),
                          plugin_directory=str(plugins), **peers.options)
    try:
        # MailerQ's headers edits (here from an x-mq-headers header of a trusted client), then the
        # plugin's edit in mq_smtp_out_data: both on the wire, both under the signature.
        edits = json.dumps({"prepend": {"X-Edited": "by the headers property"}})
        await mta.send("alice@example.org", ["bob@example.net"], f"X-MQ-Headers: {edits}\r\n" + MESSAGE)
        await wait_until(lambda: len(peers.received()) == 1, what="a delivery")
        body = peers.received()[0]
        assert b"\r\nX-Out-Data: added by a plugin\r\n" in body and b"\r\nX-Edited: by the headers property" in body, body.decode()
        for signature in dkim_headers(body):
            assert {"x-out-data", "x-edited"} <= set(tag(signature, "h").lower().split(":"))
        assert await peers.verify(body) == [True, True]
        changed = body.replace(b"added by a plugin", b"added by someone else")
        assert await peers.verify(changed) == [False, False]
    finally:
        await mta.stop()


def outgoing(mime: str, **properties: Any) -> dict[str, Any]:
    return {"envelope": "alice@example.org", "recipient": "bob@example.net", "mime": mime, **properties}


@pytest_twisted.ensureDeferred
async def test_the_dkim_property_is_used_instead_of_the_keys_file(tmp_path: Path, pairs: Any,
                                                                  peers: Peers) -> None:
    mta = await start_mta(str(tmp_path / "mta"), dkim_keys=keys_file(tmp_path / "keys", pairs),
                          **peers.options)
    try:
        prop = {"domain": "example.org", "selector": "prop1", "key": pairs["prop"].private_pem.decode(),
                "headers": ["x-campaign"]}
        await mta.queue.publish([Publication("outbox", outgoing("X-Campaign: 7\r\n" + MESSAGE, dkim=prop))])
        await wait_until(lambda: len(peers.received()) == 1, what="a delivery")
        body = peers.received()[0]
        signatures = dkim_headers(body)
        assert [tag(s, "s") for s in signatures] == ["prop1"]
        assert "x-campaign" in tag(signatures[0], "h").lower().split(":")
        assert await peers.verify(body) == [True]
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_a_signing_failure_is_temporary_and_sends_nothing(tmp_path: Path, pairs: Any, peers: Peers) -> None:
    mta = await start_mta(str(tmp_path / "mta"), **peers.options)
    try:
        # ARC sealing asked for a message that already carries an ARC chain, with no verdict on
        # it: a truthful seal cannot be made, and an unsealed message must not go out.
        prop = {"domain": "example.org", "selector": "prop1", "key": pairs["prop"].private_pem.decode(),
                "protocols": ["dkim", "arc"]}
        chain = "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=elsewhere.example; s=x; t=1; b=AAAA\r\n"
        await mta.queue.publish([Publication("outbox", outgoing(chain + MESSAGE, dkim=prop))])

        async def retried() -> bool:
            return bool(await results(mta, "retry"))

        await wait_until(retried, what="a temporary failure")
        attempt = (await results(mta, "retry"))[0]["results"][-1]
        assert (attempt["state"], attempt["result"], attempt["code"]) == ("data", "error", 451)
        assert "could not be signed" in attempt["description"] and "ARC" in attempt["description"]
        waiting = await results(mta, "outbox")
        assert len(waiting) == 1 and not await results(mta, "failure")
        assert peers.received() == []
        assert not any(c.startswith(b"MAIL") for s in peers.receiver.sessions for c in s.commands)
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_an_invalid_dkim_property_fails_for_good_naming_it(tmp_path: Path, peers: Peers) -> None:
    mta = await start_mta(str(tmp_path / "mta"), **peers.options)
    try:
        bad = {"domain": "example.org", "selector": "prop1", "key": "not a key"}
        await mta.queue.publish([Publication("outbox", outgoing(MESSAGE, dkim=bad))])

        async def failed() -> bool:
            return bool(await results(mta, "failure"))

        await wait_until(failed, what="a permanent failure")
        attempt = (await results(mta, "failure"))[0]["results"][-1]
        assert (attempt["state"], attempt["result"]) == ("process", "invalid")
        assert attempt["description"].startswith("property 'dkim': dkim: key:")
        assert peers.receiver.connections == 0
    finally:
        await mta.stop()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_unusable_keys_file_stops_the_start_naming_it(tmp_path: Path, workers: str) -> None:
    from mqtwisted.service import make_service
    from mqtwisted.testing import mta_options

    bad = tmp_path / "keys.toml"
    bad.write_text('[[key]]\ndomain = "example.org"\nselector = "s1"\nfile = "absent.pem"\n')
    options = mta_options(str(tmp_path / "mta"), delivery="on", delivery_processes=workers,
                          dkim_keys=str(bad))
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:4: key #1: cannot read the key file {tmp_path}/absent.pem")):
        make_service(options)


@pytest_twisted.ensureDeferred
async def test_the_delivery_worker_process_signs_too(tmp_path: Path, pairs: Any, peers: Peers) -> None:
    keys = keys_file(tmp_path / "keys", pairs)
    mta = MTAProcess(str(tmp_path / "data"), "--delivery-processes=1", f"--dkim-keys={keys}",
                     f"--smarthost=127.0.0.1:{peers.port.getHost().port}")
    mta.start()
    try:
        await in_thread(send_mail, mta.port, rcpts=["bob@example.net"], msg=MESSAGE,
                        sender="alice@example.org")
        await wait_until(lambda: len(peers.received()) == 1, 60, "a delivery by the worker")
        assert await peers.verify(peers.received()[0]) == [True, True]
    finally:
        await in_thread(mta.stop)
    assert "Traceback" not in mta.output()


def test_keys_file_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker process and a SIGHUP read the file again, from wherever they run.
    from mqtwisted.testing import mta_options

    monkeypatch.chdir(tmp_path)
    assert mta_options(str(tmp_path), dkim_keys="keys.toml")["dkim-keys"] == str(tmp_path / "keys.toml")


@pytest_twisted.ensureDeferred
async def test_relayed_mail_is_arc_sealed_when_the_keys_file_says_so(tmp_path: Path, pairs: Any,
                                                                     peers: Peers) -> None:
    keys = keys_file(tmp_path / "keys", pairs)
    Path(keys).write_text(Path(keys).read_text().replace('file = "rsa1.pem"\n', 'file = "rsa1.pem"\narc = true\n'))
    mta = await start_mta(str(tmp_path / "mta"), dkim_keys=keys, **peers.options)
    try:
        # One handed over by another server, one an application queued here: only the first is sealed.
        hop = {"remote-ip": "192.0.2.7", "helo": "list.example"}
        await mta.queue.publish([Publication("outbox", outgoing(MESSAGE, connection=hop)),
                                 Publication("outbox", outgoing(MESSAGE.replace("Bob.", "Carol.")))])
        await wait_until(lambda: len(peers.received()) == 2, what="two deliveries")
        sealed, local = sorted(peers.received(), key=lambda b: b"Carol." in b)
        assert sealed.startswith(b"ARC-Seal:") and b"ARC-Seal" not in local
        cv, _, reason = await in_thread(dkim.arc_verify, sealed, dnsfunc=zone_dnsfunc(peers.zone.port))
        assert cv == b"pass", reason
        assert await peers.verify(sealed) == [True, True] and await peers.verify(local) == [True, True]
    finally:
        await mta.stop()
