"""CPU time per message of each mqmta thread, for A/B decisions on a busy machine.

``python -m bench.cpu [--tree DIR] [--messages N] [--size BYTES] [--recipients R] [--rounds K]
[--inbound]``

Runs the end-to-end load (smtp-source into ``twistd mqmta`` with a delivery worker process and
``--smarthost`` to a fresh smtp-sink), waits until the sink counted every message and the outbox
is empty, and prints the CPU time (user + system, from ``/proc/PID/task/TID/stat``) that each
thread of the MTA and of its worker spent, per delivered message.  Wall-clock times swing with
whatever else runs on the machine; CPU per message moves far less, so two trees (``--tree``: a
checkout of another commit) can be compared while other work goes on.  Not a benchmark figure:
the README's figures come from ``python -m bench``.  ``--inbound`` runs with delivery off and stops
when the outbox holds every message: the receiving path alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.peers import SmtpSink, _twistd
from bench.proc import (
    LOOPBACK,
    REPO_DIR,
    BenchError,
    Reaper,
    free_port,
    log,
    run,
    scratch_dir,
    wait_for,
    wait_smtp,
)

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """Seconds of CPU (user + system) of the main thread of ``pid`` and of all its other threads,
    and the main thread's system (kernel) part alone."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = "main" if int(tid) == pid else "other threads"
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
        if name == "main":
            out["main kernel"] = int(fields[12]) / TICK
    return out


def write_calls(pid: int, field: str = "syscw") -> int:
    """Write (or, ``field="syscr"``, read) system calls the process made so far (/proc/PID/io)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def status(www: int) -> dict[str, int]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{LOOPBACK}:{www}/status", timeout=30) as r:
        return {str(k): int(v) for k, v in json.load(r)["queues"].items()}


def one_round(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    reaper = Reaper()
    with scratch_dir("cpu") as work:
        try:
            (work / "sink").mkdir()
            sink = SmtpSink().start(reaper, work / "sink")
            port, www = free_port(), free_port()
            (work / "data").mkdir()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(tree), os.environ.get("PYTHONPATH")))))
            argv = [*_twistd(), "-n", "--pidfile=", "mqmta", "--data-dir", str(work / "data"),
                    "--smtp-port", str(port), "--www-port", str(www), "--delivery",
                    "off" if args.inbound else "on", f"--smarthost={LOOPBACK}:{sink.port}", *args.mqmta_arg]
            if args.processes:
                argv.append(f"--delivery-processes={args.processes}")
            with open(work / "mqmta.log", "wb") as logf:
                p = reaper.popen("mqmta", argv, stdout=logf, cwd=tree, env=env)
            wait_smtp(port, timeout=60, proc=p)
            deliveries = args.messages * args.recipients
            before = {"mta": thread_cpu(p.pid)}
            writes = {"mta": write_calls(p.pid)}
            reads = write_calls(p.pid, "syscr")
            worker = None
            if args.processes:
                wait_for(lambda: bool(children(p.pid)), 30)
                worker = children(p.pid)[0]
                before["worker"] = thread_cpu(worker)
                writes["worker"] = write_calls(worker)
            spy = None
            if args.profile:
                target = worker if args.profile_side == "worker" and worker else p.pid
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(target), "-r", "200", "-f", "raw",
                                        "-o", str(args.profile), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0 = time.monotonic()
            src = ["smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
                   "-f", "a@example.com", "-t", "b@example.com", f"{LOOPBACK}:{port}"]
            if args.recipients > 1:
                src[1:1] = ["-r", str(args.recipients)]
            r = run(src, 600)
            if r.returncode:
                raise BenchError(f"smtp-source: {r.stdout + r.stderr}")
            accept = time.monotonic() - t0

            def done() -> bool:
                # The sink counts transactions; recipients are counted by the success queue.
                queues = status(www)
                if args.inbound:
                    return queues.get("outbox", 0) >= deliveries
                return queues.get("success", 0) >= deliveries and queues.get("outbox", 0) == 0

            if not wait_for(done, 600, 0.05):
                raise BenchError(f"not drained: {status(www)}, sink {sink.count()} transactions")
            total = time.monotonic() - t0
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            if worker is not None and os.environ.get("MQ_CALLGRIND_DUMP"):
                run(["callgrind_control", "-d", str(worker)], 300)
            after = {"mta": thread_cpu(p.pid)}
            if worker is not None:
                after["worker"] = thread_cpu(worker)
            out = {"accept s": accept, "total s": total,
                   "mta reads per delivery": (write_calls(p.pid, "syscr") - reads) / deliveries}
            for proc, pid in (("mta", p.pid), ("worker", worker)):
                if pid is not None:
                    out[f"{proc} writes per delivery"] = (write_calls(pid) - writes[proc]) / deliveries
            for proc, threads in after.items():
                kernel = threads.pop("main kernel") - before[proc].pop("main kernel")
                out[f"{proc}/main kernel us"] = kernel / deliveries * 1e6
                for name, secs in threads.items():
                    used = secs - before[proc].get(name, 0.0)
                    if used > 0:
                        out[f"{proc}/{name} us"] = used / deliveries * 1e6
                out[f"{proc} total us"] = sum(after[proc].values()) - sum(before[proc].values())
                out[f"{proc} total us"] *= 1e6 / deliveries
            return out
        finally:
            reaper.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=REPO_DIR, help="work tree whose mqmta runs")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--recipients", type=int, default=1)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", type=int, default=1, help="--delivery-processes (0: one process)")
    p.add_argument("--mqmta-arg", action="append", default=[])
    p.add_argument("--inbound", action="store_true",
                   help="delivery off: the CPU of receiving and queueing only (done when the outbox holds all)")
    p.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of one process to this file")
    p.add_argument("--profile-side", choices=("worker", "mta"), default="worker")
    args = p.parse_args()
    if args.inbound:
        args.processes = 0  # no worker to wait for
    rows: dict[str, list[float]] = {}
    for i in range(args.rounds):
        log(f"round {i + 1}/{args.rounds} on {args.tree}")
        for k, v in one_round(args.tree.resolve(), args).items():
            rows.setdefault(k, []).append(v)
    width = max(map(len, rows))
    for k, vs in sorted(rows.items()):
        print(f"{k:<{width}}  median {statistics.median(vs):9.1f}   " + " ".join(f"{v:.1f}" for v in vs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
