"""JSON over twisted.web: a router of ``async`` handlers that answers every error as JSON.

twisted.web answers an unknown method with a 501 HTML page and an exception with a traceback page
(or a bare 500); an API client wants ``{"error": ...}`` with the right status.  :class:`Router` is a
leaf resource that matches the rest of the path against its routes: no route is a 404, a route
without the method a 405 with ``Allow``, an :class:`ApiError` its own status (400 names the
field), the queue down a 503, anything else a logged 500 that says nothing more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from mqtwisted.queue import QueueUnavailable

log = Logger()

Handler = Callable[..., Awaitable[Any]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "status": self.status}
        if self.field is not None:
            out["field"] = self.field
        return out


@attrs.frozen
class Reply:
    """A handler's answer when it is not 200 with a JSON body."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = attrs.field(factory=dict)


def write_json(request: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    if request.finished or getattr(request, "gone", False):
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode(), value.encode())
    request.write(json.dumps(body).encode() + b"\n")
    request.finish()


def read_json(request: Any) -> Any:
    """The request's JSON body (400 when it is not JSON, 413 when it was too large)."""
    if getattr(request, "too_large", False):
        raise ApiError(413, f"request body larger than {request.channel.site.max_body} bytes")
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        raise ApiError(415, "send the body as application/json", field="content-type")
    request.content.seek(0)
    raw = request.content.read()
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not JSON: {e}", field="body") from e


def loads(raw: bytes | str) -> Any:
    """JSON as RFC 8259 has it: Python also reads NaN and Infinity, which would pass every
    comparison with a limit (a NaN duration, a NaN nextattempt).  ValueError for what is not."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        # a few kB of "[" reach the decoder's recursion limit: bad input, not an internal error
        raise ValueError("arrays or objects nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class Router(resource.Resource):
    """Routes ``METHOD path`` (the path below this resource) to handlers.

    ``guard(request, writes)`` is called before each handler; it raises ApiError (401, 403)
    or returns the identity the handler gets as ``request.identity``.
    """

    isLeaf = True

    def __init__(self, guard: Callable[[Any, bool], Any]) -> None:
        super().__init__()
        self.guard = guard
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler], bool]] = []

    def add(self, pattern: str, public: bool = False, **methods: Handler) -> None:
        """``pattern`` matches the path below this resource ("queues/(?P<name>[^/]+)")."""
        self.routes.append((re.compile(f"^{pattern}$"), {m.upper(): h for m, h in methods.items()}, public))

    def render(self, request: Any) -> Any:
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def _handle(self, request: Any) -> None:
        path = "/".join(p.decode("utf-8", "replace") for p in request.postpath)
        method = request.method.decode("ascii", "replace").upper()
        for pattern, methods, public in self.routes:
            m = pattern.match(path)
            if m is None:
                continue
            handler = methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                allow = ", ".join(sorted(methods))
                raise ApiError(405, f"{method} is not allowed here; use {allow}", headers={"Allow": allow})
            if not public:
                request.identity = self.guard(request, method not in ("GET", "HEAD"))
            answer = await handler(request, **m.groupdict())
            if isinstance(answer, Reply):
                if not isinstance(answer.body, bytes):
                    write_json(request, answer.status, answer.body, answer.headers)
                elif not request.finished:
                    request.setResponseCode(answer.status)
                    request.setHeader(b"content-type", answer.content_type.encode())
                    request.write(answer.body)
                    request.finish()
            elif answer is not server.NOT_DONE_YET:
                write_json(request, 200, answer)
            return
        raise ApiError(404, f"no such resource: /{request.prepath[-1].decode() if request.prepath else ''}/{path}")

    def _failed(self, failure: Any, request: Any) -> None:
        e = failure.value
        if isinstance(e, ApiError):
            write_json(request, e.status, e.body(), e.headers)
        elif isinstance(e, QueueUnavailable):
            write_json(request, 503, {"error": f"the queue is unavailable: {e}", "status": 503},
                       {"Retry-After": "5"})
        else:
            log.failure("{method} {uri} failed", failure, method=request.method, uri=request.uri)
            write_json(request, 500, {"error": "internal error (logged by the MTA)", "status": 500})


def json_error_page(status: int, message: str) -> resource.Resource:
    """A resource that answers every method with a JSON error (twisted.web's are HTML)."""

    class Error(resource.Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": message, "status": status}).encode() + b"\n"

    return Error()


class LimitedRequest(server.Request):
    """A request whose body is dropped past the site's ``max_body`` (the handler answers 413),
    so a huge upload fills neither memory nor the temporary file twisted.web keeps it in."""

    too_large = False
    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self.too_large = True
            return
        super().handleContentChunk(data)


class ConsoleSite(server.Site):
    """No access log line per request (the console polls), no tracebacks, bodies bounded."""

    noisy = False
    displayTracebacks = False
    requestFactory = LimitedRequest

    def __init__(self, root: resource.Resource, max_body: int) -> None:
        super().__init__(root)
        self.max_body = max_body

    def log(self, request: Any) -> None:
        pass
