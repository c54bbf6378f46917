"""Processes, ports, memory and installs: the plumbing every scenario shares.

Everything the harness starts is registered in one :class:`Reaper`, so that a
timeout, an exception or Ctrl-C still stops it (by the process group we gave it,
never by name: other people's processes on the machine are not ours to end).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """A run that could not be measured; the scenario reports it, the harness goes on."""


class Unavailable(BenchError):
    """A side that cannot run here (not installed, feature not written yet)."""


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Reaper:
    """Owns every process and stop-action the harness started, and undoes them in reverse."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: int | object | None = subprocess.DEVNULL,
        stderr: int | object | None = subprocess.STDOUT,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen:
        """Start ``argv`` in its own session so it (and its children) can be stopped by group."""
        log(f"start {name}: {' '.join(map(str, argv))}")
        p = subprocess.Popen(
            list(map(str, argv)),
            stdin=subprocess.DEVNULL,
            stdout=stdout,  # type: ignore[arg-type]
            stderr=stderr,  # type: ignore[arg-type]
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._stops.append((name, lambda: terminate(p)))
        return p

    def on_stop(self, name: str, fn: Callable[[], None]) -> None:
        """Register a stop-action for something that daemonizes (Postfix)."""
        self._stops.append((name, fn))

    def stop_all(self) -> None:
        """Run every stop-action, newest first; one failing does not skip the rest."""
        while self._stops:
            name, fn = self._stops.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                log(f"stopping {name} failed: {e!r}")


def terminate(p: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(grace)


def sigterm_as_interrupt() -> None:
    """Turn SIGTERM/SIGHUP/SIGINT into KeyboardInterrupt so ``finally`` blocks stop the peers."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    # A shell starting us in the background (``cmd &``) sets SIGINT to ignored, and Python
    # then never raises KeyboardInterrupt: restore it so ``kill -INT`` stops a run cleanly too.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def raise_nofile() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit; children inherit it.

    5000 idle connections need 5000 descriptors here and as many in the server.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A port the kernel says is free now on loopback (small race, good enough locally)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_smtp(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something on ``port`` sends an SMTP 220 greeting."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                greeting = s.recv(512)
                if greeting.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = greeting
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise BenchError(f"no SMTP greeting on {port} within {timeout}s ({last!r})")


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` passes; returns its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM of ``pid`` in bytes, from /proc (no psutil dependency)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def tree_peak_rss(pid: int) -> int:
    """VmHWM of ``pid`` plus that of each of its children (a delivery worker), in bytes."""
    total = proc_status(pid).get("VmHWM", 0)
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with contextlib.suppress(OSError):
                    total += proc_status(int(child)).get("VmHWM", 0)
    return total


def rss(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM so the next peak reading is about this load only (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run(argv: Sequence[str], timeout: float, **kw: object) -> subprocess.CompletedProcess:
    """Run a short command to completion, bounded by ``timeout``; output captured as text."""
    return subprocess.run(
        list(map(str, argv)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh temp dir readable by the postfix user, removed afterwards (kept with
    ``MQBENCH_KEEP=1``, to read a server's log after a failed round)."""
    import tempfile

    base = Path(os.environ.get("MQBENCH_TMP", "/var/tmp"))
    d = Path(tempfile.mkdtemp(prefix=f"mqbench-{prefix}-", dir=base))
    d.chmod(0o755)
    try:
        yield d
    finally:
        if not os.environ.get("MQBENCH_KEEP"):
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- installs

POSTFIX_DEBCONF = "postfix postfix/main_mailer_type select No configuration"


def ensure_apt(binaries: Sequence[str], packages: Sequence[str], allow: bool) -> None:
    """Install Debian packages if any of ``binaries`` is missing."""
    if all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in binaries):
        return
    if not allow:
        raise Unavailable(f"{', '.join(binaries)} missing and --no-install given")
    log(f"apt-get install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if "postfix" in packages:
        # Without this line the postfix package asks (or configures and starts a system MTA).
        subprocess.run(
            ["debconf-set-selections"], input=POSTFIX_DEBCONF + "\n", text=True, check=True
        )
    subprocess.run(["apt-get", "update"], env=env, check=False, timeout=600)
    r = subprocess.run(["apt-get", "install", "-y", *packages], env=env, timeout=900)
    if r.returncode:
        raise Unavailable(f"apt-get install {' '.join(packages)} failed ({r.returncode})")


def ensure_pip(module: str, package: str, allow: bool) -> None:
    """Make ``module`` importable by the interpreter the peer scripts run on."""
    if run([sys.executable, "-c", f"import {module}"], 60).returncode == 0:
        return
    if not allow:
        raise Unavailable(f"python module {module} missing and --no-install given")
    log(f"pip install {package}")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], timeout=600)
    if r.returncode:
        raise Unavailable(f"pip install {package} failed ({r.returncode})")


def ensure_haraka(allow: bool) -> Path:
    """Haraka's launcher, installed with npm into bench/.cache/haraka (not the system)."""
    prefix = CACHE_DIR / "haraka"
    binary = prefix / "node_modules" / ".bin" / "haraka"
    if binary.exists():
        return binary
    if not shutil.which("npm"):
        raise Unavailable("npm not found (Haraka is installed with npm)")
    if not allow:
        raise Unavailable("Haraka missing and --no-install given")
    prefix.mkdir(parents=True, exist_ok=True)
    log(f"npm install Haraka into {prefix}")
    r = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), "Haraka"],
        timeout=900,
    )
    if r.returncode or not binary.exists():
        raise Unavailable(f"npm install Haraka failed ({r.returncode})")
    return binary
