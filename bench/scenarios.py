"""The scenarios (7 and 8, traffic shaping, are in :mod:`bench.farm_scenarios`). Each records
into a :class:`Results`, and never raises for one side.

Every round starts each side fresh (new scratch dir, new process), runs the same
bounded load, checks the side's own count of accepted messages, and stops it. The
order of the sides is reversed every other round, so drift on a shared machine
(noisy neighbours, page cache, thermal) does not always favour the same side.
"""

from __future__ import annotations

import contextlib
import selectors
import smtplib
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import (
    Aiosmtpd,
    BareTwisted,
    Haraka,
    Mqmta,
    MqmtaC,
    Peer,
    Postfix,
    Server,
    SmtpSink,
    wait_count,
)
from bench.proc import (
    BENCH_DIR,
    LOOPBACK,
    BenchError,
    Reaper,
    Unavailable,
    log,
    port_open,
    proc_status,
    reset_peak_rss,
    rss,
    run,
    scratch_dir,
    wait_for,
)

MQMTA = "mqmta"
MB = 1024 * 1024
STALL = 60.0  # seconds without progress after which a relay load is declared stuck


# --------------------------------------------------------------------------- results


@dataclass
class Series:
    """One (scenario, case, side) cell: the value of every round, and why any failed."""

    unit: str
    lower_is_better: bool = True
    values: list[float] = field(default_factory=list)
    verified: list[bool | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class ScenarioResult:
    name: str
    title: str
    status: str = "ok"  # ok | not available | error
    reason: str = ""
    reference: str = MQMTA  # the side every ratio puts in the numerator
    cases: dict[str, dict[str, Series]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # side -> why

    def series(self, case: str, side: str, unit: str) -> Series:
        return self.cases.setdefault(case, {}).setdefault(side, Series(unit))

    def ratios(self) -> dict[str, dict[str, float]]:
        """reference median / each other side's median, per case (below 1: reference is better)."""
        out: dict[str, dict[str, float]] = {}
        for case, sides in self.cases.items():
            ref = sides.get(self.reference)
            if ref is None or not ref.median:
                continue
            for side, s in sides.items():
                if side != self.reference and s.median:
                    out.setdefault(case, {})[side] = ref.median / s.median
        return out


class Options:
    """What the command line chose; scenarios read only this."""

    def __init__(
        self,
        rounds: int = 3,
        messages: int = 5000,
        sessions: int = 10,
        timeout: float = 600.0,
        allow_install: bool = True,
        peers: Sequence[str] | None = None,
        idle_connections: int = 5000,
        big_message_mb: int = 50,
        amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
    ) -> None:
        self.rounds = rounds
        self.messages = messages
        self.sessions = sessions
        self.timeout = timeout
        self.allow_install = allow_install
        self.peers = set(peers) if peers else None
        self.idle_connections = idle_connections
        self.big_message_mb = big_message_mb
        self.amqp_url = amqp_url


# --------------------------------------------------------------------------- helpers


def prepare_sides(sides: Sequence[Peer], opts: Options, res: ScenarioResult) -> list[Peer]:
    """Install/locate each side; the ones that cannot run are recorded, not fatal."""
    ready = []
    for side in sides:
        if (
            opts.peers is not None
            and side.name not in opts.peers
            and not side.name.startswith(MQMTA)
        ):
            continue
        try:
            side.prepare(opts.allow_install)
            ready.append(side)
        except (Unavailable, BenchError, subprocess.SubprocessError, OSError) as e:
            log(f"{res.name}: {side.name} not available: {e}")
            res.unavailable[side.name] = str(e)
    return ready


def smtp_source(server: Server, opts: Options, size: int, count: int | None = None,
                recipients: int = 1) -> float:
    """Time one bounded ``smtp-source`` run against ``server``; raises if it fails.
    ``recipients`` > 1: ``count`` messages each for that many recipients (``-r``)."""
    n = count or opts.messages
    argv = [
        "smtp-source", "-s", str(opts.sessions), "-m", str(n), "-l", str(size),
        "-f", "a@example.com", "-t", "b@example.com", f"{LOOPBACK}:{server.port}",
    ]  # fmt: skip
    if recipients > 1:
        argv[1:1] = ["-r", str(recipients)]
    t0 = time.monotonic()
    try:
        r = run(argv, opts.timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source did not finish within {opts.timeout}s") from None
    elapsed = time.monotonic() - t0
    if r.returncode:
        raise BenchError(
            f"smtp-source exited {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"
        )
    return elapsed


Measure = Callable[[Peer, Server, Path], dict[str, tuple[float, bool | None, str]]]


def round_robin(
    res: ScenarioResult,
    sides: Sequence[Peer],
    opts: Options,
    units: dict[str, str],
    measure: Measure,
) -> None:
    """Run ``measure`` once per side per round on a fresh server, alternating the order.

    ``measure`` returns {case: (value, verified, note)}; verified False means the side
    lost messages, so the value is not a measurement of the load and is left out of the
    median (the error is kept and printed).
    """
    for case in units:
        res.cases.setdefault(case, {})
    for rnd in range(opts.rounds):
        order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
        for side in order:
            log(f"{res.name} round {rnd + 1}/{opts.rounds}: {side.name}")
            reaper = Reaper()
            with scratch_dir(side.name.replace("+", "-")) as workdir:
                try:
                    server = side.start(reaper, workdir)
                    for case, (value, verified, note) in measure(side, server, workdir).items():
                        s = res.series(case, side.name, units[case])
                        s.verified.append(verified)
                        if verified is False:
                            s.errors.append(f"round {rnd + 1}: {note}")
                        else:
                            s.values.append(value)
                            if note and note not in s.notes:
                                s.notes.append(note)
                except (
                    BenchError,
                    subprocess.SubprocessError,
                    OSError,
                    smtplib.SMTPException,
                ) as e:
                    log(f"{res.name}: {side.name} round {rnd + 1} failed: {e}")
                    for case, unit in units.items():
                        res.series(case, side.name, unit).errors.append(f"round {rnd + 1}: {e}")
                finally:
                    reaper.stop_all()


def verify(server: Server, expected: int) -> tuple[bool | None, str]:
    """(verified, note) from the server's own count: None when it has no way to count."""
    if server.unverified:
        return None, f"unverified: {server.unverified}"
    count, ok = wait_count(server, expected)
    if count is None:
        return None, "unverified: no counter"
    return ok, "" if ok else f"accepted {count} of {expected}"


def not_available(res: ScenarioResult, reason: str) -> ScenarioResult:
    res.status = "not available"
    res.reason = reason
    log(f"{res.name}: not available: {reason}")
    return res


# --------------------------------------------------------------------------- 1 inbound

INBOUND_SIZES = (2000, 100000)


def inbound_peers(opts: Options) -> list[Peer]:
    return [SmtpSink(), Postfix(), Aiosmtpd(), Haraka(), BareTwisted(), Mqmta()]


def scenario_inbound(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "inbound",
        f"1 inbound: smtp-source -s {opts.sessions} -m {opts.messages} -l SIZE, seconds",
    )
    sides = prepare_sides(inbound_peers(opts), opts, res)
    if not sides:
        return not_available(res, "no side could be prepared")

    def body(
        side: Peer, server: Server, workdir: Path
    ) -> dict[str, tuple[float, bool | None, str]]:
        out = {}
        for i, size in enumerate(INBOUND_SIZES):
            t = smtp_source(server, opts, size)
            ok, note = verify(server, opts.messages * (i + 1))  # counters are cumulative
            out[f"-l {size}"] = (t, ok, note)
        return out

    round_robin(res, sides, opts, {f"-l {s}": "s" for s in INBOUND_SIZES}, body)
    return res


# --------------------------------------------------------------------------- 2 plugins


def scenario_plugins(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "plugins",
        "2 plugins: mqmta with a plugin defining all eight in-hooks (Python; the same in C) vs none, "
        "-l 2000, seconds",
        reference="mqmta+allhooks",
    )
    plain = Mqmta()
    hooked = Mqmta(label="mqmta+allhooks", plugin_dir=BENCH_DIR / "plugins_allhooks")
    hooked_c = MqmtaC("mqmta+allhooks-c", BENCH_DIR / "plugins_allhooks_c")
    sides = prepare_sides([plain, hooked, hooked_c], opts, res)
    if hooked not in sides:
        return not_available(res, res.unavailable.get(hooked.name, "mqmta not available"))

    return accept_2000(res, sides, opts)


def accept_2000(res: ScenarioResult, sides: list[Peer], opts: Options) -> ScenarioResult:
    """The plain inbound load, ``-l 2000``, verified, on every side (plugins and amqp use it)."""

    def body(
        side: Peer, server: Server, workdir: Path
    ) -> dict[str, tuple[float, bool | None, str]]:
        t = smtp_source(server, opts, 2000)
        ok, note = verify(server, opts.messages)
        return {"-l 2000": (t, ok, note)}

    round_robin(res, sides, opts, {"-l 2000": "s"}, body)
    return res


# --------------------------------------------------------------------------- 3 end to end


class Relaying(Peer):
    """A side that relays to a fresh smtp-sink it starts first, in the same round."""

    def __init__(self, inner: Peer, dump: bool = False) -> None:
        self.inner = inner
        self.name = inner.name
        self.sink = SmtpSink(dump=dump)

    def prepare(self, allow_install: bool) -> None:
        self.sink.prepare(allow_install)
        self.inner.prepare(allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        (workdir / "sink").mkdir()
        (workdir / "mta").mkdir()
        sink = self.sink.start(reaper, workdir / "sink")
        if isinstance(self.inner, Postfix):
            self.inner.relay_port = sink.port
        elif isinstance(self.inner, Mqmta):
            self.inner.smarthost = f"{LOOPBACK}:{sink.port}"
        server = self.inner.start(reaper, workdir / "mta")
        server.extra["sink"] = sink
        return server


def scenario_e2e(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "e2e",
        f"3 end to end: {opts.messages} messages accepted and relayed to smtp-sink, seconds",
    )
    # mqmta as deployed on a multi-core machine: delivery in a worker process of its own (as
    # Postfix's smtp runs apart from its smtpd); "mqmta-1proc" is everything in one process.
    mq = Relaying(Mqmta(delivery=True, smarthost="127.0.0.1:1", extra_args=("--delivery-processes=1",)))
    one = Relaying(Mqmta("mqmta-1proc", delivery=True, smarthost="127.0.0.1:1"))
    pf = Relaying(Postfix(relay_port=1))
    sides = prepare_sides([mq, one, pf], opts, res)
    if mq not in sides:
        return not_available(res, res.unavailable.get(mq.name, "mqmta not available"))
    round_robin(res, sides, opts, {"accept": "s", "accept+relay": "s"}, relay_measure(opts))
    return res


def relay_measure(opts: Options, recipients: int = 1) -> Measure:
    """The end-to-end load on one side: ``accept`` (smtp-source's time) and ``accept+relay``
    (until the sink counted every message and the queue is empty).  ``recipients`` > 1: the
    same number of deliveries as messages of that many recipients each."""
    n = opts.messages

    def body(
        side: Peer, server: Server, workdir: Path
    ) -> dict[str, tuple[float, bool | None, str]]:
        sink: Server = server.extra["sink"]
        t0 = time.monotonic()
        accept = smtp_source(server, opts, 2000, max(1, n // recipients), recipients)
        if isinstance(side, Relaying) and isinstance(side.inner, Postfix):

            def drained() -> bool:
                return (sink.count() or 0) >= n and Postfix.queue_empty(server)

            note_fn: Callable[[], str] = lambda: ""  # noqa: E731
        else:
            last: dict[str, int] = {}

            def drained() -> bool:
                if (sink.count() or 0) < n:
                    return False
                if server.unverified:
                    return True  # no stats command: the sink's count is all we have
                stats = Mqmta.stats(server)
                last.clear()  # an emptied queue is absent from the counts: keep none from before
                last.update(stats)
                return last.get("outbox", 0) == 0 and last.get("success", 0) >= n

            def note_fn() -> str:
                return f"queues at the end: {last}" if last else ""

        # Give up early when relaying stalls (nothing reached the sink for STALL seconds):
        # a stuck delivery should cost a minute, not the whole --timeout.
        progress = {"count": -1, "at": time.monotonic()}

        def drained_or_stalled() -> bool:
            got = sink.count() or 0
            if got != progress["count"]:
                progress.update(count=got, at=time.monotonic())
            return drained() or time.monotonic() - progress["at"] > STALL

        # Every 50 ms: the poll's granularity is part of each side's time.  Only the sink's counter
        # (the tail of a file) is read that often; the queue is asked once the sink has it all.
        wait_for(drained_or_stalled, opts.timeout, 0.05)
        done = drained()
        total = time.monotonic() - t0
        got = sink.count() or 0
        if not done:
            return {
                "accept": (accept, None, ""),
                "accept+relay": (
                    total,
                    False,
                    f"not drained after {total:.0f}s: sink got {got} of {n} {note_fn()}",
                ),
            }
        ok = got == n
        return {
            "accept": (accept, None if server.unverified else True, ""),
            "accept+relay": (total, ok, note_fn() if ok else f"sink got {got} of {n}"),
        }

    return body


# --------------------------------------------------------------------------- 6 DKIM signing


class _SigningMqmta(Mqmta):
    """mqmta with ``--dkim-keys``: a fresh RSA-2048 key each round for example.com, the domain of
    smtp-source's ``From:`` header (``a@example.com``)."""

    def __init__(self, label: str, **kw: object) -> None:
        super().__init__(label, **kw)  # type: ignore[arg-type]
        self.base_args = self.extra_args

    def prepare(self, allow_install: bool) -> None:
        super().prepare(allow_install)
        self.require("--dkim-keys")
        if not _has("openssl"):
            raise Unavailable("openssl is needed to make the RSA key")

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        key = workdir / "example.com.bench.pem"
        r = run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(key)], 60)
        if r.returncode:
            raise BenchError(f"openssl genpkey failed: {(r.stdout + r.stderr).strip()[-300:]}")
        keys = workdir / "dkim-keys.toml"
        keys.write_text(f'[[key]]\ndomain = "example.com"\nselector = "bench"\nfile = "{key.name}"\n')
        self.extra_args = (*self.base_args, f"--dkim-keys={keys}")
        return super().start(reaper, workdir)


def _signatures(sink: Server) -> int:
    try:
        return (sink.workdir / "dump").read_bytes().count(b"\nDKIM-Signature: ")
    except OSError:
        return -1


def scenario_dkim(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "dkim",
        f"6 dkim: {opts.messages} messages accepted and relayed, RSA-2048 signing vs none, seconds",
        reference="mqmta+dkim",
    )
    workers = ("--delivery-processes=1",)
    plain = Relaying(Mqmta(delivery=True, smarthost="127.0.0.1:1", extra_args=workers), dump=True)
    signing = Relaying(_SigningMqmta("mqmta+dkim", delivery=True, smarthost="127.0.0.1:1",
                                      extra_args=workers), dump=True)
    sides = prepare_sides([plain, signing], opts, res)
    if signing not in sides:
        return not_available(res, res.unavailable.get(signing.name, "mqmta not available"))
    def checked(recipients: int) -> Measure:
        relay = relay_measure(opts, recipients)

        def body(side: Peer, server: Server, workdir: Path) -> dict[str, tuple[float, bool | None, str]]:
            out = relay(side, server, workdir)
            # Each message arrived signed (the RSA side) or not (the other): the sink's dump says.
            sink: Server = server.extra["sink"]
            want = opts.messages if side is signing else 0
            wait_for(lambda: _signatures(sink) >= want, 10, 0.1)
            found = _signatures(sink)
            if found != want:
                total, _, _ = out["accept+relay"]
                out["accept+relay"] = (total, False, f"{found} of {opts.messages} delivered signed, expected {want}")
            return out

        return body

    # Distinct messages (each signed), then a campaign: messages of 100 recipients (each signed once).
    round_robin(res, sides, opts, {"accept": "s", "accept+relay": "s"}, checked(1))
    campaign = {f"{case} ({CAMPAIGN} rcpt/msg)": value for case, value in (("accept", "s"), ("accept+relay", "s"))}

    def campaign_body(side: Peer, server: Server, workdir: Path) -> dict[str, tuple[float, bool | None, str]]:
        return {f"{case} ({CAMPAIGN} rcpt/msg)": v for case, v in checked(CAMPAIGN)(side, server, workdir).items()}

    round_robin(res, sides, opts, campaign, campaign_body)
    return res


#: recipients per message in the campaign case of the dkim scenario
CAMPAIGN = 100


# --------------------------------------------------------------------------- 4 memory


class RssSampler:
    """Peak RSS of a pid while a load runs: VmHWM when it can be reset, else sampled."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.hwm_reset = False

    def __enter__(self) -> RssSampler:
        self.hwm_reset = reset_peak_rss(self.pid)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, rss(self.pid))
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset:
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, proc_status(self.pid)["VmHWM"])


def send_one(port: int, size: int, timeout: float) -> None:
    """One message of about ``size`` bytes, with 78-octet lines, over smtplib."""
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, size // len(line))
    msg = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + body
    with smtplib.SMTP(LOOPBACK, port, local_hostname="bench.client", timeout=timeout) as c:
        c.sendmail("a@example.com", ["b@example.com"], msg)


def open_idle(port: int, n: int, timeout: float) -> list[socket.socket]:
    """Open ``n`` connections and wait for each one's 220 greeting: the server really holds them.

    Small batches, each greeted before the next is opened, keep the server's listen backlog
    from overflowing: Twisted's default backlog is 50, and connections beyond it are lost or
    wait for retransmits, which would measure the backlog, not the memory.
    """
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    try:
        batch = 25
        while len(socks) < n:
            pending: dict[socket.socket, bytes] = {}
            for _ in range(min(batch, n - len(socks))):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((LOOPBACK, port))
                socks.append(s)
                pending[s] = b""
                sel.register(s, selectors.EVENT_READ)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"only {len(socks) - len(pending)} of {n} connections greeted")
                for key, _ in sel.select(min(left, 1.0)):
                    s = key.fileobj  # type: ignore[assignment]
                    try:
                        data = s.recv(512)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        raise BenchError(f"connection {len(socks)} failed: {e}") from None
                    if not data:
                        raise BenchError(
                            f"server closed connection after {len(socks) - len(pending)}"
                        )
                    pending[s] += data
                    if b"\n" in pending[s]:
                        if not pending[s].startswith(b"220"):
                            raise BenchError(f"connection refused by server: {pending[s][:80]!r}")
                        sel.unregister(s)
                        del pending[s]
    except BaseException:
        close_all(socks)
        raise
    finally:
        sel.close()
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def memory_peers(opts: Options) -> list[Peer]:
    # mqmta limits connections (1000 total, 50 per IP) and size (25 MB) by default; the
    # peers have no such limits, so lift them for a like-for-like memory figure.
    mq = Mqmta(
        extra_args=("--smtp-connections=0", "--smtp-connections-per-ip=0", "--smtp-maxsize=0"),
    )
    # Postfix is left out: one smtpd process per connection (at most 100 by default),
    # so "RSS of the server process" has no comparable meaning there.
    return [SmtpSink(), Aiosmtpd(), Haraka(), BareTwisted(), mq]


def scenario_memory(opts: Options) -> ScenarioResult:
    n = opts.idle_connections
    res = ScenarioResult(
        "memory", f"4 memory: RSS of the server process ({n} idle, {opts.big_message_mb} MB)"
    )
    res.unavailable["postfix"] = (
        "one smtpd process per connection: no single process RSS to compare"
    )
    sides = prepare_sides(memory_peers(opts), opts, res)
    idle_case = f"RSS per idle connection ({n})"
    total_case = f"RSS with {n} idle connections"
    big_case = f"RSS growth, one {opts.big_message_mb} MB message"

    def body(
        side: Peer, server: Server, workdir: Path
    ) -> dict[str, tuple[float, bool | None, str]]:
        out: dict[str, tuple[float, bool | None, str]] = {}
        # Idle connections on this server...
        try:
            out.update(idle(server))
        except (BenchError, OSError, smtplib.SMTPException) as e:
            out[idle_case] = out[total_case] = (0.0, False, str(e))
        # ...the big message on a second fresh one: memory freed by the closed connections
        # would otherwise be reused and hide part of the growth.
        reaper = Reaper()
        (workdir / "big").mkdir()
        try:
            out.update(big_message(side.start(reaper, workdir / "big")))
        except (BenchError, OSError, smtplib.SMTPException) as e:
            out[big_case] = (0.0, False, str(e))
        finally:
            reaper.stop_all()
        return out

    def warm(server: Server) -> tuple[int, bool | None, str]:
        """One small message first (imports, first-session allocations), then the baseline."""
        assert server.pid is not None
        send_one(server.port, 2000, 30)
        ok, note = verify(server, 1)
        time.sleep(0.5)
        return rss(server.pid), ok, note

    def idle(server: Server) -> dict[str, tuple[float, bool | None, str]]:
        assert server.pid is not None
        base, ok, note = warm(server)
        socks = open_idle(server.port, n, min(opts.timeout, 300))
        try:
            time.sleep(1.0)  # let the server finish per-connection set-up after the greeting
            held = rss(server.pid)
        finally:
            close_all(socks)
        return {idle_case: ((held - base) / n / 1024, ok, note), total_case: (held / MB, ok, note)}

    def big_message(server: Server) -> dict[str, tuple[float, bool | None, str]]:
        assert server.pid is not None
        base, _, _ = warm(server)
        with RssSampler(server.pid) as sampler:
            send_one(server.port, opts.big_message_mb * MB, opts.timeout)
        ok, note = verify(server, 2)
        growth = max(0, sampler.peak - base)
        how = "" if sampler.hwm_reset else "peak sampled every 5 ms"
        return {big_case: (growth / MB, ok, note or how)}

    round_robin(res, sides, opts, {idle_case: "kB", total_case: "MB", big_case: "MB"}, body)
    return res


# --------------------------------------------------------------------------- 5 amqp


def _vhost(url: str) -> tuple[str, Callable[[], None]]:
    """A fresh vhost on the broker for this round, so queues of other users or rounds don't mix.

    Falls back to the URL as given when rabbitmqctl is not usable here.
    """
    from urllib.parse import quote, urlsplit, urlunsplit

    name = f"mqbench-{int(time.time() * 1000)}"
    try:
        r = run(["rabbitmqctl", "add_vhost", name], 60) if _has("rabbitmqctl") else None
    except (OSError, subprocess.SubprocessError):
        r = None
    if r is None or r.returncode:
        log("rabbitmqctl add_vhost failed: using the URL's own vhost")
        return url, lambda: None
    parts = urlsplit(url)
    user = parts.username or "guest"
    run(["rabbitmqctl", "set_permissions", "-p", name, user, ".*", ".*", ".*"], 60)

    def drop() -> None:
        run(["rabbitmqctl", "delete_vhost", name], 60)

    return urlunsplit(parts._replace(path="/" + quote(name, safe=""))), drop


def _has(binary: str) -> bool:
    import shutil

    return shutil.which(binary) is not None or Path("/usr/sbin", binary).exists()


class AmqpMqmta(Mqmta):
    """mqmta on the broker, each round in its own vhost."""

    def __init__(self, label: str, base_url: str, **kwargs: Any) -> None:
        super().__init__(label=label, queue_url=base_url, **kwargs)
        self.base_url = base_url

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        url, drop = _vhost(self.base_url)
        reaper.on_stop("vhost", drop)
        self.queue_url = url
        server = super().start(reaper, workdir)
        if url != self.base_url:
            # ``mqmta queue stats`` may not count broker queues (it printed nothing for them
            # when this was written): the broker's own count is the independent check then.
            vhost = url.rsplit("/", 1)[1]
            stats_counter = server.counter

            def counter() -> int:
                if stats_counter is not None:
                    n = stats_counter()  # type: ignore[operator]
                    if n:
                        return n
                return _broker_count(vhost, "outbox")

            server.counter = counter
            server.unverified = None
        return server


def _broker_count(vhost: str, queue: str) -> int:
    r = run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"], 60)
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue and parts[1].isdigit():
            return int(parts[1])
    return 0


def scenario_amqp(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "amqp",
        "5 amqp: mqmta inbound on RabbitMQ vs the spool, -l 2000, seconds",
        reference="mqmta-amqp",
    )
    spool = Mqmta(label="mqmta-spool")
    amqp = AmqpMqmta("mqmta-amqp", opts.amqp_url)
    host_port = opts.amqp_url.split("@")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        return not_available(res, f"broker {host} is not on loopback")
    if not port_open(int(port or 5672), host if host != "localhost" else LOOPBACK):
        return not_available(
            res, f"no AMQP broker listening on {host_port} (start rabbitmq-server)"
        )
    sides = prepare_sides([spool, amqp], opts, res)
    if amqp not in sides:
        return not_available(res, res.unavailable.get(amqp.name, "mqmta not available"))

    return accept_2000(res, sides, opts)


def scenario_farm(opts: Options) -> ScenarioResult:
    from bench.farm_scenarios import scenario_farm as farm  # it builds on this module

    return farm(opts)


def scenario_e2e_shaping(opts: Options) -> ScenarioResult:
    from bench.farm_scenarios import scenario_e2e_shaping as e2e_shaping

    return e2e_shaping(opts)


def scenario_milter(opts: Options) -> ScenarioResult:
    from bench.milters import milter_sides

    res = ScenarioResult("milter", "9 milter: inbound through rspamd as a milter, -l 2000, seconds")
    sides = prepare_sides(milter_sides(), opts, res)
    if len(sides) < 2:
        return not_available(res, "; ".join(res.unavailable.values()) or "a side could not be prepared")
    return accept_2000(res, sides, opts)


SCENARIOS: dict[str, Callable[[Options], ScenarioResult]] = {
    "inbound": scenario_inbound,
    "plugins": scenario_plugins,
    "e2e": scenario_e2e,
    "memory": scenario_memory,
    "amqp": scenario_amqp,
    "dkim": scenario_dkim,
    "farm": scenario_farm,
    "e2e-shaping": scenario_e2e_shaping,
    "milter": scenario_milter,
}

