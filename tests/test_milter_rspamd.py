"""Real rspamd (Debian's ``rspamd``) as an inbound milter: its proxy worker in milter mode, on a
loopback port, with the minimal configuration of bench/milters.py (no Redis, no network) in a
temporary directory.  One rspamd for the whole test session.

GTUBE is refused with rspamd's own reply; a clean message is queued with the headers rspamd's
``milter_headers`` module adds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from bench.milters import rspamd_command
from mqtwisted.testing import start_mta
from tests.conftest import free_port, in_thread, wait_port
from tests.test_milter_inbound import send

# One worker runs both tests, so the suite starts one rspamd, not one per worker.
pytestmark = pytest.mark.xdist_group("rspamd")

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="session")
def rspamd(tmp_path_factory):
    """``inet:127.0.0.1:PORT`` of a running rspamd milter."""
    if shutil.which("rspamd") is None:
        pytest.skip("rspamd is not installed (apt-get install rspamd; .ci/run does this)")
    workdir: Path = tmp_path_factory.mktemp("rspamd")
    port = free_port()
    proc = subprocess.Popen(rspamd_command(workdir, port, free_port()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_port(port, 120, proc)
        yield f"inet:127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
def mta(tmp_path, rspamd):
    running = pytest_twisted.blockon(start_mta(str(tmp_path / "data"), milters=rspamd))
    yield running
    pytest_twisted.blockon(running.stop())


def message(body: str) -> bytes:
    return (f"From: a@example.com\r\nTo: b@example.com\r\nSubject: rspamd test\r\n"
            f"Message-ID: <rspamd-test@example.com>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            f"\r\n{body}\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_gtube_is_refused_with_rspamds_reply(mta):
    replies = await in_thread(send, mta.port, ("b@example.com",), message(f"Hello.\r\n{GTUBE}\r\n"))
    assert [code for code, _ in replies[:4]] == [250, 250, 250, 554]
    assert replies[3][1] == b"5.7.1 Gtube pattern"  # rspamd's own words for GTUBE
    assert await mta.documents() == []


@pytest_twisted.ensureDeferred
async def test_a_clean_message_is_queued_with_rspamds_headers(mta):
    replies = await in_thread(send, mta.port, ("b@example.com",), message("Hello, just a friendly note."))
    assert replies[-1][0] == 250
    [doc] = await mta.documents()
    head = doc["mime"].split("\r\n\r\n")[0]
    assert "\r\nX-Spamd-Result: default: False [" in head
    assert "\r\nX-Rspamd-Server: " in head and "\r\nX-Rspamd-Queue-Id: " in head
    assert doc["mime"].endswith("\r\n\r\nHello, just a friendly note.\r\n")
