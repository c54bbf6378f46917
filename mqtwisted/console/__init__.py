"""The operator's console and the REST API on ``www-port``.

``make_root(mta, series)`` builds the resource tree:

* ``/`` the console (``pages``: one static page and its script), ``/login``, ``/logout``,
  ``/static/…``, ``/console/session`` (the CSRF token), ``/console/events`` (the delivery log as
  server-sent events, ``events``);
* ``/v1/…`` the REST API (``http.Router``): ``inject`` (``api_inject``), ``queues``
  (``api_queues`` on :mod:`mqtwisted.queue.admin`), ``pauses`` and ``suppressions``
  (``api_holds`` on :mod:`mqtwisted.state`), the console's views (``api_status``), the
  OpenAPI document (``openapi``);
* ``/metrics`` and ``/status``, as before (:mod:`mqtwisted.web`).

Who may use what is :mod:`mqtwisted.console.access`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.web import resource

from mqtwisted.anvil import EventLimit, Rate
from mqtwisted.console.access import Guard
from mqtwisted.console.api_holds import HoldsApi
from mqtwisted.console.api_inject import InjectApi
from mqtwisted.console.api_queues import QueueApi
from mqtwisted.console.api_status import StatusApi
from mqtwisted.console.events import Events
from mqtwisted.console.http import Reply, Router
from mqtwisted.console.openapi import document
from mqtwisted.console.pages import Folder, Index, Login, Logout, SessionInfo, static_files
from mqtwisted.console.series import Series


def make_guard(options: Any) -> Guard:
    from mqtwisted.auth import load_checker, load_tokens

    checker = load_checker(options["www-auth"], "www-auth") if options.get("www-auth") else None
    tokens = load_tokens(options["rest-tokens"]) if options.get("rest-tokens") else None
    return Guard(checker, tokens, failures=EventLimit(Rate.parse(options["www-auth-failures"]), time.monotonic))


def make_api(mta: Any, guard: Guard, series: Series) -> Router:
    router = Router(guard)
    spec = json.dumps(document(), indent=1).encode()

    async def openapi(request: Any) -> Reply:
        return Reply(200, spec, "application/json")

    router.add("openapi.json", public=True, get=openapi)
    InjectApi(mta).install(router)
    QueueApi(mta).install(router)
    HoldsApi(mta).install(router)
    StatusApi(mta, series).install(router)
    return router


def make_root(mta: Any, series: Series, extra: dict[bytes, resource.Resource]) -> resource.Resource:
    guard = make_guard(mta.options)
    root = Folder()
    index = Index(guard)
    root.putChild(b"", index)
    root.putChild(b"login", Login(guard))
    root.putChild(b"logout", Logout(guard))
    root.putChild(b"static", static_files())
    console = Folder()
    console.putChild(b"session", SessionInfo(guard))
    console.putChild(b"events", Events(guard))
    root.putChild(b"console", console)
    root.putChild(b"v1", make_api(mta, guard, series))
    for name, child in extra.items():
        root.putChild(name, child)
    return root
