"""Who may use the console and the API.

* ``www-auth`` (the forms of ``smtp-auth``, checked by :mod:`mqtwisted.auth`): the login page makes
  a session, kept in memory, named by an HttpOnly SameSite=Strict cookie.  A client IP past
  ``www-auth-failures`` failed logins is refused every login (the password is not even checked)
  until the window passes, as SMTP's ``smtp-auth-failures`` (:mod:`mqtwisted.anvil`).  Without ``www-auth`` the
  console listens on loopback only (the options refuse anything else) and every visitor gets an
  anonymous session.
* ``rest-tokens``: ``Authorization: Bearer TOKEN`` for applications (``hardcoded://A,B`` or
  ``file:///PATH``, one token per line, as ``sha256:HEX`` of the token or the token itself).
* CSRF: a request that changes something and is authenticated by the cookie must carry the
  session's token in ``X-CSRF-Token`` (the console's script reads it from ``/console/session``).
  A bearer token is never sent by a browser on its own, so it needs none.  With neither
  ``www-auth`` nor ``rest-tokens`` a client without credentials may use the API (loopback only),
  but not from a page of another origin (``Origin`` is checked).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from twisted.web import resource

from mqtwisted.anvil import EventLimit, Rate
from mqtwisted.console.http import ApiError, write_json

COOKIE = b"mqmta_session"
#: a session unused this long ends
IDLE_TIMEOUT = 12 * 3600.0
#: sessions kept at most: without www-auth every visitor gets one, so a script fetching the page
#: in a loop must not grow memory; the least recently used go first
MAX_SESSIONS = 10000


@attrs.define(eq=False)
class Session:
    user: str
    csrf: str
    seen: float


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: least recently seen first (``get`` moves a session to the end): the ones to expire or
        #: evict are at the front, without sorting the table at every new session
        self.table: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str) -> tuple[str, Session]:
        self.expire()
        while len(self.table) >= MAX_SESSIONS:
            self.table.popitem(last=False)
        key = secrets.token_urlsafe(32)
        session = self.table[key] = Session(user, secrets.token_urlsafe(32), self.clock())
        return key, session

    def get(self, key: str | None) -> Session | None:
        session = self.table.get(key) if key else None
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > IDLE_TIMEOUT:
            del self.table[key]  # type: ignore[arg-type]
            return None
        session.seen = now
        self.table.move_to_end(key)  # type: ignore[arg-type]
        return session

    def end(self, key: str | None) -> None:
        if key:
            self.table.pop(key, None)

    def expire(self) -> None:
        now = self.clock()
        while self.table and now - next(iter(self.table.values())).seen > IDLE_TIMEOUT:
            self.table.popitem(last=False)


class Guard:
    """The access rules above, for one site."""

    def __init__(self, checker: Callable[[str, str], bool] | None, tokens: frozenset[bytes] | None,
                 sessions: Sessions | None = None, failures: EventLimit | None = None) -> None:
        self.checker = checker
        self.tokens = tokens
        self.sessions = sessions or Sessions()
        #: failed logins per client IP (``www-auth-failures``)
        self.failures = failures or EventLimit(Rate(0, 0.0), time.monotonic)

    @property
    def open(self) -> bool:
        """No credentials configured at all (loopback only)."""
        return self.checker is None and not self.tokens

    def session(self, request: Any) -> Session | None:
        key = request.getCookie(COOKIE)
        return self.sessions.get(key.decode("ascii", "replace") if key else None)

    def start_session(self, request: Any, user: str) -> Session:
        key, session = self.sessions.create(user)
        request.addCookie(COOKIE, key.encode(), path=b"/", httpOnly=True, sameSite="strict")
        return session

    def page_session(self, request: Any) -> Session | None:
        """The session of a console page: without www-auth, one is made for any visitor."""
        session = self.session(request)
        if session is None and self.checker is None:
            session = self.start_session(request, "anonymous")
        return session

    def __call__(self, request: Any, writes: bool) -> str:
        """The identity of an API request, or ApiError 401/403."""
        auth = request.getHeader(b"authorization")
        if auth is not None:
            scheme, _, token = auth.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not self.tokens or not self.token_ok(token.strip()):
                raise ApiError(401, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
            return "token"
        session = self.session(request)
        if session is not None:
            if writes:
                sent = (request.getHeader(b"x-csrf-token") or b"").decode("latin-1")
                if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                    raise ApiError(403, "missing or wrong X-CSRF-Token for this session", field="X-CSRF-Token")
            return session.user
        if self.open:
            if writes and not same_origin(request):
                raise ApiError(403, "cross-origin request refused", field="Origin")
            return "anonymous"
        raise ApiError(401, "log in, or send Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"})

    def token_ok(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode()).digest()
        return any(hmac.compare_digest(digest, known) for known in self.tokens or ())


class Guarded(resource.Resource):
    """A console resource of its own (not a :class:`~mqtwisted.console.http.Router` route)
    behind ``guard``."""

    isLeaf = True

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def refused(self, request: Any, writes: bool) -> bool:
        """True when the guard refused ``request``: answered already, with its JSON 401/403."""
        try:
            self.guard(request, writes)
        except ApiError as e:
            write_json(request, e.status, e.body(), e.headers)
            return True
        return False


def same_origin(request: Any) -> bool:
    """Whether the request's Origin (if a browser sent one) is this site."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    parsed = urllib.parse.urlparse(origin.decode("latin-1"))
    return parsed.netloc.encode("latin-1") == host
