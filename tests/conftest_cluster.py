"""A three-node RabbitMQ cluster of the tests' own: three ``rabbitmq-server`` processes of the
Debian package with their own node names, ports and data directories under one temporary
directory, sharing an Erlang cookie, joined with ``rabbitmqctl join_cluster``.

The machine's own broker (127.0.0.1:5672, ``rabbit@localhost``) is left alone: the nodes only
share its epmd.  The servers and ``rabbitmqctl`` run from /usr/lib/rabbitmq/bin directly, since
the /usr/sbin wrappers switch to the ``rabbitmq`` user and its HOME (another cookie).

Also used by bench/cluster.py.  Not a conftest.py on purpose: the tests that need it import it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BIN = "/usr/lib/rabbitmq/bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not os.access(os.path.join(BIN, tool), os.X_OK):
            return f"{BIN}/{tool} not found (apt-get install rabbitmq-server)"
    return None


class RabbitNode:
    def __init__(self, base: str, index: int) -> None:
        # The process id in the name: two clusters (two test processes) never clash in epmd.
        self.name = f"mqc{index}_{os.getpid()}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.base = base
        self.pid_file = os.path.join(base, f"{self.name}.pid")
        config = os.path.join(base, f"{self.name}.conf")
        with open(config, "w") as f:
            # loopback_users: guest may connect (from 127.0.0.1 only anyway).
            f.write(f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        self.env = {
            **os.environ,
            "HOME": base,  # its .erlang.cookie, shared by the nodes and rabbitmqctl
            "RABBITMQ_CONF_ENV_FILE": os.path.join(base, "empty.env"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": config,
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(base, "plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
            "RABBITMQ_PID_FILE": self.pid_file,
            # One scheduler each: three brokers on a small shared machine.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 1:1",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if os.path.exists(self.pid_file):
            os.unlink(self.pid_file)
        log = open(os.path.join(self.base, f"{self.name}.out"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([os.path.join(BIN, "rabbitmq-server")], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.base)
        log.close()

    def wait_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"see {self.base}/{self.name}.out")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not listening on {self.port} after {timeout:g} s")

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run([os.path.join(BIN, "rabbitmqctl"), "-n", self.name, *args],
                              env=self.env, capture_output=True, timeout=timeout, text=True)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)}: "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL to the Erlang VM itself (the pid file's), then its shell parent goes too."""
        if not self.running:
            return
        with open(self.pid_file) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)


class RabbitCluster:
    """Three nodes, started, joined, and stopped together (``stop`` kills what is left)."""

    def __init__(self, base: str, size: int = 3) -> None:
        os.makedirs(base, exist_ok=True)
        cookie = os.path.join(base, ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write(f"MQMTATESTCLUSTER{os.getpid()}")
        os.chmod(cookie, 0o400)
        with open(os.path.join(base, "plugins"), "w") as f:
            f.write("[].\n")
        open(os.path.join(base, "empty.env"), "w").close()
        self.nodes = [RabbitNode(base, i + 1) for i in range(size)]

    def start(self) -> float:
        """Start and join every node; returns the seconds it took."""
        started = time.monotonic()
        self.start_all()
        first = self.nodes[0]

        def join(node: RabbitNode) -> None:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")

        # Side by side: each rabbitmqctl call is an Erlang VM start of a second or more.
        with ThreadPoolExecutor(len(self.nodes) - 1 or 1) as pool:
            list(pool.map(join, self.nodes[1:]))
        return time.monotonic() - started

    def start_all(self) -> None:
        """Start every node not running, at once (after a crash of them all each waits for
        the others before it opens its port), and wait for them."""
        stopped = [n for n in self.nodes if not n.running]
        for node in stopped:
            node.start()
        with ThreadPoolExecutor(len(stopped) or 1) as pool:
            list(pool.map(lambda n: n.wait_up(), stopped))

    def url(self, vhost: str) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"amqp://guest:guest@{hosts}/{vhost}"

    def any_running(self) -> RabbitNode:
        return next(n for n in self.nodes if n.running)

    def add_vhost(self, vhost: str) -> None:
        node = self.any_running()
        node.ctl("add_vhost", vhost)
        node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def queues(self, vhost: str, *fields: str) -> list[dict[str, Any]]:
        out = self.any_running().ctl("list_queues", "-q", "-p", vhost, "--formatter", "json",
                                     "name", *fields)
        return json.loads(out) if out.strip() else []

    def leader(self, vhost: str, queue: str) -> RabbitNode:
        """The node that leads the quorum queue ``queue`` (a classic one's home node)."""
        for q in self.queues(vhost, "type", "leader", "pid"):
            if q["name"] == queue:
                where = q.get("leader") or q.get("pid", "")
                return next(n for n in self.nodes if n.name in str(where))
        raise LookupError(f"no queue {queue} in vhost {vhost}")

    def messages(self, vhost: str, prefix: str = "") -> dict[str, int]:
        return {q["name"]: int(q["messages"]) for q in self.queues(vhost, "messages")
                if q["name"].startswith(prefix)}

    def kill9_all(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # all at once, as a power cut would
            list(pool.map(lambda n: n.kill9(), self.nodes))

    def stop(self) -> None:
        self.kill9_all()
