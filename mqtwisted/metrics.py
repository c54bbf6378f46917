"""Counters for ``/metrics`` and ``/status``, kept as plain Python ints on the hot paths.

Why not prometheus_client's ``Counter`` directly: every ``inc()`` takes a lock and every
``labels()`` lookup builds a tuple and hashes it; the SMTP server answers thousands of messages
a second.  The hot paths here do one dict increment on the reactor thread (hook timings: one per
worker thread, so no lock and no lost update), and :class:`MTACollector` turns the numbers into
metric families only when scraped; the exposition itself is prometheus_client's.

The counters are process-wide (:data:`METRICS`), like prometheus_client's default registry: one
MTA runs per process.  Gauges (connections open, queue depths, busy threads) are read from the live
services at scrape time instead.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

#: Upper bounds of the hook latency histogram, seconds.
HOOK_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
)
#: delivery attempts kept for the console's delivery log (and sent on by a worker per snapshot)
RECENT = 1000


class _ThreadHooks:
    """One thread's hook timings: only that thread writes them."""

    def __init__(self) -> None:
        #: (plugin, hook) -> [count, sum, bucket counts...]
        self.table: dict[tuple[str, str], list[float]] = {}
        #: depth of hook calls running in this thread right now (a context thread is busy when > 0)
        self.busy = 0


class Metrics:
    """Process-wide counters.  Reactor-thread counters are plain dicts; see the module doc."""

    def __init__(self) -> None:
        self.started = time.time()
        #: end-of-DATA replies by code (250 accepted; 4xx/5xx refused)
        self.messages: dict[int, int] = {}
        #: documents queued through the API (POST /v1/inject)
        self.injected = 0
        #: connections turned away before the greeting (limits, connect hook)
        self.connections_refused = 0
        #: SMTP sessions ended, by outcome (quit, lost, timeout, errors, refused, shutdown ...)
        self.sessions: dict[str, int] = {}
        #: delivery attempts by (state, result)
        self.attempts: dict[tuple[str, str], int] = {}
        #: delivery attempts by (destination, sending address, class); "accepted" is a class here
        self.classes: dict[tuple[str, str, str], int] = {}
        #: what each attempt led to: delivered, deferred (retried later) or failed (for good)
        self.outcomes: dict[str, int] = {}
        #: the latest attempts as (number, entry), for the console's live delivery log
        self.recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=RECENT)
        self.recent_count = 0
        #: the number of the last entry a worker's snapshot carried
        self._reported = 0
        #: called with each new entry of :attr:`recent` (the console's event streams)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._local = threading.local()
        self._threads: list[_ThreadHooks] = []
        self._lock = threading.Lock()
        #: the latest :meth:`snapshot` of each live worker process, by name (delivery_process)
        self.workers: dict[str, dict[str, Any]] = {}
        #: the hook timings of workers that ended, kept like one more thread's
        self._ended = _ThreadHooks()
        self._threads.append(self._ended)

    # -- SMTP (reactor thread) --------------------------------------------------------------------

    def message(self, code: int) -> None:
        """One message answered at the end of DATA with ``code``."""
        m = self.messages
        m[code] = m.get(code, 0) + 1

    def session(self, outcome: str) -> None:
        s = self.sessions
        s[outcome] = s.get(outcome, 0) + 1

    # -- delivery (reactor thread) ----------------------------------------------------------------

    def attempt(self, state: str, result: str) -> None:
        key = (state, result)
        a = self.attempts
        a[key] = a.get(key, 0) + 1

    def classified(self, destination: str, source: str, classification: str) -> None:
        key = (destination, source, classification)
        c = self.classes
        c[key] = c.get(key, 0) + 1

    def outcome(self, kind: str) -> None:
        o = self.outcomes
        o[kind] = o.get(kind, 0) + 1

    def logged(self, entry: dict[str, Any]) -> None:
        """One attempt for the delivery log (cheap when nobody watches: one append)."""
        self.recent_count += 1
        self.recent.append((self.recent_count, entry))
        for listener in list(self.listeners):
            listener(entry)

    def outcome_counts(self) -> dict[str, int]:
        """Delivered, deferred and failed, with live worker processes' counts."""
        total = dict(self.outcomes)
        for snap in list(self.workers.values()):
            for kind, n in snap.get("outcomes", {}).items():
                total[kind] = total.get(kind, 0) + n
        return total

    def class_counts(self) -> dict[tuple[str, str, str], int]:
        """Attempts by destination, sending address and class, with live worker processes'."""
        total = dict(self.classes)
        for snap in list(self.workers.values()):
            _add_classes(total, snap)
        return total

    def attempt_counts(self) -> dict[tuple[str, str], int]:
        """Delivery attempts of this process and of its live worker processes."""
        total = dict(self.attempts)
        for snap in list(self.workers.values()):
            _add_attempts(total, snap)
        return total

    # -- worker processes (reactor thread) ----------------------------------------------------------

    def snapshot(self, gauges: dict[str, Any]) -> dict[str, Any]:
        """This process's counters as JSON-able data, for the parent's :meth:`worker_reported`."""
        return {
            "attempts": [[s, r, n] for (s, r), n in self.attempts.items()],
            "classes": [[d, s, c, n] for (d, s, c), n in self.classes.items()],
            "hooks": [[p, h, row] for (p, h), row in self.hooks().items()],
            "outcomes": dict(self.outcomes),
            "recent": self._unreported(),
            "gauges": gauges,
        }

    def _unreported(self) -> list[dict[str, Any]]:
        fresh = [entry for n, entry in self.recent if n > self._reported]
        self._reported = self.recent_count
        return fresh

    def worker_reported(self, name: str, snapshot: dict[str, Any]) -> None:
        for entry in snapshot.pop("recent", ()):
            self.logged(entry)
        self.workers[name] = snapshot

    def worker_ended(self, name: str) -> None:
        """Keep an ended worker's counts: counters never go down when a worker is replaced."""
        snap = self.workers.pop(name, None)
        if snap is None:
            return
        _add_attempts(self.attempts, snap)
        _add_classes(self.classes, snap)
        for kind, n in snap.get("outcomes", {}).items():
            self.outcomes[kind] = self.outcomes.get(kind, 0) + n
        for plugin, hook, row in snap.get("hooks", ()):
            _add_row(self._ended.table, (plugin, hook), row)

    # -- plugin hooks (any thread) ----------------------------------------------------------------

    def _mine(self) -> _ThreadHooks:
        mine = getattr(self._local, "hooks", None)
        if mine is None:
            mine = self._local.hooks = _ThreadHooks()
            with self._lock:
                self._threads.append(mine)
        return mine

    def hook_started(self) -> _ThreadHooks:
        mine = self._mine()
        mine.busy += 1
        return mine

    def hook_done(self, mine: _ThreadHooks, plugin: str, hook: str, seconds: float) -> None:
        mine.busy -= 1
        self.hook_time(plugin, hook, seconds, mine)

    def hook_time(
        self, plugin: str, hook: str, seconds: float, mine: _ThreadHooks | None = None
    ) -> None:
        table = (mine or self._mine()).table
        row = table.get((plugin, hook))
        if row is None:
            row = table[(plugin, hook)] = [0.0] * (2 + len(HOOK_BUCKETS))
        row[0] += 1
        row[1] += seconds
        i = bisect.bisect_left(HOOK_BUCKETS, seconds)
        if i < len(HOOK_BUCKETS):
            row[2 + i] += 1

    def hooks(self) -> dict[tuple[str, str], list[float]]:
        """Every thread's timings summed: (plugin, hook) -> [count, sum, per-bucket counts]."""
        with self._lock:
            threads = list(self._threads)
        total: dict[tuple[str, str], list[float]] = {}
        for t in threads:
            for _ in range(3):
                try:
                    items = list(t.table.items())  # the owner may add a key meanwhile
                    break
                except RuntimeError:
                    continue
            else:
                items = []
            for key, row in items:
                _add_row(total, key, row)
        for snap in list(self.workers.values()):
            for plugin, hook, row in snap.get("hooks", ()):
                _add_row(total, (plugin, hook), row)
        return total

    def busy_threads(self) -> int:
        with self._lock:
            return sum(1 for t in self._threads if t.busy > 0)

    def reset(self) -> None:
        """For tests: forget every count."""
        self.__init__()  # type: ignore[misc]


