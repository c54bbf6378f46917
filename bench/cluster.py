"""Scenario ``cluster``: mqmta on a three-node RabbitMQ cluster with quorum queues against mqmta
on the single broker with classic queues, the ``e2e`` load on each (``accept``: smtp-source's
time, inbound; ``accept+relay``: until smtp-sink counted every message and the outbox is empty).

The cluster is the tests' own (``tests/conftest_cluster.py``: three ``rabbitmq-server`` processes
in a scratch directory, joined), started once for the scenario and killed at its end; each round
gets a fresh vhost on it, as the single-broker side gets one on the machine's broker.  The
cluster side lists all three nodes in ``--queue`` and declares ``--amqp-queue-type quorum``.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.peers import Mqmta, Server
from bench.proc import Reaper, log, port_open, scratch_dir
from bench.scenarios import (
    AmqpMqmta,
    Options,
    Relaying,
    ScenarioResult,
    not_available,
    prepare_sides,
    relay_measure,
    round_robin,
)
from tests.conftest_cluster import RabbitCluster, available


class _ClusterMqmta(Mqmta):
    """mqmta on every node of ``cluster``, with quorum queues, each round in its own vhost."""

    def __init__(self, label: str, cluster: RabbitCluster) -> None:
        super().__init__(label=label, delivery=True, smarthost="127.0.0.1:1", queue_url="",
                         extra_args=("--amqp-queue-type", "quorum"))
        self.cluster = cluster

    def start(self, reaper: Reaper, workdir: Path) -> Server:
        vhost = f"mqbench-{int(time.time() * 1000)}"
        self.cluster.add_vhost(vhost)
        reaper.on_stop("vhost", lambda: self.cluster.any_running().ctl("delete_vhost", vhost))
        self.queue_url = self.cluster.url(vhost)
        return super().start(reaper, workdir)


def scenario_cluster(opts: Options) -> ScenarioResult:
    res = ScenarioResult(
        "cluster",
        f"10 cluster: {opts.messages} messages accepted and relayed to smtp-sink, quorum queues "
        "on a three-node RabbitMQ cluster vs classic queues on one broker, seconds",
        reference="mqmta-quorum3",
    )
    why = available()
    if why:
        return not_available(res, why)
    if not port_open(5672, "127.0.0.1"):
        return not_available(res, "no AMQP broker listening on 127.0.0.1:5672 (the classic side)")
    with scratch_dir("rabbit-cluster") as base:
        cluster = RabbitCluster(str(base))
        try:
            log(f"cluster: three RabbitMQ nodes up and joined in {cluster.start():.1f} s")
            quorum = Relaying(_ClusterMqmta("mqmta-quorum3", cluster))
            classic = Relaying(AmqpMqmta("mqmta-classic1", opts.amqp_url, delivery=True,
                                           smarthost="127.0.0.1:1"))
            sides = prepare_sides([quorum, classic], opts, res)
            if len(sides) < 2:
                return not_available(res, "; ".join(res.unavailable.values()) or "no mqmta")
            round_robin(res, sides, opts, {"accept": "s", "accept+relay": "s"},
                        relay_measure(opts))
        finally:
            cluster.stop()
    return res
