"""The servers under test: each starts fresh on loopback and can count what it accepted.

A :class:`Peer` knows how to start one instance in a scratch directory and
returns a :class:`Server` with its port, its main pid (for RSS) and a
``count()`` of messages it really accepted, because smtp-source exits 0 even
when a server drops messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import (
    BENCH_DIR,
    LOOPBACK,
    REPO_DIR,
    BenchError,
    Reaper,
    Unavailable,
    ensure_apt,
    ensure_haraka,
    ensure_pip,
    free_port,
    log,
    run,
    wait_for,
    wait_smtp,
)


@dataclass
class Server:
    """One running instance of a peer."""

    name: str
    port: int
    pid: int | None
    workdir: Path
    counter: object = None  # callable () -> int | None, set by the peer
    unverified: str | None = None  # why count() cannot be trusted, if so
    extra: dict = field(default_factory=dict)

    def count(self) -> int | None:
        """Messages the server accepted so far, or None when it cannot tell."""
        if self.counter is None:
            return None
        return self.counter()  # type: ignore[operator]


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class Peer:
    """Base class: a named kind of server."""

    name = "peer"
    #: one process serves every connection (so its RSS means something per connection)
    single_process = True

    def prepare(self, allow_install: bool) -> None:
        """Install or locate what this peer needs; raise Unavailable if impossible."""

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        raise NotImplementedError


# --------------------------------------------------------------------------- smtp-sink


def _sink_counter(path: Path) -> int:
    # smtp-sink -c rewrites "sess=N quit=N mesg=N" lines separated by \r; the last one wins.
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))  # the tail: the file grows all run long
            data = f.read()
    except OSError:
        return 0
    found = re.findall(rb"mesg=(\d+)", data)
    return int(found[-1]) if found else 0


class SmtpSink(Peer):
    """Postfix's smtp-sink: accepts everything, keeps nothing. The machine's upper bound."""

    name = "smtp-sink"

    def __init__(self, dump: bool = False) -> None:
        #: append every message received to ``workdir/dump`` (``-D``), for checking its content
        self.dump = dump

    def prepare(self, allow_install: bool) -> None:
        ensure_apt(["smtp-sink", "smtp-source"], ["postfix", "swaks"], allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        port = free_port()
        out = workdir / "sink.out"
        # -u nobody: required as root; -m: concurrency cap (default 256) above the idle test's 5000.
        argv = ["smtp-sink", "-u", "nobody", "-c", "-m", "10000"]
        if self.dump:
            # smtp-sink runs as nobody and writes a temporary file beside the dump, then renames it.
            workdir.chmod(0o777)
            argv += ["-D", str(workdir / "dump")]
        with open(out, "wb") as f:
            p = reaper.popen(
                "smtp-sink",
                [*argv, f"{LOOPBACK}:{port}", "1024"],
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        wait_smtp(port, proc=p)
        # wait_smtp's own probe session is counted as a session, not a message: harmless.
        return Server(self.name, port, p.pid, workdir, counter=lambda: _sink_counter(out))


# --------------------------------------------------------------------------- python peers


class _ScriptPeer(Peer):
    script = ""
    module = ""
    package = ""

    def prepare(self, allow_install: bool) -> None:
        if self.module:
            ensure_pip(self.module, self.package, allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        port = free_port()
        countfile = workdir / "count"
        logf = open(workdir / "server.log", "wb")  # noqa: SIM115 - child keeps it
        p = reaper.popen(
            self.name,
            [sys.executable, BENCH_DIR / self.script, str(port), str(countfile)],
            stdout=logf,
        )
        logf.close()
        wait_smtp(port, proc=p)
        return Server(self.name, port, p.pid, workdir, counter=lambda: _read_int(countfile))


class Aiosmtpd(_ScriptPeer):
    """aiosmtpd (asyncio) with a handler returning 250 and counting: keeps nothing."""

    name = "aiosmtpd"
    script = "peer_aiosmtpd.py"
    module = "aiosmtpd"
    package = "aiosmtpd"


class BareTwisted(_ScriptPeer):
    """twisted.mail's bare ESMTP with a null delivery: the floor under mqmta's protocol code."""

    name = "twisted.mail"
    script = "peer_twisted.py"


# --------------------------------------------------------------------------- Haraka


class Haraka(Peer):
    """Haraka, one process (nodes=0), discard queue plugin plus a counting plugin."""

    name = "haraka"

    def __init__(self) -> None:
        self.binary: Path | None = None

    def prepare(self, allow_install: bool) -> None:
        if not shutil.which("node"):
            raise Unavailable("node not found")
        self.binary = ensure_haraka(allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        assert self.binary is not None
        port = free_port()
        root = workdir / "haraka"
        r = run([self.binary, "-i", root], 120)
        if r.returncode:
            raise BenchError(f"haraka -i failed: {r.stderr[-500:]}")
        cfg = root / "config"
        # bench_count before queue/discard: it sees every queued message, then discard accepts it.
        (cfg / "plugins").write_text("rcpt_to.in_host_list\nbench_count\nqueue/discard\n")
        (cfg / "host_list").write_text("example.com\n")
        (cfg / "me").write_text("haraka.bench\n")
        (cfg / "smtp.ini").write_text(f"listen={LOOPBACK}:{port}\nnodes=0\n")
        (cfg / "log.ini").write_text("[main]\nlevel=warn\ntimestamps=false\n")
        # max bytes 0: no size limit, for the 50 MB message of the memory scenario.
        conn_ini = cfg / "connection.ini"
        text = conn_ini.read_text() if conn_ini.exists() else ""
        text = re.sub(r"(?m)^bytes\s*=.*$", "bytes=0", text) if "bytes=" in text else text
        conn_ini.write_text(text)
        shutil.copy(BENCH_DIR / "haraka_count.js", root / "plugins" / "bench_count.js")
        countfile = workdir / "count"
        env = dict(os.environ, YES_REALLY_DO_DISCARD="1", MQBENCH_COUNT_FILE=str(countfile))
        logf = open(workdir / "haraka.log", "wb")  # noqa: SIM115 - child keeps it
        p = reaper.popen("haraka", [self.binary, "-c", root], stdout=logf, env=env)
        logf.close()
        try:
            wait_smtp(port, timeout=60, proc=p)
        except BenchError as e:
            raise BenchError(f"{e}; log: {(workdir / 'haraka.log').read_text()[-800:]}") from None
        return Server(self.name, port, p.pid, workdir, counter=lambda: _read_int(countfile))


# --------------------------------------------------------------------------- Postfix

_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def write_postfix_config(conf: Path, root: Path, listen: str, hostname: str, routing: str,
                         services: str = "") -> None:
    """main.cf and master.cf of a private Postfix instance in ``conf``, with its queue and data
    directories (and its log, ``maillog``) under ``root``, listening on ``listen`` only and
    relaying for 127.0.0.0/8; ``routing`` adds the main.cf lines that say where mail goes, and
    ``services`` master.cf lines (transports of its own).
    The bench and the interop tests (tests/test_interop_postfix.py) both start Postfix this way."""
    (conf / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
{routing}"""
    )
    (conf / "master.cf").write_text(_MASTER_CF.format(listen=listen) + services)