METRICS = Metrics()


def _add_attempts(total: dict[tuple[str, str], int], snapshot: dict[str, Any]) -> None:
    for state, result, n in snapshot.get("attempts", ()):
        total[(state, result)] = total.get((state, result), 0) + n


def _add_classes(total: dict[tuple[str, str, str], int], snapshot: dict[str, Any]) -> None:
    for destination, source, classification, n in snapshot.get("classes", ()):
        key = (destination, source, classification)
        total[key] = total.get(key, 0) + n


def _add_row(total: dict[tuple[str, str], list[float]], key: tuple[str, str], row: list[float]) -> None:
    acc = total.get(key)
    if acc is None:
        total[key] = list(row)
    else:
        for i, v in enumerate(row):
            acc[i] += v


# -- timing plugin hooks without touching the plugin runner -----------------------------------------


class TimedModule:
    """A plugin module as the runner sees it: the connection hooks come back wrapped in a timer.

    :class:`mqtwisted.plugins.PluginRunner` looks hooks up with ``getattr(module, name)`` once,
    when it is built, so wrapping here costs one ``perf_counter`` pair per call and no change in
    the runner.  Everything else (``mq_version``, life-cycle hooks, plugin globals) passes through.
    """

    def __init__(self, module: ModuleType, plugin: str, hooks: tuple[str, ...]) -> None:
        self.__dict__["_module"] = module
        self.__dict__["_plugin"] = plugin
        self.__dict__["_hooks"] = hooks

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if name in self._hooks and callable(value):
            return timed(value, self._plugin, name)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._module, name, value)


