"""Scenarios 7 and 8: traffic shaping.

``farm``: the receiver farm of :mod:`bench.farm` (served by a process of its own, fresh each round)
gets the farm's load from mqmta with the farm's shaping file and from Postfix with the equivalent
per-destination limits; each side's time until every deliverable message has arrived, and the
violations the receivers saw.

``e2e-shaping``: the end-to-end load delivered by MX (a DNS zone from the farm process) to a fresh
smtp-sink, by mqmta with a 1,000-domain shaping file against mqmta without one: the cost of shaping.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.farm import FARM, SHAPING, limit_violations, plan
from bench.farm import inject as inject_farm
from bench.peers import Mqmta, Peer, Postfix, Server, SmtpSink
from bench.proc import REPO_DIR, BenchError, Reaper, log, wait_for
from bench.scenarios import (
    STALL,
    Measure,
    Options,
    ScenarioResult,
    not_available,
    prepare_sides,
    relay_measure,
    round_robin,
)

#: every mqmta side: one process (the default; a delivery worker process is --delivery-processes=1),
#: and smtp-source's many sessions from one address allowed
WORKERS = ("--smtp-connections-per-ip=0",)


class FarmProcess:
    """``python -m bench.farm DIR [BULK]``: the farm's receivers and DNS zone."""

    def __init__(self, reaper: Reaper, workdir: Path, bulk: int = 0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        logf = open(workdir / "farm.log", "wb")  # noqa: SIM115 - child keeps it
        self.proc = reaper.popen("farm", [sys.executable, "-m", "bench.farm", workdir, str(bulk)],
                                 stdout=logf, cwd=REPO_DIR)
        logf.close()
        ready = workdir / "farm.json"
        if not wait_for(lambda: ready.exists() or self.proc.poll() is not None, 60, 0.05) or not ready.exists():
            raise BenchError(f"the farm did not start: {(workdir / 'farm.log').read_text(errors='replace')[-800:]}")
        ports = json.loads(ready.read_text())
        self.port: int = ports["port"]
        self.dns_port: int = ports["dns_port"]

    def _read(self) -> dict:
        try:
            return json.loads((self.workdir / "stats.json").read_text())
        except (OSError, ValueError):
            return {}

    def stats(self) -> dict:
        """What each receiver saw, by name."""
        return self._read().get("receivers", {})

    def dns_queries(self) -> int:
        return self._read().get("dns_queries", 0)


# --------------------------------------------------------------------------- 7 farm

#: Postfix cannot space deliveries by less than a second (``*_destination_rate_delay`` takes
#: whole seconds): the nearest setting that keeps count.test under its 50 per second is 1 s.
POSTFIX_LIMITS = {
    "conc": ("destination_concurrency_limit = 2",),
    "count": ("destination_rate_delay = 1s",),
    "suspend": ("destination_concurrency_limit = 1",),
}
#: limit.test's 20 messages per connection: a connection is used up to N+1 times
POSTFIX_OPTIONS = {"limit": "  -o smtp_connection_reuse_count_limit=19\n"}


class FarmPostfix(Postfix):
    """Postfix delivering to the farm: a transport of its own per receiver (``transport_maps`` to
    its address and the farm's port) with the farm's limits where Postfix can say them; retries
    after 1-2 s."""

    name = "postfix"

    def __init__(self) -> None:
        super().__init__(relay_port=1)
        self.farm_port = 0

    def routing(self, conf: Path) -> tuple[str, str]:
        lines = [f"{domain} farm{spec.name}:[{spec.address}]:{self.farm_port}" for spec in FARM for domain in spec.domains]
        (conf / "transport").write_text("\n".join(lines) + "\n")
        domains = " ".join(d for spec in FARM for d in spec.domains)
        main = [
            f"relay_domains = {domains}", "message_size_limit = 0",
            f"transport_maps = texthash:{conf}/transport", "default_transport = smtp", "relay_transport = relay",
            # [default] of the shaping file: at most 4 connections per destination, idle 2 s
            "default_destination_concurrency_limit = 4", "smtp_connection_cache_time_limit = 2s",
            "queue_run_delay = 1s", "minimal_backoff_time = 1s", "maximal_backoff_time = 2s",
            # a message waiting for count.test's rate delay must not expire (10 s bounced 717 of them)
            "maximal_queue_lifetime = 1h", "bounce_queue_lifetime = 1h",
        ]
        for name, settings in POSTFIX_LIMITS.items():
            main += [f"farm{name}_{setting}" for setting in settings]
        services = "".join(
            f"farm{spec.name} unix - - n - - smtp\n{POSTFIX_OPTIONS.get(spec.name, '')}" for spec in FARM
        )
        return "\n".join(main) + "\n", services


class FarmMqmta(Mqmta):
    """mqmta with the farm's shaping file, by the farm's MX records;
    retries every second; down.test's messages say ``maxattempts`` 3."""

    def __init__(self) -> None:
        super().__init__("mqmta", delivery=True, extra_args=WORKERS)
        self.base_args = self.extra_args

    def prepare(self, allow_install: bool) -> None:
        super().prepare(allow_install)
        self.require("--shaping", "--dns-server", "--delivery-port")

    def configure(self, farm: FarmProcess, workdir: Path) -> None:
        shaping = workdir / "shaping.toml"
        shaping.write_text(SHAPING)
        self.extra_args = (*self.base_args, f"--dns-server=127.0.0.1:{farm.dns_port}",
                           f"--delivery-port={farm.port}", f"--shaping={shaping}", "--retry-interval=1")


class _Farmed(Peer):
    """A side that delivers to a fresh farm it starts first, in the same round."""

    def __init__(self, inner: FarmMqmta | FarmPostfix) -> None:
        self.inner = inner
        self.name = inner.name

    def prepare(self, allow_install: bool) -> None:
        SmtpSink().prepare(allow_install)  # smtp-source
        self.inner.prepare(allow_install)

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        farm = FarmProcess(reaper, workdir / "farm")
        if isinstance(self.inner, FarmPostfix):
            self.inner.farm_port = farm.port
        else:
            self.inner.configure(farm, workdir)
        (workdir / "mta").mkdir()
        server = self.inner.start(reaper, workdir / "mta")
        server.extra["farm"] = farm
        return server


def farm_measure(opts: Options) -> Measure:
    batches = plan(opts.messages)
    down = sum(b.count for b in batches if b.domain == "down.test")
    deliverable = opts.messages - down

    def body(side: Peer, server: Server, workdir: Path) -> dict[str, tuple[float, bool | None, str]]:
        farm: FarmProcess = server.extra["farm"]
        load = workdir / "load"
        load.mkdir()
        t0 = time.monotonic()
        inject_farm(server.port, batches, str(load), timeout=opts.timeout)
        log(f"farm: {side.name} took the load in {time.monotonic() - t0:.1f}s")

        def accepted() -> int:
            return sum(s["accepted"] for name, s in farm.stats().items() if name != "dsn")

        def done() -> bool:
            # Until every deliverable message arrived; the down host's bounces are not timed
            # (Postfix gives up on a queue lifetime that has to outlast count.test's rate delay).
            return accepted() >= deliverable

        progress = {"count": -1, "at": time.monotonic()}

        def done_or_stalled() -> bool:
            got = accepted()
            if got != progress["count"]:
                progress.update(count=got, at=time.monotonic())
            return done() or time.monotonic() - progress["at"] > STALL

        wait_for(done_or_stalled, opts.timeout, 0.1)
        finished = done()
        total = time.monotonic() - t0
        stats = farm.stats()
        got = accepted()
        # The bounces all go to the one sender: only the farm's recipients must not repeat.
        duplicates = sum(s["duplicates"] for name, s in stats.items() if name != "dsn")
        violations = limit_violations(stats)
        note = (f"count max {stats['count']['max_per_second']}/s, conc max {stats['conc']['max_open']} open, "
                f"suspend 421s {stats['suspend']['rate_limited']}, duplicates {duplicates}, "
                f"violations {json.dumps({n: s['violations'] for n, s in stats.items() if s['violations']})}")
        log(f"farm: {side.name}: {total:.1f}s, {got}/{deliverable} delivered; {note}")
        ok = finished and got == deliverable and duplicates == 0
        why = note if ok else f"{'done' if finished else 'not done'} after {total:.0f}s: {got} of {deliverable} delivered; {note}"
        return {"time": (total, ok, why), "violations": (float(violations), ok, "")}

    return body


def scenario_farm(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "farm",
        f"7 farm: {opts.messages} messages to receivers with limits of their own, seconds and violations",
    )
    mq, pf = _Farmed(FarmMqmta()), _Farmed(FarmPostfix())
    sides = prepare_sides([mq, pf], opts, res)
    if mq not in sides:
        return not_available(res, res.unavailable.get(mq.name, "mqmta not available"))
    round_robin(res, sides, opts, {"time": "s", "violations": "count"}, farm_measure(opts))
    return res


# --------------------------------------------------------------------------- 8 e2e-shaping

#: domains in the shaping file of the e2e-shaping scenario
BULK_DOMAINS = 1000


def bulk_shaping(domains: int) -> str:
    """A shaping file as a bulk sender's: ``domains`` destinations with limits of their own (some
    per sending IP), automation rules for every destination, sending IPs, a pool, a warm-up; and
    example.com, where the load goes, with limits that equal the options' defaults and a rate it
    does not reach, so only the cost of asking shows."""
    out = [
        '[default]', 'connection_limit = 10', 'max_deliveries_per_connection = 100', 'idle_timeout = "5s"',
        '[[default.automation]]', "regex = '^421 .*(rate|too many)'", 'action = "suspend"', 'duration = "60s"',
        '[[default.automation]]', "regex = '^4\\d\\d .*(blocked|spam)'", 'action = "suspend"', 'duration = "10m"',
        '[[default.automation]]', "regex = '^5\\d\\d .*blocked'", 'action = "bounce"',
        '["example.com"]', 'connection_limit = 10', 'max_message_rate = "1000000/min"',
    ]
    for i in range(domains - 1):
        out += [f'["d{i}.test"]', f"connection_limit = {2 + i % 8}", f'max_message_rate = "{60 * (1 + i % 20)}/min"',
                "max_deliveries_per_connection = 50"]
        if i % 10 == 0:
            out += [f'["d{i}.test".sources."127.0.0.2"]', 'max_message_rate = "30/min"']
    out += ['[sources."127.0.0.2"]', 'ehlo_domain = "mta2.bench.test"', '[pools.bulk]',
            'sources = ["127.0.0.2:3", "127.0.0.3"]', '[warmup."127.0.0.3"]',
            'schedule = ["500/day", "1000/day", "5000/day"]']
    return "\n".join(out) + "\n"


class MxMqmta(Mqmta):
    """mqmta delivering by MX (the farm process's DNS zone) to a fresh smtp-sink, with or without
    the bulk shaping file."""

    def __init__(self, label: str, shaping: bool) -> None:
        super().__init__(label, delivery=True, extra_args=WORKERS)
        self.base_args = self.extra_args
        self.shaping = shaping
        self.sink = SmtpSink()

    def prepare(self, allow_install: bool) -> None:
        self.sink.prepare(allow_install)
        super().prepare(allow_install)
        self.require("--shaping", "--dns-server", "--delivery-port")

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        (workdir / "sink").mkdir()
        sink = self.sink.start(reaper, workdir / "sink")
        zone = FarmProcess(reaper, workdir / "zone", BULK_DOMAINS)
        args = [f"--dns-server=127.0.0.1:{zone.dns_port}", f"--delivery-port={sink.port}"]
        if self.shaping:
            path = workdir / "shaping.toml"
            path.write_text(bulk_shaping(BULK_DOMAINS))
            args.append(f"--shaping={path}")
        self.extra_args = (*self.base_args, *args)
        (workdir / "mta").mkdir()
        t0 = time.monotonic()
        server = super().start(reaper, workdir / "mta")
        if self.shaping:
            # A one-off at start, not part of the load: the MX of each of the file's domains
            # (and its host's address) looked up before the first message is sent.
            if not wait_for(lambda: zone.dns_queries() >= 2 * (BULK_DOMAINS - 1), 120, 0.1):
                raise BenchError(f"the shaping file's domains were not looked up: {zone.dns_queries()} queries")
            log(f"e2e-shaping: {BULK_DOMAINS} domains looked up {time.monotonic() - t0:.1f}s after the start")
        server.extra["sink"] = sink
        return server


def scenario_e2e_shaping(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "e2e-shaping",
        f"8 e2e-shaping: {opts.messages} messages relayed by MX to smtp-sink, "
        f"with a {BULK_DOMAINS}-domain shaping file vs none, seconds",
        reference="mqmta+shaping",
    )
    plain, shaped = MxMqmta("mqmta", shaping=False), MxMqmta("mqmta+shaping", shaping=True)
    sides = prepare_sides([plain, shaped], opts, res)
    if shaped not in sides:
        return not_available(res, res.unavailable.get(shaped.name, "mqmta not available"))
    round_robin(res, sides, opts, {"accept": "s", "accept+relay": "s"}, relay_measure(opts))
    return res
