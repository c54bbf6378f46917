"""The operator's web port (``--www-port``, default 127.0.0.1:8485): the console and the REST API
(:mod:`mqtwisted.console`), ``/metrics`` in the Prometheus text format (prometheus_client's
exposition) and ``/status`` as JSON.

Both are read-only and cheap: counters are summed at request time (see :mod:`mqtwisted.metrics`),
queue depths come from ``Queue.stats()``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from mqtwisted import __version__
from mqtwisted.listening import bind_or_exit
from mqtwisted.metrics import METRICS, MTACollector

log = Logger()


def status_document(mta: Any, depths: dict[str, int]) -> dict[str, Any]:
    """``/status``: everything ``/metrics`` has, as one JSON document.

    ``mta`` is the :class:`~mqtwisted.service.MTAService` (its live gauges and plugin host);
    ``depths`` the documents per queue.
    """
    m = METRICS
    counts = mta.status_counts()
    attempts: dict[str, dict[str, int]] = {}
    for (state, result), n in m.attempt_counts().items():
        attempts.setdefault(state, {})[result] = n
    hooks = [
        {"plugin": p, "hook": h, "calls": int(row[0]), "seconds": row[1],
         "mean_seconds": row[1] / row[0] if row[0] else 0.0}
        for (p, h), row in sorted(m.hooks().items())
    ]
    accepted = sum(n for code, n in m.messages.items() if code < 400)
    refused = {str(code): n for code, n in sorted(m.messages.items()) if code >= 400}
    return {
        "version": __version__,
        "started": m.started,
        "uptime": time.time() - m.started,
        "shutting_down": mta.shutting_down,
        "connections": {**counts["connections"], "refused": m.connections_refused},
        "sessions": dict(m.sessions),
        "messages": {"accepted": accepted, "refused": sum(refused.values()), "refused_by_code": refused},
        "queues": depths,
        "delivery": {**counts["delivery"], "attempts": attempts},
        "plugins": {
            **counts["plugins"],
            "directory": mta.plugins.directory or None,
            "loaded": [p.name for p in getattr(mta.plugins.runner, "plugins", [])],
            "hooks": hooks,
        },
    }


class _Async(resource.Resource):
    isLeaf = True

    def __init__(self, mta: Any, collector: MTACollector) -> None:
        super().__init__()
        self.mta = mta
        self.collector = collector

    def body(self, depths: dict[str, int], request: Any) -> bytes:
        raise NotImplementedError

    def render_GET(self, request: Any) -> Any:
        d = defer.maybeDeferred(self.mta.queue_stats)
        gone: list[bool] = []  # the client left before the answer was ready
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def no_stats(f: Any) -> dict[str, int]:
            log.warn("queue stats unavailable for {path}: {why}", path=request.path, why=f.getErrorMessage())
            return {}

        def write(depths: dict[str, int]) -> None:
            if gone:
                return
            request.write(self.body(depths, request))
            request.finish()

        def failed(f: Any) -> None:
            log.failure("rendering {path} failed", f, path=request.path)
            if not gone and not request.finished:
                request.setResponseCode(500)
                request.finish()

        d.addErrback(no_stats).addCallback(write).addErrback(failed)
        return server.NOT_DONE_YET


class MetricsResource(_Async):
    def body(self, depths: dict[str, int], request: Any) -> bytes:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        self.collector.queue_depths = depths
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.mta_registry)  # type: ignore[attr-defined,no-any-return]


class StatusResource(_Async):
    def body(self, depths: dict[str, int], request: Any) -> bytes:
        status = status_document(self.mta, depths)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(status, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def make_site(mta: Any, series: Any = None) -> server.Site:
    """The Site for ``mta`` (an MTAService): a registry of its own, so tests can run several;
    ``series`` the Overview's rates (:class:`mqtwisted.console.series.Series`)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    from mqtwisted.console import make_root
    from mqtwisted.console.http import ConsoleSite
    from mqtwisted.console.series import Series

    registry = CollectorRegistry(auto_describe=False)
    collector = MTACollector(mta)
    registry.register(collector)  # type: ignore[arg-type]
    ProcessCollector(namespace="mqmta", registry=registry)
    metrics = MetricsResource(mta, collector)
    metrics.mta_registry = registry  # type: ignore[attr-defined]
    root = make_root(mta, series if series is not None else Series(), {
        b"metrics": metrics, b"status": StatusResource(mta, collector),
    })
    return ConsoleSite(root, mta.options["www-max-body"])


class WebService(service.Service):
    """Listens on ``www-ip:www-port``.  Pickles as address only; the Site is made on start."""

    name = "web"

    def __init__(self, mta: Any, port: int, interface: str = "127.0.0.1") -> None:
        self.mta = mta
        self.port = port
        self.interface = interface
        self._port: Any = None
        self._sampler: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_port"] = None
        state["_sampler"] = None
        return state

    def privilegedStartService(self) -> None:
        # Bind here, like internet.TCPServer: before twistd drops privileges (--uid).
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._port is None:
            from twisted.internet import reactor, task

            from mqtwisted.console.series import Series

            series = Series()
            self._port = bind_or_exit(
                lambda: reactor.listenTCP(self.port, make_site(self.mta, series), interface=self.interface),
                "www-port",
            )
            self._sampler = task.LoopingCall(lambda: series.sample(time.time()))
            self._sampler.start(1.0, now=True)
            options = self.mta.options
            access = ("logins from --www-auth" if options.get("www-auth") else
                      "no --www-auth: loopback only, no login")
            log.info("console, REST API, status and metrics on http://{ip}:{port}/ ({access})",
                     ip=self.interface, port=self.listening_port, access=access)

    @property
    def listening_port(self) -> int:
        return self._port.getHost().port if self._port is not None else self.port

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        port, self._port = self._port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None
