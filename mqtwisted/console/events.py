"""``/console/events``: the delivery log as server-sent events, one ``data:`` line per attempt.

Entries come from :data:`METRICS`'s listeners (the delivery service in this process, or a
worker's snapshot) and are written in batches every :data:`FLUSH` seconds, at most
:data:`BATCH` per batch (the rest is counted in a ``dropped`` event), so a browser tab cannot
slow delivery down.  ``?domain=&class=&result=`` filter on the server.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.web import server

from mqtwisted.console.access import Guarded
from mqtwisted.metrics import METRICS

FLUSH = 0.25
BATCH = 200
BACKLOG = 100
KEEPALIVE = 15.0


def _filter(request: Any) -> dict[str, str]:
    wanted = {}
    for key in ("domain", "class", "result", "outcome"):
        value = (request.args.get(key.encode()) or [b""])[0].decode("utf-8", "replace").strip().lower()
        if value:
            wanted[key] = value
    return wanted


def wanted(entry: dict[str, Any], filters: dict[str, str]) -> bool:
    for key, value in filters.items():
        field = "classification" if key == "class" else key
        have = str(entry.get(field) or "").lower()
        if (value not in have) if key == "domain" else (have != value):
            return False
    return True


class _Stream:
    def __init__(self, request: Any, filters: dict[str, str], reactor: Any) -> None:
        self.request = request
        self.filters = filters
        self.pending: list[dict[str, Any]] = []
        self.dropped = 0
        self.idle = 0.0
        self.loop = task.LoopingCall(self.flush)
        self.loop.clock = reactor

    def add(self, entry: dict[str, Any]) -> None:
        if not wanted(entry, self.filters):
            return
        if len(self.pending) >= BATCH:
            self.dropped += 1
        else:
            self.pending.append(entry)

    def flush(self) -> None:
        out = []
        if self.pending:
            out = [f"data: {json.dumps(e)}\n\n" for e in self.pending]
            self.pending = []
            self.idle = 0.0
        if self.dropped:
            out.append(f"event: dropped\ndata: {self.dropped}\n\n")
            self.dropped = 0
        self.idle += FLUSH
        if self.idle >= KEEPALIVE:
            out.append(": keep-alive\n\n")
            self.idle = 0.0
        if out:
            self.request.write("".join(out).encode())

    def stop(self, _: Any = None) -> None:
        if self.add in METRICS.listeners:
            METRICS.listeners.remove(self.add)
        if self.loop.running:
            self.loop.stop()


class Events(Guarded):
    def render_GET(self, request: Any) -> Any:
        from twisted.internet import reactor

        if self.refused(request, False):
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = _Stream(request, _filter(request), reactor)
        request.write(b"retry: 2000\n\n")
        for _, entry in list(METRICS.recent)[-BACKLOG:]:
            stream.add(entry)
        METRICS.listeners.append(stream.add)
        request.notifyFinish().addBoth(stream.stop)
        stream.loop.start(FLUSH, now=True)
        return server.NOT_DONE_YET
