"""Command line of ``python -m bench``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.bulk import scenario_drain, scenario_fanout
from bench.cluster import scenario_cluster
from bench.peers import Mqmta
from bench.proc import BENCH_DIR, log, raise_nofile, sigterm_as_interrupt
from bench.report import table, to_json, write_json
from bench.scenarios import SCENARIOS as BASIC
from bench.scenarios import Options, ScenarioResult

SCENARIOS = {**BASIC, "fanout": scenario_fanout, "drain": scenario_drain, "cluster": scenario_cluster}

DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"
ALL_PEERS = ("smtp-sink", "postfix", "aiosmtpd", "haraka", "twisted.mail")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="mqmta against real peers on loopback: medians, ratios, JSON.",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    p.add_argument("--messages", type=int, default=5000, help="messages per load (default 5000)")
    p.add_argument("--sessions", type=int, default=10, help="smtp-source -s (default 10)")
    p.add_argument(
        "--peers",
        default=",".join(ALL_PEERS),
        help="comma-separated peers beside mqmta (default: all of " + ",".join(ALL_PEERS) + ")",
    )
    p.add_argument("--idle-connections", type=int, default=5000, help="memory scenario (5000)")
    p.add_argument("--big-message-mb", type=int, default=50, help="memory scenario (50)")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument(
        "--mqmta-arg",
        action="append",
        default=[],
        metavar="OPT",
        help="extra twistd mqmta option for every mqmta side, e.g. --mqmta-arg=--threads=1",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="limit of one load, seconds")
    p.add_argument("--no-install", action="store_true", help="use only what is installed")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = p.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenario_list if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.rounds < 1 or args.messages < 1:
        p.error("--rounds and --messages must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios; exit 0 when every side that ran lost no message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    sigterm_as_interrupt()
    nofile = raise_nofile()
    if "memory" in args.scenario_list and nofile < args.idle_connections + 200:
        log(f"RLIMIT_NOFILE is {nofile}: the idle-connection count is lowered to fit")
        args.idle_connections = max(100, nofile - 200)
    opts = Options(
        rounds=args.rounds,
        messages=args.messages,
        sessions=args.sessions,
        timeout=args.timeout,
        allow_install=not args.no_install,
        peers=[p.strip() for p in args.peers.split(",") if p.strip()],
        idle_connections=args.idle_connections,
        big_message_mb=args.big_message_mb,
        amqp_url=args.amqp_url,
    )
    Mqmta.common_args = tuple(args.mqmta_arg)
    started = time.time()
    results: list[ScenarioResult] = []
    interrupted = False
    try:
        for name in args.scenario_list:
            log(f"scenario {name}")
            try:
                results.append(SCENARIOS[name](opts))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one broken scenario must not lose the others
                log(f"scenario {name} crashed: {e!r}")
                r = ScenarioResult(name, name, status="error", reason=repr(e))
                results.append(r)
            # Results so far are kept even if a later scenario is interrupted.
            write_json(to_json(results, argv, started), args.output)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: every server started was stopped; partial results follow")
    print(table(results, args.rounds))
    write_json(to_json(results, argv, started), args.output)
    log(f"wrote {args.output}")
    lost = any(
        v is False
        for r in results
        for sides in r.cases.values()
        for s in sides.values()
        for v in s.verified
    )
    return 130 if interrupted else (1 if lost else 0)
