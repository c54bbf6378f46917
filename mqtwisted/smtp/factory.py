"""The listening side of the SMTP server: builds a session per connection, enforces the
connection limits and the per-client event limits (:mod:`mqtwisted.anvil`), watches the free
space where mail is stored, and holds greetings until the queue can store.  Pickles
(configuration only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.mail import smtp

from mqtwisted.anvil import EventLimit
from mqtwisted.connection import HookRunner, NoHooks, Reply
from mqtwisted.diskspace import FreeSpace, watching
from mqtwisted.filtering import Filters, NoFilters
from mqtwisted.smtp.config import Accept, Authenticator, ServerConfig
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.smtp.server import SMTPServer

log = Logger()


class SMTPFactory(smtp.SMTPFactory):
    """Builds sessions; enforces connection limits; pickles (no live state in ``__getstate__``)."""

    protocol = SMTPServer
    #: what the event limits and the free-space check count time with (tests set a task.Clock's)
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(
        self,
        config: ServerConfig,
        accept: Accept,
        relay: RelayPolicy,
        hooks: HookRunner | None = None,
        auth: Authenticator | None = None,
        tls: Any = None,
        filters: Filters | None = None,
    ) -> None:
        smtp.SMTPFactory.__init__(self)
        self.config = config
        self.accept = accept
        self.relay = relay
        self.hooks: HookRunner = hooks if hooks is not None else NoHooks()
        self.auth = auth
        self.filters: Filters = filters if filters is not None else NoFilters()
        self.tls = tls
        self.sessions: set[SMTPServer] = set()
        self.per_ip: dict[str, int] = {}
        self.total = 0
        #: greetings held until the queue has started (None: not held)
        self._held: list[Callable[[], None]] | None = None
        self._limits: dict[str, EventLimit] = {}
        self._space: FreeSpace | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(sessions=set(), per_ip={}, total=0, _held=None, _limits={}, _space=None)
        return state

    def _limit(self, name: str) -> EventLimit:
        """The live counter of ``config.<name>``, made again when SIGHUP changed the rate or
        the exceptions (its counts start over then, as Postfix's anvil does on a reload)."""
        config = self.config
        rate = getattr(config, name)
        limit = self._limits.get(name)
        if limit is None or limit.rate != rate or limit.networks != config.limit_exceptions:
            limit = self._limits[name] = EventLimit(rate, self.clock, config.limit_exceptions)
        return limit

    def storage_full(self) -> Reply | None:
        """``452 4.3.1`` while the file system of accepted mail has less than ``min_free``."""
        space = self._space = watching(self._space, self.config.spill_dir or ".", self.config.min_free, self.clock)
        if space.short():
            return Reply(452, "Insufficient system storage, try again later", "4.3.1")
        return None

    def auth_refusal(self, ip: str) -> Reply | None:
        """``454 4.7.0`` while ``ip`` is over ``smtp-auth-failures``."""
        if self._limit("auth_failures").exceeded(ip):
            return Reply(454, "Too many failed authentications, try again later", "4.7.0")
        return None

    def auth_failed(self, ip: str) -> None:
        limit = self._limit("auth_failures")
        limit.record(ip)
        if limit.exceeded(ip):
            log.warn("{ip}: {rate} failed AUTH: AUTH refused until the window passes", ip=ip, rate=limit.rate)

    def hold_greetings(self) -> None:
        """Connections wait for their 220 until :meth:`release_greetings`: the MTA listens at
        once, but a client greeted before the queue can store would only get 451 after DATA."""
        if self._held is None:
            self._held = []

    def release_greetings(self) -> None:
        held, self._held = self._held or [], None
        for greet in held:
            greet()

    def when_ready(self, greet: Callable[[], None]) -> None:
        if self._held is None:
            greet()
        else:
            self._held.append(greet)

    def buildProtocol(self, addr: Any) -> SMTPServer:
        p = self.protocol(contextFactory=self.tls)
        p.factory = self
        return p

    def admit(self, session: SMTPServer) -> Reply | None:
        ip = session.conn.remote_ip
        config = self.config
        if config.max_connections and len(self.sessions) >= config.max_connections:
            return Reply(421, f"{config.hostname} Too many connections, try again later", "4.7.0")
        if config.max_connections_per_ip and self.per_ip.get(ip, 0) >= config.max_connections_per_ip:
            return Reply(421, f"{config.hostname} Too many connections from {ip}", "4.7.0")
        rate = self._limit("connection_rate")
        if not rate.admit(ip):
            log.warn("{ip}: over smtp-connection-rate {rate}: connection refused", ip=ip, rate=rate.rate)
            return Reply(421, f"{config.hostname} Too many connections from {ip}, slow down", "4.7.0")
        self.sessions.add(session)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.total += 1
        return None

    def release(self, session: SMTPServer) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            ip = session.conn.remote_ip
            left = self.per_ip.get(ip, 1) - 1
            if left:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)


class BehindProxy(protocol.Factory):
    """The factory of a port whose clients come through a proxy (``smtp-proxy-ports``): the same
    sessions, limits and counts as ``factory``'s, each told to read a PROXY header first."""

    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: Any) -> SMTPServer:
        session = self.factory.buildProtocol(addr)
        session.expect_proxy_header = True
        return session
