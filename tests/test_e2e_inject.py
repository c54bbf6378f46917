"""``mqmta inject --from A --to B C < message.eml`` puts one document per recipient on the outbox,
and delivery sends them.  The CLI runs as a real process on the MTA's spool."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from mqtwisted.testing import start_mta
from tests.conftest import wait_until
from tests.realmta import ROOT, env
from tests.smtppeers import ScriptedFactory

pytestmark = pytest.mark.slow

EML = b"From: a@example.org\nTo: x@example.com\nSubject: injected\n\n.dot first\nbody\n"


def mqmta(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mqtwisted.cli", *args], input=stdin, capture_output=True,
                          env=env(), cwd=ROOT, timeout=60)


@pytest_twisted.ensureDeferred
async def test_inject_puts_documents_on_the_outbox_that_get_delivered(tmp_path) -> None:
    data = str(tmp_path / "mta")
    server = ScriptedFactory()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    # Start once so the spool exists, as on a real installation; stop so inject runs alone.
    mta = await start_mta(data, delivery="off")
    await mta.stop()
    r = await threads.deferToThread(
        mqmta, "inject", "--data-dir", data, "--from", "a@example.org", "--to", "x@example.com", "y@example.com",
        stdin=EML,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count("queued ") == 2
    listed = await threads.deferToThread(mqmta, "queue", "--data-dir", data, "list", "outbox")
    docs = [json.loads(line.split(" ", 1)[1]) for line in listed.stdout.decode().splitlines()]
    assert sorted(d["recipient"] for d in docs) == ["x@example.com", "y@example.com"]
    assert {d["envelope"] for d in docs} == {"a@example.org"}

    mta = await start_mta(data, delivery="on", smarthost=f"127.0.0.1:{port.getHost().port}")
    try:
        async def delivered() -> bool:
            return (await mta.queue.stats()).get("success", 0) >= 2

        await wait_until(delivered, 20)
        # One message for both: one transaction, a RCPT each.
        assert [m["rcpt"] for m in server.messages] == [[b"RCPT TO:<x@example.com>", b"RCPT TO:<y@example.com>"]]
        # CRLF on the wire, the leading dot kept (stuffed on the wire, unstuffed by the server).
        assert server.messages[0]["body"] == EML.replace(b"\n", b"\r\n")
        stats = await threads.deferToThread(mqmta, "queue", "--data-dir", data, "stats")
        counts = dict(line.split() for line in stats.stdout.decode().splitlines())
        assert counts["success"] == "2" and counts["results"] == "2" and counts["outbox"] == "0"
    finally:
        await mta.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_inject_into_a_running_mta_is_delivered(tmp_path) -> None:
    data = str(tmp_path / "mta")
    server = ScriptedFactory()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    mta = await start_mta(data, delivery="on", smarthost=f"127.0.0.1:{port.getHost().port}")
    try:
        r = await threads.deferToThread(
            mqmta, "inject", "--data-dir", data, "--from", "a@example.org", "--to", "z@example.com", stdin=EML,
        )
        assert r.returncode == 0, r.stderr

        async def delivered() -> bool:
            return (await mta.queue.stats()).get("success", 0) >= 1

        await wait_until(delivered, 3)
    finally:
        await mta.stop()
        await port.stopListening()


def test_the_tools_queue_takes_the_mtas_defaults_for_every_other_option(tmp_path) -> None:
    """``mqmta inject --queue amqp://…`` once failed with a KeyError for each queue option added
    after it (amqp-queue-type, then amqp-max-backoff): the tools' queue is built from the MTA's
    own option table now."""
    from mqtwisted.queue.amqp import AmqpQueue
    from mqtwisted.queue.spool import SpoolQueue
    from mqtwisted.wiring import tool_queue

    queue = tool_queue("amqp://guest:guest@127.0.0.1:5672/", str(tmp_path), "quorum")
    assert isinstance(queue, AmqpQueue) and queue.prefetch == 1
    assert isinstance(tool_queue("spool", str(tmp_path)), SpoolQueue)
