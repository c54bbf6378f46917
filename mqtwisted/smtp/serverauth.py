"""AUTH (RFC 4954), PLAIN and LOGIN, as the SMTP server runs it: the exchange itself (prompts,
decoding) is :mod:`mqtwisted.smtp.sasl`; checking the credentials and asking the
``mq_smtp_in_authenticate`` hook is here, as a part of :class:`mqtwisted.smtp.server.SMTPServer`
kept in a module of its own so that the server's module stays about the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mqtwisted.connection import Reply
from mqtwisted.smtp import sasl
from mqtwisted.smtp.session import Transition


class AuthCommands:
    """The AUTH command of :class:`~mqtwisted.smtp.server.SMTPServer` (a mixin: it uses the
    server's replies, hook runner and session)."""

    _auth: sasl.AuthExchange | None
    factory: Any
    conn: Any
    session: Any
    _error: Callable[[Reply], None]
    _send: Callable[..., None]
    _run: Callable[..., None]

    def smtp_AUTH(self, arg: str, t: Transition) -> None:
        blocked = self.factory.auth_refusal(self.conn.remote_ip)
        if blocked is not None:
            self._error(blocked)
            return
        started = sasl.start(arg, t)
        if isinstance(started, Reply):
            self._error(started)
            return
        self._auth, initial = started
        if initial:
            self._auth_step(initial)
        else:
            self._send(Reply(334, sasl.FIRST_PROMPT[self._auth.mech]))

    def _auth_step(self, line: bytes) -> None:
        exchange = self._auth
        assert exchange is not None
        prompt = sasl.respond(exchange, line)
        if isinstance(prompt, Reply):
            self._auth = None
            self._error(prompt)
        elif prompt is not None:
            self._send(Reply(334, prompt))
        else:
            self._auth = None
            self._check_login(exchange)

    def _check_login(self, exchange: sasl.AuthExchange) -> None:
        login, password = exchange.login, exchange.password
        checker = self.factory.auth
        self.conn.authenticated = bool(checker is not None and checker(login, password))

        def verdict(reply: Reply | None) -> None:
            if reply is not None and reply.refuses:
                self.conn.authenticated = False
                self._error(reply)
            elif self.conn.authenticated:
                self.conn.user = login
                self.conn.auth_mechanism = exchange.mech
                self.session.advance(exchange.transition)
                self._send(reply or Reply(235, "Authentication successful", "2.7.0"))
            else:
                self.factory.auth_failed(self.conn.remote_ip)
                self._error(Reply(535, "Authentication credentials invalid", "5.7.8"))

        self._run(exchange.transition, verdict, login, password)