def timed(fn: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    """``fn`` recording its calls and latency in :data:`METRICS` (async: until it finishes)."""
    import inspect

    perf = time.perf_counter
    metrics = METRICS

    if inspect.iscoroutinefunction(fn):

        async def finish(coro: Any, t0: float) -> Any:
            try:
                return await coro
            finally:
                metrics.hook_time(plugin, hook, perf() - t0)

        def wrapper_async(*args: Any) -> Any:
            return finish(fn(*args), perf())

        # The runner sends coroutine functions to the reactor; this one returns a coroutine too.
        wrapper_async.mq_on_reactor = True  # type: ignore[attr-defined]
        return wrapper_async

    def wrapper(*args: Any) -> Any:
        mine = metrics.hook_started()
        t0 = perf()
        try:
            return fn(*args)
        finally:
            metrics.hook_done(mine, plugin, hook, perf() - t0)

    if getattr(fn, "mq_on_reactor", False):
        wrapper.mq_on_reactor = True  # type: ignore[attr-defined]
    return wrapper


# -- the scrape ---------------------------------------------------------------------------------------


class MTACollector:
    """prometheus_client collector for one running MTA (an :class:`mqtwisted.service.MTAService`).

    ``queue_depths`` is filled by the web resource just before it asks for the exposition, since
    ``Queue.stats()`` is asynchronous and a collector is not.
    """

    def __init__(self, mta: Any, metrics: Metrics = METRICS) -> None:
        self.mta = mta
        self.metrics = metrics
        self.queue_depths: dict[str, int] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.metrics
        status = self.mta.status_counts()

        yield GaugeMetricFamily(
            "mqmta_smtp_connections_open", "SMTP connections open now", value=status["connections"]["open"]
        )
        yield CounterMetricFamily(
            "mqmta_smtp_connections", "SMTP connections admitted since start", value=status["connections"]["total"]
        )
        yield CounterMetricFamily(
            "mqmta_smtp_connections_refused",
            "SMTP connections turned away before the greeting (limits, connect hook)",
            value=m.connections_refused,
        )
        sessions = CounterMetricFamily("mqmta_smtp_sessions", "SMTP sessions ended, by outcome", labels=["outcome"])
        for outcome, n in sorted(m.sessions.items()):
            sessions.add_metric([outcome], n)
        yield sessions
        messages = CounterMetricFamily(
            "mqmta_smtp_messages",
            "messages answered at the end of DATA, by reply code (2xx accepted, else refused)",
            labels=["result", "code"],
        )
        for code, n in sorted(m.messages.items()):
            messages.add_metric(["accepted" if code < 400 else "refused", str(code)], n)
        yield messages
        depth = GaugeMetricFamily("mqmta_queue_depth", "documents per named queue", labels=["queue"])
        for name, n in sorted(self.queue_depths.items()):
            depth.add_metric([name], n)
        yield depth
        attempts = CounterMetricFamily(
            "mqmta_delivery_attempts", "delivery attempts by state reached and result", labels=["state", "result"]
        )
        for (state, result), n in sorted(m.attempt_counts().items()):
            attempts.add_metric([state, result], n)
        yield attempts
        classes = CounterMetricFamily(
            "mqmta_delivery_attempts_by_class",
            "delivery attempts by destination, sending address ('' when unbound) and class ('accepted', or the "
            "bounce class of mqtwisted/bounce_classes.toml)",
            labels=["destination", "source", "class"],
        )
        for (destination, source, classification), n in sorted(m.class_counts().items()):
            classes.add_metric([destination, source, classification], n)
        yield classes
        delivery = status["delivery"]
        yield GaugeMetricFamily(
            "mqmta_delivery_connections", "outbound connections open or being set up", value=delivery["connections"]
        )
        yield GaugeMetricFamily(
            "mqmta_delivery_pending", "messages leased and waiting for a connection", value=delivery["pending"]
        )
        hooks = HistogramMetricFamily(
            "mqmta_plugin_hook_duration_seconds",
            "plugin hook calls and their latency, by plugin and hook (_count is the calls)",
            labels=["plugin", "hook"],
        )
        for (plugin, hook), row in sorted(m.hooks().items()):
            buckets, acc = [], 0.0
            for bound, n in zip(HOOK_BUCKETS, row[2:], strict=True):
                acc += n
                buckets.append((repr(bound), acc))
            buckets.append(("+Inf", row[0]))
            hooks.add_metric([plugin, hook], buckets, row[1])
        yield hooks
        plugins = status["plugins"]
        yield GaugeMetricFamily("mqmta_plugin_threads", "plugin context threads", value=plugins["threads"])
        yield GaugeMetricFamily(
            "mqmta_plugin_threads_busy", "plugin context threads running a hook now", value=plugins["busy"]
        )
        yield GaugeMetricFamily(
            "mqmta_plugin_runners", "plugin sets loaded (more than 1 while a reload drains)", value=plugins["runners"]
        )
        yield GaugeMetricFamily("mqmta_start_time_seconds", "when this MTA started (unix time)", value=m.started)
