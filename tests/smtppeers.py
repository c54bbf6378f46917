"""Small scriptable SMTP servers for the delivery tests (greylisting, refusals, no STARTTLS,
self-signed certificates), usable in memory (iosim) and on real loopback sockets."""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import protocol
from twisted.protocols.basic import LineReceiver


class ScriptedFactory(protocol.ServerFactory):
    """``replies`` maps a step (``greeting``, ``EHLO``, ``MAIL``, ``RCPT``, ``DATA``, ``END``,
    ``RSET``) to a list of replies used in order (then the default).  Every session is kept."""

    def __init__(
        self,
        *,
        extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "DSN", "SIZE 10000000"),
        replies: dict[str, list[str]] | None = None,
        tls: Any = None,
        name: str = "mx.test",
    ) -> None:
        self.extensions = list(extensions)
        if tls is not None and "STARTTLS" not in self.extensions:
            self.extensions.append("STARTTLS")
        self.replies = {k: deque(v) for k, v in (replies or {}).items()}
        self.tls = tls
        self.name = name
        self.sessions: list[ScriptedSMTP] = []
        self.messages: list[dict[str, Any]] = []
        self.connections = 0
        #: answer 354 to DATA even with no accepted recipient (RFC 2920 allows it; some do)
        self.data_without_recipients = False

    def buildProtocol(self, addr: Any) -> ScriptedSMTP:
        p = ScriptedSMTP()
        p.factory = self
        self.sessions.append(p)
        self.connections += 1
        return p

    def reply(self, step: str, default: str) -> str:
        q = self.replies.get(step)
        return q.popleft() if q else default


class ScriptedSMTP(LineReceiver):
    factory: ScriptedFactory
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        self.raw = bytearray()
        self.commands: list[bytes] = []
        self.data: list[bytes] | None = None
        self.mail: dict[str, Any] = {}
        self.tls = False
        self.sendLine(self.factory.reply("greeting", f"220 {self.factory.name} ESMTP scripted").encode())

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            if line == b".":
                body, self.data = b"\r\n".join(self.data) + b"\r\n", None
                self.mail["body"] = body
                if not self.mail.get("rcpt"):
                    self.sendLine(b"554 5.5.1 no valid recipients")
                    return
                answer = self.factory.reply("END", "250 2.0.0 queued as X")
                if answer.startswith("2"):
                    self.factory.messages.append(dict(self.mail))
                self.sendLine(answer.encode())
                return
            self.data.append(line[1:] if line.startswith(b".") else line)
            return
        self.commands.append(line)
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb == b"EHLO":
            answer = self.factory.reply("EHLO", "")
            if answer:
                self.sendLine(answer.encode())
                return
            lines = [self.factory.name] + [e for e in self.factory.extensions if not (self.tls and e == "STARTTLS")]
            for i, text in enumerate(lines):
                self.sendLine(("250-" if i < len(lines) - 1 else "250 ").encode() + text.encode())
        elif verb == b"HELO":
            self.sendLine(self.factory.reply("HELO", "250 hello").encode())
        elif verb == b"STARTTLS" and self.factory.tls is not None:
            self.sendLine(self.factory.reply("STARTTLS", "220 2.0.0 go ahead").encode())
            self.transport.startTLS(self.factory.tls)
            self.tls = True
        elif verb == b"MAIL":
            answer = self.factory.reply("MAIL", "250 2.1.0 ok")
            self.mail = {"from": line, "tls": self.tls} if answer.startswith("2") else {}
            self.sendLine(answer.encode())
        elif verb == b"RCPT":
            # As a real server does: no transaction, no recipients (matters when pipelined,
            # where RCPT and DATA follow a refused MAIL and must not use up scripted replies).
            if "from" not in self.mail:
                self.sendLine(b"503 5.5.1 need MAIL")
                return
            answer = self.factory.reply("RCPT", "250 2.1.5 ok")
            if answer.startswith("2"):
                self.mail.setdefault("rcpt", []).append(line)
            self.sendLine(answer.encode())
        elif verb == b"DATA":
            if not self.mail.get("rcpt") and not self.factory.data_without_recipients:
                self.sendLine(b"554 5.5.1 no valid recipients")
                return
            answer = self.factory.reply("DATA", "354 go ahead")
            if answer.startswith("354"):
                self.data = []
            self.sendLine(answer.encode())
        elif verb == b"RSET":
            self.mail = {}
            self.sendLine(self.factory.reply("RSET", "250 2.0.0 ok").encode())
        elif verb == b"AUTH":
            self.sendLine(self.factory.reply("AUTH", "235 2.7.0 ok").encode())
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 unknown")
