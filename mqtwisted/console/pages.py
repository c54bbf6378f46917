"""The console's pages: the single page (``/``, ``static/``), the login form and the session.

The page is static HTML, CSS and JavaScript shipped in ``mqtwisted/console/static`` (no build
step); everything it shows comes from ``/v1`` and ``/console/events``.  With ``www-auth`` the
page sends a visitor without a session to ``/login``.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import resource, server, static

from mqtwisted.console.access import COOKIE, Guard, Guarded, same_origin
from mqtwisted.console.http import json_error_page

log = Logger()

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: the page may load its own script and style, talk to its own origin, and be framed by nobody
POLICY = (b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
          b"frame-ancestors 'none'; form-action 'self'")


def _page(request: Any, name: str) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", POLICY)
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"cache-control", b"no-store")
    with open(os.path.join(STATIC, name), "rb") as f:
        return f.read()


def _redirect(request: Any, to: bytes) -> bytes:
    request.setResponseCode(303)
    request.setHeader(b"location", to)
    return b""


class Index(Guarded):
    def render_GET(self, request: Any) -> bytes:
        if request.postpath and request.postpath != [b""]:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        if self.guard.page_session(request) is None:
            return _redirect(request, b"/login")
        return _page(request, "index.html")


class Login(Guarded):
    """The login form.  The logins of one client IP are checked one after the other: the
    ``www-auth-failures`` limit is asked before each, so a burst of guesses sent at once cannot
    all pass it while the first ones are still being checked."""

    def __init__(self, guard: Guard) -> None:
        super().__init__(guard)
        self.turns: dict[str, defer.DeferredLock] = {}

    def render_GET(self, request: Any) -> bytes:
        if self.guard.checker is None:
            return _redirect(request, b"/")
        return _page(request, "login.html")

    def render_POST(self, request: Any) -> Any:
        if self.guard.checker is None:
            return _redirect(request, b"/")
        if not same_origin(request):
            request.setResponseCode(403)
            return b"cross-origin login refused\n"
        request.content.seek(0)
        form = urllib.parse.parse_qs(request.content.read(4096).decode("utf-8", "replace"))
        user = (form.get("user") or [""])[0]
        password = (form.get("password") or [""])[0]
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))

        def answer(to: bytes) -> None:
            if not request.finished and not getattr(request, "gone", False):
                request.write(_redirect(request, to))
                request.finish()

        d = defer.ensureDeferred(self.attempt(request.getClientAddress().host, user, password, request))
        d.addCallback(answer)
        d.addErrback(lambda f: (log.failure("console: login", f), answer(b"/login?failed=1")))
        return server.NOT_DONE_YET

    async def attempt(self, ip: str, user: str, password: str, request: Any) -> bytes:
        """Where a login from ``ip`` leads: ``/`` (a session started), or back to the form."""
        turn = self.turns.setdefault(ip, defer.DeferredLock())
        await turn.acquire()
        try:
            return await self._check(ip, user, password, request)
        finally:
            turn.release()  # the next waiter may run to its end inside this call, and drop the lock
            if self.turns.get(ip) is turn and not turn.locked and not turn.waiting:
                del self.turns[ip]

    async def _check(self, ip: str, user: str, password: str, request: Any) -> bytes:
        failures = self.guard.failures
        wait = failures.wait(ip)
        if wait:
            # Refused before the password is checked: guessing learns nothing, and costs no hashing.
            return b"/login?locked=%d" % math.ceil(wait)
        # A file:// checker verifies bcrypt/yescrypt hashes: CPU work, off the reactor thread.
        checker = self.guard.checker
        ok = bool(user and password and checker) and await threads.deferToThread(checker, user, password)
        if ok:
            self.guard.start_session(request, user)
            log.info("console: {user} logged in from {ip}", user=user, ip=ip)
            return b"/"
        log.warn("console: login refused for {user!r} from {ip}", user=user[:64], ip=ip)
        failures.record(ip)
        if failures.exceeded(ip):
            log.warn("console: {ip}: {rate} failed logins: its logins are refused until the window passes",
                     ip=ip, rate=failures.rate)
        return b"/login?failed=1"


class Logout(Guarded):
    def render_POST(self, request: Any) -> Any:
        if self.refused(request, True):
            return server.NOT_DONE_YET
        key = request.getCookie(COOKIE)
        self.guard.sessions.end(key.decode("ascii", "replace") if key else None)
        request.addCookie(COOKIE, b"", path=b"/", max_age=b"0", httpOnly=True, sameSite="strict")
        return _redirect(request, b"/login" if self.guard.checker is not None else b"/")


class SessionInfo(Guarded):
    """``/console/session``: who is logged in and the CSRF token the page sends back."""

    def render_GET(self, request: Any) -> bytes:
        session = self.guard.page_session(request)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if session is None:
            request.setResponseCode(401)
            return json.dumps({"error": "log in first", "status": 401}).encode()
        return json.dumps({"user": session.user, "csrf": session.csrf,
                           "login": self.guard.checker is not None}).encode()


class Folder(resource.Resource):
    """A resource whose unknown children answer a JSON 404 (twisted.web's is HTML)."""

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return json_error_page(404, f"no such resource: {request.uri.decode('latin-1')[:200]}")


def static_files() -> resource.Resource:
    files = static.File(STATIC)
    files.childNotFound = json_error_page(404, "no such file")
    files.indexNames = []
    return files
