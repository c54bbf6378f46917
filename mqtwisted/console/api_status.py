"""The console's read-only views: ``/v1/overview``, ``/v1/destinations``, ``/v1/log``,
``/v1/plugins`` and ``/v1/config``."""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mqtwisted import __version__
from mqtwisted.console.http import Router
from mqtwisted.console.series import Series, totals
from mqtwisted.metrics import METRICS

log = Logger()

#: options whose values are credentials (or name them inline)
SECRET_OPTIONS = ("smtp-auth", "www-auth", "rest-tokens")


#: the password of a URL's user information (``scheme://user:PASSWORD@``), wherever in the value
#: (a cluster's ``--queue`` lists several hosts, which urllib cannot parse)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:@/\s,]*):[^/\s?#]*@", re.IGNORECASE)
#: a credential in a URL's query (``redis://host/0?password=…``)
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass|token|secret|key)=)[^&#\s]*", re.IGNORECASE)


def mask(name: str, value: Any) -> Any:
    """An option's value as the console shows it: passwords and tokens replaced by ``***``."""
    if not isinstance(value, str) or not value:
        return value
    if name in SECRET_OPTIONS and value.startswith("hardcoded://"):
        return "hardcoded://***"
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", value))


def jsonable(value: Any) -> Any:
    """An option's value as JSON: parsed values (rates, paths, addresses) as their text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


class StatusApi:
    def __init__(self, mta: Any, series: Series) -> None:
        self.mta = mta
        self.series = series

    def install(self, router: Router) -> None:
        router.add("overview", get=self.overview)
        router.add("destinations", get=self.destinations)
        router.add("log", get=self.log)
        router.add("plugins", get=self.plugins)
        router.add("config", get=self.config)

    async def _depths(self) -> tuple[dict[str, int], str | None]:
        try:
            return await self.mta.queue_stats(), None
        except Exception as e:  # the overview still shows everything else while the queue is down
            return {}, str(e)

    async def _nodes(self) -> int | None:
        """Nodes consuming the outbox: 1 on the spool, the broker's consumer count on amqp."""
        from mqtwisted.queue.admins import admin_for

        admin = admin_for(self.mta.queue)
        consumers = getattr(admin, "consumers", None)
        if consumers is None:
            return 1 if self.mta.options["delivery"] else 0
        try:
            return int(await consumers(self.mta.options["outbox"]))
        except Exception:
            return None

    async def overview(self, request: Any) -> Any:
        (depths, queue_error), nodes = await defer.gatherResults(
            [defer.ensureDeferred(self._depths()), defer.ensureDeferred(self._nodes())])
        counts = self.mta.status_counts()
        return {
            "version": __version__,
            "hostname": self.mta.options["hostname"],
            "started": METRICS.started,
            "uptime": time.time() - METRICS.started,
            "backend": mask("queue", self.mta.options["queue"]),
            "nodes": nodes,
            "shutting_down": self.mta.shutting_down,
            "queues": depths,
            "queue_error": queue_error,
            "connections": {"in": counts["connections"]["open"], "in_total": counts["connections"]["total"],
                            "out": counts["delivery"]["connections"], "waiting": counts["delivery"]["pending"]},
            "totals": totals(),
            "series": self.series.as_json(),
        }

    async def destinations(self, request: Any) -> Any:
        rows: list[dict[str, Any]] = []
        for delivery in self.mta.deliveries():
            rows += delivery.destination_rows()
        return {"destinations": rows, "now": time.time()}

    async def log(self, request: Any) -> Any:
        return {"attempts": [entry for _, entry in list(METRICS.recent)[-200:]]}

    async def plugins(self, request: Any) -> Any:
        host = self.mta.plugins
        hooks = [
            {"plugin": p, "hook": h, "calls": int(row[0]), "seconds": row[1],
             "mean_seconds": row[1] / row[0] if row[0] else 0.0}
            for (p, h), row in sorted(METRICS.hooks().items())
        ]
        return {
            "directory": host.directory or None,
            "loaded": [p.name for p in getattr(host.runner, "plugins", [])],
            "milters": {"in": list(self.mta.options.get("milters") or []),
                        "out": list(self.mta.options.get("milters-out") or [])},
            "threads": self.mta.status_counts()["plugins"],
            "hooks": hooks,
        }

    async def config(self, request: Any) -> Any:
        return {"options": {name: jsonable(mask(name, value)) for name, value in sorted(self.mta.options.items())}}
