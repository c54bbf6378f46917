"""Real rspamd (Debian's ``rspamd``) as an inbound milter: its proxy worker in milter mode, scanning
itself (``self_scan``), on a loopback port with a minimal configuration in a temporary directory
(no Redis, no controller, no network: its resolver points at a closed loopback port, and a
five-line TLD list keeps its start quick).  One rspamd for the whole test session.

GTUBE is refused with rspamd's own reply; a clean message is queued with the headers rspamd's
``milter_headers`` module adds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from mqtwisted.testing import start_mta
from tests.conftest import free_port, in_thread, wait_port
from tests.test_milter_inbound import send

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

CONFIG = """
options {{
  pidfile = "{dir}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:{dead}"]; timeout = 1s; retransmits = 1; }}
  local_addrs = [];
  filters = "";
  url_tld = "{dir}/tld.dat";
  hs_cache_dir = "{dir}";
  cache_file = "{dir}/symbols.cache";
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "notice"; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{port}";
  milter = yes;
  timeout = 30s;
  count = 1;
  upstream "local" {{ default = yes; self_scan = yes; }}
  reject_message = "Spam message rejected";
}}
modules {{ path = "{dir}/plugins"; }}
milter_headers {{
  use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id"];
  skip_local = false;
  skip_authenticated = false;
}}
"""


@pytest.fixture(scope="session")
def rspamd(tmp_path_factory):
    """``inet:127.0.0.1:PORT`` of a running rspamd milter."""
    binary = shutil.which("rspamd")
    if binary is None:
        pytest.skip("rspamd is not installed (apt-get install rspamd; .ci/run does this)")
    workdir: Path = tmp_path_factory.mktemp("rspamd")
    (workdir / "plugins").mkdir()
    (workdir / "plugins" / "milter_headers.lua").symlink_to("/usr/share/rspamd/plugins/milter_headers.lua")
    (workdir / "tld.dat").write_text("com\norg\nnet\ntest\nexample\n")
    port = free_port()
    (workdir / "rspamd.conf").write_text(CONFIG.format(dir=workdir, port=port, dead=free_port()))
    proc = subprocess.Popen(
        [binary, "-f", "-i", "-u", "root", "-g", "root", "-c", str(workdir / "rspamd.conf"),
         f"--var=DBDIR={workdir}", f"--var=RUNDIR={workdir}"],
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
