"""The listening side of the SMTP server: builds a session per connection, enforces the
connection limits, and holds greetings until the queue can store.  Pickles (configuration only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.mail import smtp

from mqtwisted.connection import HookRunner, NoHooks, Reply
from mqtwisted.filtering import Filters, NoFilters
from mqtwisted.smtp.config import Accept, Authenticator, ServerConfig
from mqtwisted.smtp.policy import RelayPolicy
from mqtwisted.smtp.server import SMTPServer


class SMTPFactory(smtp.SMTPFactory):
    """Builds sessions; enforces connection limits; pickles (no live state in ``__getstate__``)."""

    protocol = SMTPServer

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

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(sessions=set(), per_ip={}, total=0, _held=None)
        return state

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