class Postfix(Peer):
    """Postfix, durable (fsync before 250), in its own config/queue dir; never the system one.

    ``relay_port`` None: both transports are ``discard`` (acceptance only). Otherwise mail
    is relayed with smtp to ``[127.0.0.1]:relay_port`` (end to end).
    """

    name = "postfix"
    single_process = False  # one smtpd per connection, at most default_process_limit

    def __init__(self, relay_port: int | None = None) -> None:
        self.relay_port = relay_port

    def prepare(self, allow_install: bool) -> None:
        ensure_apt(["postfix", "smtp-source"], ["postfix", "swaks"], allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        port = free_port()
        conf = workdir / "postfix"
        # A second start on the same workdir keeps the queue (the drain scenario fills it first).
        conf.mkdir(exist_ok=True)
        # postfix-script wants both to exist; the data dir (locks, caches) belongs to postfix.
        (workdir / "queue").mkdir(exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        shutil.chown(workdir / "data", "postfix", "postfix")
        maillog = workdir / "maillog"
        routing, services = self.routing(conf)
        write_postfix_config(conf, workdir, f"{LOOPBACK}:{port}", "postfix.bench.invalid", routing, services)
        r = run(["postfix", "-c", conf, "start"], 120)
        if r.returncode:
            raise BenchError(f"postfix start failed: {(r.stdout + r.stderr)[-800:]}")
        reaper.on_stop("postfix", lambda: self._stop(conf, workdir))
        wait_smtp(port, timeout=30)
        pid = _read_int(workdir / "queue" / "pid" / "master.pid") or None

        def counter() -> int:
            try:
                text = maillog.read_text(errors="replace")
            except OSError:
                return 0
            return text.count("status=sent")

        return Server(self.name, port, pid, workdir, counter=counter, extra={"conf": conf})

    def routing(self, conf: Path) -> tuple[str, str]:
        """The main.cf lines that say where mail goes, and master.cf lines to add (a subclass may
        write more files into ``conf``)."""
        if self.relay_port is None:
            # relay_domains routes example.com through relay_transport, not default_transport.
            transport = "default_transport = discard\nrelay_transport = discard\n"
        else:
            transport = (
                "default_transport = smtp\nrelay_transport = relay\n"
                f"relayhost = [{LOOPBACK}]:{self.relay_port}\nsmtp_host_lookup = native\n"
            )
        return f"relay_domains = example.com\nmessage_size_limit = 0\n{transport}", ""

    @staticmethod
    def _stop(conf: Path, workdir: Path) -> None:
        run(["postfix", "-c", conf, "stop"], 60)
        pid = _read_int(workdir / "queue" / "pid" / "master.pid")
        if pid and not wait_for(lambda: not Path(f"/proc/{pid}").exists(), 15):
            # master.pid is the master we started in this run's own queue dir.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @staticmethod
    def queue_empty(server: Server) -> bool:
        r = run(["postqueue", "-c", server.extra["conf"], "-p"], 30)
        return "Mail queue is empty" in r.stdout


# --------------------------------------------------------------------------- mqmta


def _twistd() -> list[str]:
    # twistd of this interpreter: one first on PATH may belong to another Python, and
    # ``python -m twisted`` is ``twist``, which takes none of twistd's options (-n, --pidfile).
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def mqmta_env() -> dict[str, str]:
    """Environment for mqmta processes: the work tree first on sys.path.

    twistd finds ``twisted/plugins/mqmta_plugin.py`` only through sys.path, and an
    editable install does not always extend the ``twisted.plugins`` package path.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def _mqmta_cli() -> list[str]:
    exe = shutil.which("mqmta")
    return [exe] if exe else [sys.executable, "-m", "mqtwisted.cli"]


def parse_stats(text: str) -> dict[str, int]:
    """Per-queue counts from ``mqmta queue stats``, whether it prints JSON or ``name: N`` lines."""
    text = text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    out: dict[str, int] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, int):
                out[k] = v
            elif isinstance(v, dict):
                # e.g. {"outbox": {"ready": 3, "leased": 1}} or {"count": 4}
                n = v.get("count", v.get("total"))
                out[k] = (
                    n if isinstance(n, int) else sum(x for x in v.values() if isinstance(x, int))
                )
        return out
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z_][\w.-]*)\s*[:=]?\s+(\d+)\b", line) or re.match(
            r"\s*([A-Za-z_][\w.-]*)\s*[:=]\s*(\d+)\b", line
        )
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


class Mqmta(Peer):
    """mqmta itself, as a real ``twistd -n mqmta`` process with a fresh data dir."""

    name = "mqmta"
    #: options added to every mqmta side (``--mqmta-arg``), e.g. to try a tuning knob
    common_args: tuple[str, ...] = ()

    def __init__(
        self,
        label: str = "mqmta",
        delivery: bool = False,
        smarthost: str | None = None,
        plugin_dir: Path | None = None,
        queue_url: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = label
        self.delivery = delivery
        self.smarthost = smarthost
        self.plugin_dir = plugin_dir
        self.queue_url = queue_url
        self.extra_args = extra_args
        self.help_text = ""

    @staticmethod
    def probe() -> str:
        """``twistd mqmta --help`` text; raises Unavailable with the reason when it fails."""
        try:
            r = run([*_twistd(), "mqmta", "--help"], 60, cwd=REPO_DIR, env=mqmta_env())
        except subprocess.TimeoutExpired:
            raise Unavailable("twistd mqmta --help timed out") from None
        if r.returncode:
            tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
            raise Unavailable("twistd mqmta --help failed: " + " | ".join(tail))
        return r.stdout

    def require(self, *options: str) -> None:
        missing = [o for o in options if o not in self.help_text]
        if missing:
            raise Unavailable(f"twistd mqmta has no {', '.join(missing)} option yet")

    def prepare(self, allow_install: bool) -> None:
        self.help_text = self.probe()
        self.require("--data-dir", "--smtp-port")
        if self.delivery or self.smarthost:
            self.require("--delivery", "--smarthost")
        if self.plugin_dir is not None:
            self.require("--plugin-directory")
        if self.queue_url is not None:
            self.require("--queue")

    def argv(self, datadir: Path, port: int, www: int | None = None) -> list[str]:
        a = [
            *_twistd(),
            "-n",
            "--pidfile=",
            "mqmta",
            "--data-dir",
            str(datadir),
            "--smtp-port",
            str(port),
        ]
        if "--delivery" in self.help_text:
            a += ["--delivery", "on" if self.delivery else "off"]
        if self.smarthost:
            a += ["--smarthost", self.smarthost]
        if self.plugin_dir is not None:
            a += ["--plugin-directory", str(self.plugin_dir)]
        if self.queue_url is not None:
            a += ["--queue", self.queue_url]
        if "--www-port" in self.help_text:
            # A fresh port each round (the default would clash); empty: off.
            a += [f"--www-port={www or ''}"]
        return a + list(self.common_args) + list(self.extra_args)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        port = free_port()
        www = free_port() if "--www-port" in self.help_text else None
        datadir = workdir / "data"
        datadir.mkdir(exist_ok=True)  # the drain scenario fills its spool first
        logpath = workdir / "mqmta.log"
        logf = open(logpath, "wb")  # noqa: SIM115 - child keeps it
        p = reaper.popen(
            self.name, self.argv(datadir, port, www), stdout=logf, cwd=REPO_DIR, env=mqmta_env()
        )
        logf.close()
        try:
            wait_smtp(port, timeout=60, proc=p)
        except BenchError as e:
            raise BenchError(f"{e}; log: {logpath.read_text(errors='replace')[-800:]}") from None
        server = Server(self.name, port, p.pid, workdir,
                        extra={"datadir": datadir, "log": logpath, "www": www})
        # ``queue stats --data-dir`` as documented; ``queue --data-dir .. stats`` as argparse
        # subcommands actually parse it today. The first that works is kept.
        tail = ["--data-dir", str(datadir)]
        if self.queue_url is not None:
            tail += ["--queue", self.queue_url]
        errors = []
        for argv in (
            [*_mqmta_cli(), "queue", "stats", *tail],
            [*_mqmta_cli(), "queue", *tail, "stats"],
        ):
            server.extra["stats_argv"] = argv
            try:
                self.stats(server)
            except BenchError as e:
                errors.append(str(e))
                continue
            server.counter = lambda: self.stats(server).get("outbox", 0)
            return server
        server.unverified = "; ".join(errors)
        return server

    @staticmethod
    def stats(server: Server) -> dict[str, int]:
        """Per-queue counts from ``/status`` (as fast to ask as Postfix's ``postqueue -p``),
        else from ``mqmta queue stats`` (a Python start-up per call, about half a second);
        raises BenchError when neither answers."""
        www = server.extra.get("www")
        if www:
            import json
            import urllib.request

            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{www}/status", timeout=30) as r:
                    return {str(k): int(v) for k, v in json.load(r)["queues"].items()}
            except (OSError, ValueError, KeyError, TypeError):
                pass  # no web port after all, or an older build: ask the CLI
        try:
            r = run(server.extra["stats_argv"], 60, cwd=REPO_DIR, env=mqmta_env())
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"mqmta queue stats: {e!r}") from None
        if r.returncode:
            tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["(no output)"]
            raise BenchError(f"mqmta queue stats failed: {tail[0]}")
        parsed = parse_stats(r.stdout)
        # Empty output is a valid answer (no queue declared yet on a fresh broker vhost).
        if not parsed and r.stdout.strip():
            raise BenchError(f"mqmta queue stats printed nothing parsable: {r.stdout[:200]!r}")
        return parsed


def wait_count(server: Server, expected: int, timeout: float = 30.0) -> tuple[int | None, bool]:
    """Wait until ``server`` counted ``expected`` messages; returns (count, verified).

    Counts lag the 250 by a little (log writers, counters flushed on a timer), hence the wait.
    """
    if server.unverified or server.counter is None:
        return None, False
    last = [0]

    def done() -> bool:
        last[0] = server.count() or 0
        return last[0] >= expected

    wait_for(done, timeout, 0.2)
    return last[0], last[0] == expected


def now() -> float:
    return time.monotonic()


__all__ = [
    "Aiosmtpd",
    "BareTwisted",
    "Haraka",
    "Mqmta",
    "Peer",
    "Postfix",
    "Server",
    "SmtpSink",
    "log",
    "now",
    "parse_stats",
    "wait_count",
]


class MqmtaC(Mqmta):
    """mqmta with C plugins: every ``*.c`` in ``sources`` compiled with ``cc`` into a fresh plugin
    directory when the side is prepared (unavailable without a compiler)."""

    def __init__(self, label: str, sources: Path) -> None:
        super().__init__(label=label)
        self.sources = sources

    def prepare(self, allow_install: bool) -> None:
        cc = shutil.which(os.environ.get("CC", "cc"))
        if cc is None:
            raise Unavailable("no C compiler (cc) to build the C plugin")
        out = Path(tempfile.mkdtemp(prefix="mqbench-cplugins-"))
        for source in sorted(self.sources.glob("*.c")):
            target = out / f"{source.stem}.so"
            argv = [cc, "-shared", "-fPIC", "-O2", "-I", REPO_DIR / "mqtwisted" / "include", "-o", target, source]
            r = run(argv, 120)
            if r.returncode:
                raise Unavailable(f"cc {source.name} failed: {r.stderr.strip()[-300:]}")
        self.plugin_dir = out
        super().prepare(allow_install)
