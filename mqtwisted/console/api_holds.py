"""``/v1/pauses`` and ``/v1/suppressions``: the operator's pauses and suppression list, on the
state ``mqmta pause`` and ``mqmta suppress`` write (:mod:`mqtwisted.state`: ``state.sqlite3`` in
the data directory, or ``--state redis://…``).  Delivery sees a change within a second, as it
sees the command's (:data:`mqtwisted.state.keeper.POLL_INTERVAL`).

The backend's calls block: they are made in a thread of this API's own, opened on first use.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.logger import Logger

from mqtwisted.console.http import ApiError, Router, read_json
from mqtwisted.console.openapi import MAX_DURATION, check
from mqtwisted.shaping.rates import parse_duration
from mqtwisted.state.backend import Backend
from mqtwisted.state.opening import OwnThread, open_backend
from mqtwisted.state.pauses import PauseList
from mqtwisted.state.suppression import (
    DEFAULT_CODE,
    DEFAULT_ENHANCED,
    DEFAULT_TEXT,
    SuppressionList,
)

log = Logger()


def duration(body: dict[str, Any]) -> float | None:
    """``body["duration"]``: seconds, or a text like ``"2h"``; absent or null: until removed."""
    value = body.get("duration")
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ApiError(400, f"/duration: {e}", field="/duration") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_DURATION):
        raise ApiError(400, f"/duration: expected more than 0 and at most {MAX_DURATION} seconds, got {value!r}",
                       field="/duration")
    return seconds


def _refused(e: ValueError, default_field: str) -> ApiError:
    """A ValueError of the state models as a 400 naming the field: the body's field their
    message starts with ("code: …"), else ``default_field``."""
    text = str(e)
    name, colon, rest = text.partition(": ")
    field = f"/{name}" if colon and name.isidentifier() else default_field
    return ApiError(400, f"{field}: {rest if field != default_field else text}", field=field)


class HoldsApi:
    def __init__(self, mta: Any) -> None:
        self.mta = mta
        self._backend: Backend | None = None
        self._run: OwnThread | None = None

    def install(self, router: Router) -> None:
        router.add("pauses", get=self.pauses, post=self.pause)
        router.add("pauses/(?P<id>[^/]+)", delete=self.unpause)
        router.add("suppressions", get=self.suppressions, post=self.suppress)
        router.add("suppressions/(?P<pattern>[^/]+)", delete=self.unsuppress)

    async def _call(self, f: Any, *args: Any) -> Any:
        """``f(backend, *args)`` in this API's thread (the backend is opened there, on first use)."""
        if self._run is None:
            self._run = OwnThread()
        try:
            return await self._run(self._in_thread, f, *args)
        except ValueError:
            raise
        except Exception as e:  # Redis away, SQLite locked past its timeout: the client may try again
            log.failure("console: the state backend failed")
            raise ApiError(503, f"the state backend is unavailable: {e}", headers={"Retry-After": "5"}) from e

    def _in_thread(self, f: Any, *args: Any) -> Any:
        if self._backend is None:
            self._backend = open_backend(self.mta.options["state"], self.mta.options["data-dir"])
        return f(self._backend, *args)

    async def pauses(self, request: Any) -> Any:
        found = await self._call(lambda b: PauseList(b).list())
        return {"pauses": [p.to_json() for p in found]}

    async def pause(self, request: Any) -> Any:
        body = read_json(request)
        check("NewPause", body)
        seconds = duration(body)

        def add(backend: Backend) -> Any:
            return PauseList(backend).add(body.get("source"), body.get("domain"), body.get("tag"), seconds,
                                          body.get("reason") or "")

        try:
            pause = await self._call(add)
        except ValueError as e:
            raise _refused(e, "body") from None
        log.info("console: {who} paused source={source} domain={domain} tag={tag} ({id})", who=request.identity,
                 source=pause.source or "*", domain=pause.domain or "*", tag=pause.tag or "*", id=pause.id)
        return pause.to_json()

    async def unpause(self, request: Any, id: str) -> Any:
        if not await self._call(lambda b: PauseList(b).remove(id)):
            raise ApiError(404, f"no pause {id[:100]}")
        log.info("console: {who} removed pause {id}", who=request.identity, id=id)
        return {"ok": True}

    async def suppressions(self, request: Any) -> Any:
        found = await self._call(lambda b: SuppressionList(b).list())
        return {"suppressions": [s.to_json() for s in found]}

    async def suppress(self, request: Any) -> Any:
        body = read_json(request)
        check("NewSuppression", body)
        seconds = duration(body)

        def add(backend: Backend) -> Any:
            return SuppressionList(backend).add(body["pattern"], body.get("code", DEFAULT_CODE),
                                                body.get("enhanced", DEFAULT_ENHANCED),
                                                body.get("text", DEFAULT_TEXT), seconds)

        try:
            entry = await self._call(add)
        except ValueError as e:
            raise _refused(e, "/pattern") from None
        log.info("console: {who} suppressed {pattern}", who=request.identity, pattern=entry.pattern)
        return entry.to_json()

    async def unsuppress(self, request: Any, pattern: str) -> Any:
        try:
            removed = await self._call(lambda b: SuppressionList(b).remove(pattern))
        except ValueError as e:
            raise _refused(e, "pattern") from None
        if not removed:
            raise ApiError(404, f"{pattern[:300]} is not on the suppression list")
        log.info("console: {who} removed {pattern} from the suppression list", who=request.identity, pattern=pattern)
        return {"ok": True}
