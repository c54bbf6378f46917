"""Scenario 9, ``milter``: inbound mail through real rspamd as a milter, mqmta (``--milters``)
against Postfix (``smtpd_milters``), each round with a fresh rspamd of its own.

Also the minimal rspamd configuration both this scenario and tests/test_milter_rspamd.py start:
its proxy worker in milter mode scanning itself (``self_scan``), no Redis, no controller, no
network (its resolver is a closed loopback port), the ``milter_headers`` module only, and a
five-line TLD list instead of the public suffix list, whose Hyperscan compilation would
otherwise take most of a minute at every start on a machine without rspamd's cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.peers import Mqmta, Peer, Postfix, Server
from bench.proc import LOOPBACK, BenchError, Reaper, ensure_apt, free_port, port_open, wait_for

RSPAMD_CONFIG = """
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


def rspamd_command(workdir: Path, port: int, dead_port: int) -> list[str]:
    """Write a minimal rspamd configuration into ``workdir`` (milter on 127.0.0.1:``port``);
    the command that runs it in the foreground."""
    binary = shutil.which("rspamd")
    if binary is None:
        raise FileNotFoundError("rspamd is not installed (apt-get install rspamd)")
    plugins = workdir / "plugins"
    plugins.mkdir(exist_ok=True)
    if not (plugins / "milter_headers.lua").exists():
        (plugins / "milter_headers.lua").symlink_to("/usr/share/rspamd/plugins/milter_headers.lua")
    (workdir / "tld.dat").write_text("com\norg\nnet\ntest\nexample\n")
    (workdir / "rspamd.conf").write_text(RSPAMD_CONFIG.format(dir=workdir, port=port, dead=dead_port))
    return [binary, "-f", "-i", "-u", "root", "-g", "root", "-c", str(workdir / "rspamd.conf"),
            f"--var=DBDIR={workdir}", f"--var=RUNDIR={workdir}"]


class _PostfixMilter(Postfix):
    """Postfix asking the milter at ``spec`` (set before each start)."""

    spec = ""

    def routing(self, conf: Path) -> tuple[str, str]:
        main, master = super().routing(conf)
        return main + f"smtpd_milters = {self.spec}\nmilter_default_action = tempfail\n", master


class _WithRspamd(Peer):
    """A side whose server asks a fresh rspamd, started first in the same round."""

    def __init__(self, inner: Peer) -> None:
        self.inner = inner
        self.name = inner.name  # the title says both go through rspamd; --peers filters by it

    def prepare(self, allow_install: bool) -> None:
        ensure_apt(["rspamd"], ["rspamd"], allow_install)
        self.inner.prepare(allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        (workdir / "rspamd").mkdir()
        (workdir / "mta").mkdir()
        port = free_port()
        proc = reaper.popen("rspamd", rspamd_command(workdir / "rspamd", port, free_port()), cwd=workdir)
        if not wait_for(lambda: port_open(port) or proc.poll() is not None, 180) or proc.poll() is not None:
            raise BenchError(f"rspamd did not listen on {port}")
        spec = f"inet:{LOOPBACK}:{port}"
        if isinstance(self.inner, _PostfixMilter):
            self.inner.spec = spec
        elif isinstance(self.inner, Mqmta):
            self.inner.extra_args = (f"--milters={spec}", "--milter-default-action=tempfail")
        return self.inner.start(reaper, workdir / "mta")


def milter_sides() -> list[Peer]:
    return [_WithRspamd(_PostfixMilter()), _WithRspamd(Mqmta())]
