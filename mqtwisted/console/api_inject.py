"""``POST /v1/inject``: MailerQ JSON documents (or ``{"envelope", "recipients", "mime"}``, or a
list of either) onto the outbox, answered with their queue ids once they are durable: the rule
of the 250 after DATA.  ``mqmta inject --json`` reads the same documents (:func:`documents`).

While the data directory has less than ``queue-minfree`` free, an inject is answered 503 with
``Retry-After`` and stores nothing, as SMTP answers ``452 4.3.1`` at MAIL FROM: 503 rather than
507 because HTTP clients retry a 503 after ``Retry-After`` by themselves (urllib3's ``Retry``,
for one), and the shortage is meant to pass.
"""

from __future__ import annotations

import time
from typing import Any

from mqtwisted.console.http import ApiError, Router, read_json
from mqtwisted.console.openapi import MAX_INJECT, check
from mqtwisted.diskspace import FreeSpace, watching
from mqtwisted.document import DocumentError, OutgoingDocument
from mqtwisted.envelope import Body
from mqtwisted.metrics import METRICS
from mqtwisted.queue import Publication


def documents(body: Any, outbox: str, now: float) -> list[Publication]:
    """The publications of a request body (ApiError 400 naming the field of the first bad one).
    A message for several recipients stores its mime once."""
    if not isinstance(body, (list, dict)):
        raise ApiError(400, "body: expected a document, a message or a list of them", field="body")
    items = body if isinstance(body, list) else [body]
    if not 1 <= len(items) <= MAX_INJECT:
        raise ApiError(400, f"body: expected 1 to {MAX_INJECT} documents, got {len(items)}", field="body")
    pubs = []
    for i, item in enumerate(items):
        where = f"/{i}" if isinstance(body, list) else ""
        # Checked against the form it claims, so that the error names the field, not "oneOf".
        check("Message" if isinstance(item, dict) and "recipients" in item else "MailerQDocument", item, where)
        if "recipients" in item:
            mime = item["mime"].encode("utf-8", "surrogateescape")
            shared = Body(data=mime, size=len(mime))
            template = {k: v for k, v in item.items() if k not in ("recipients", "mime")}
            for j, recipient in enumerate(item["recipients"]):
                doc = {**template, "recipient": recipient}
                _checked(doc, f"{where}/recipients/{j}", now)
                pubs.append(Publication(outbox, doc, shared))
        else:
            doc = dict(item)
            _checked(doc, where, now)
            pubs.append(Publication(outbox, doc))
    return pubs


def _checked(doc: dict[str, Any], where: str, now: float) -> None:
    doc.setdefault("received", now)
    try:
        OutgoingDocument.of(doc).check()
    except DocumentError as e:
        # In the recipients form, a bad recipient is named by its place in the list.
        field = where if e.key == "recipient" and "/recipients/" in where else f"{where}/{e.key}"
        raise ApiError(400, f"{field}: {e}", field=field) from e


#: seconds a client is asked to wait when the disk is short of space
FULL_RETRY_AFTER = 30


class InjectApi:
    def __init__(self, mta: Any) -> None:
        self.mta = mta
        self.space: FreeSpace | None = None

    def install(self, router: Router) -> None:
        router.add("inject", post=self.inject)

    async def inject(self, request: Any) -> Any:
        if self.mta.shutting_down:
            raise ApiError(503, "shutting down", headers={"Retry-After": "5"})
        options = self.mta.options
        space = self.space = watching(self.space, options["data-dir"], options["queue-minfree"], time.monotonic)
        if space.short():
            raise ApiError(503, f"insufficient storage: {space.free} bytes free, below queue-minfree "
                           f"({space.minimum}); nothing was queued, try again later",
                           headers={"Retry-After": str(FULL_RETRY_AFTER)})
        pubs = documents(read_json(request), self.mta.options["outbox"], time.time())
        ids = await self.mta.queue.publish(pubs)
        METRICS.injected += len(ids)
        return {"queued": [{"id": i, "queue": p.queue, "recipient": p.document["recipient"]}
                           for i, p in zip(ids, pubs, strict=True)]}
