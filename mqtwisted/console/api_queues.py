"""``/v1/queues``: the named queues, a page of one, one document; retry, delete, bounce, move."""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.logger import Logger

from mqtwisted.console.http import ApiError, Router, read_json
from mqtwisted.console.openapi import QUEUE_NAME, check
from mqtwisted.document import OutgoingDocument
from mqtwisted.metrics import METRICS
from mqtwisted.queue import Publication
from mqtwisted.queue.admin import QueueAdmin
from mqtwisted.queue.admins import admin_for
from mqtwisted.results import Attempt

log = Logger()

_NAME = re.compile(QUEUE_NAME)
BOUNCED = "bounced by the operator"


def _name(value: str, field: str = "name") -> str:
    if not _NAME.match(value):
        raise ApiError(400, f"{field}: not a queue name: {value[:100]!r}", field=field)
    return value


def _int_arg(request: Any, name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name.encode())
    if not raw:
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise ApiError(400, f"{name}: expected an integer", field=name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}: must be between {low} and {high}", field=name)
    return value


class QueueApi:
    def __init__(self, mta: Any) -> None:
        self.mta = mta

    @property
    def admin(self) -> QueueAdmin:
        return admin_for(self.mta.queue)

    def install(self, router: Router) -> None:
        router.add("queues", get=self.queues)
        router.add("queues/(?P<name>[^/]+)", get=self.browse)
        router.add("queues/(?P<name>[^/]+)/(?P<id>[^/]+)", get=self.show, delete=self.delete)
        router.add("queues/(?P<name>[^/]+)/(?P<id>[^/]+)/retry", post=self.retry)
        router.add("queues/(?P<name>[^/]+)/(?P<id>[^/]+)/bounce", post=self.bounce)
        router.add("queues/(?P<name>[^/]+)/(?P<id>[^/]+)/move", post=self.move)

    async def queues(self, request: Any) -> Any:
        depths = await self.mta.queue_stats()
        return {"queues": [{"name": n, "count": c} for n, c in sorted(depths.items())]}

    async def browse(self, request: Any, name: str) -> Any:
        _name(name)
        offset = _int_arg(request, "offset", 0, 0, 10**9)
        limit = _int_arg(request, "limit", 50, 1, 500)
        search = (request.args.get(b"search") or [b""])[0].decode("utf-8", "replace").strip()
        if len(search) > 300:
            raise ApiError(400, "search: at most 300 characters", field="search")
        page = await self.admin.browse(name, offset, limit, search)
        return {"queue": name, "total": page.total, "offset": offset, "partial": page.partial,
                "documents": [{"id": i, "document": d} for i, d in page.documents]}

    async def _document(self, name: str, id: str) -> dict[str, Any]:
        _name(name)
        doc = await self.admin.show(name, id)
        if doc is None:
            raise ApiError(404, f"no document {id} in queue {name}")
        return doc

    async def show(self, request: Any, name: str, id: str) -> Any:
        return await self._document(name, id)

    async def delete(self, request: Any, name: str, id: str) -> Any:
        _name(name)
        if await self.admin.replace(name, id, []) is None:
            raise ApiError(404, f"no document {id} in queue {name}")
        log.info("console: {who} deleted {id} from {queue}", who=request.identity, id=id, queue=name)
        return {"ok": True}

    async def retry(self, request: Any, name: str, id: str) -> Any:
        _name(name)
        if not await self.admin.retry(name, id):
            raise ApiError(404, f"no document {id} in queue {name}")
        log.info("console: {who} retries {id} of {queue} now", who=request.identity, id=id, queue=name)
        return {"ok": True}

    async def move(self, request: Any, name: str, id: str) -> Any:
        body = read_json(request)
        check("Move", body)
        to = _name(body["to"], "to")
        if to == name:
            raise ApiError(400, "to: the document is in that queue already", field="to")
        doc = await self._document(name, id)
        return await self._replace(request, name, id, [Publication(to, doc)], f"moved to {to}")

    async def bounce(self, request: Any, name: str, id: str) -> Any:
        from mqtwisted.delivery import outcomes
        from mqtwisted.delivery.options import DeliveryOptions

        doc = OutgoingDocument.of(await self._document(name, id))
        now = time.time()
        attempt = Attempt("process", "error", 550, "5.0.0", f"{BOUNCED} ({request.identity})", time=now,
                          permanent=True, classification="other")
        options = DeliveryOptions.from_options(self.mta.options)
        pubs = outcomes.final(doc.with_attempt(attempt.as_record()), attempt, now, options,
                              self.mta.options["hostname"])
        answer = await self._replace(request, name, id, pubs, "bounced")
        METRICS.outcome("failed")
        return answer

    async def _replace(self, request: Any, name: str, id: str, pubs: list[Publication], what: str) -> Any:
        ids = await self.admin.replace(name, id, pubs)
        if ids is None:
            raise ApiError(404, f"no document {id} in queue {name}")
        log.info("console: {who}: {id} of {queue} {what}", who=request.identity, id=id, queue=name, what=what)
        return {"queued": [{"id": i, "queue": p.queue, "recipient": str(p.document.get("recipient") or "")}
                           for i, p in zip(ids, pubs, strict=True)]}
