"""A milter for tests, written here with Twisted and ``struct`` (not with mqmta's codec, so that it
checks the MTA's packets instead of agreeing with them): it records every command the MTA sends
and answers what its ``script`` says.

``script(cmd, args)`` returns the packets to answer with (``None``: continue, ``[]``: nothing at
all - a milter that never answers).  Helpers below make the packets; ``CLOSE`` makes it drop the
connection instead of answering.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, reactor

Script = Callable[[str, Any], "list[bytes] | bytes | None"]


def pkt(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def z(*strings: str) -> bytes:
    return b"".join(s.encode() + b"\0" for s in strings)


CONTINUE, ACCEPT, REJECT, TEMPFAIL, DISCARD = pkt(b"c"), pkt(b"a"), pkt(b"r"), pkt(b"t"), pkt(b"d")
PROGRESS, SKIP = pkt(b"p"), pkt(b"s")
CLOSE = b"<close>"


def reply_code(text: str) -> bytes:
    return pkt(b"y", z(text))


def add_header(name: str, value: str) -> bytes:
    return pkt(b"h", z(name, value))


def insert_header(index: int, name: str, value: str) -> bytes:
    return pkt(b"i", struct.pack(">I", index) + z(name, value))


def change_header(index: int, name: str, value: str) -> bytes:
    return pkt(b"m", struct.pack(">I", index) + z(name, value))


def change_from(address: str, *args: str) -> bytes:
    return pkt(b"e", z(address, *args))


def add_rcpt(address: str) -> bytes:
    return pkt(b"+", z(address))


def add_rcpt_par(address: str, *args: str) -> bytes:
    return pkt(b"2", z(address, *args))


def del_rcpt(address: str) -> bytes:
    return pkt(b"-", z(address))


def replace_body(data: bytes) -> bytes:
    return pkt(b"b", data)


def quarantine(reason: str) -> bytes:
    return pkt(b"q", z(reason))


#: Commands a milter never answers.
NO_ANSWER = {"A", "D", "Q"}
#: SMFIP_NR_* bit of each command that may waive its answer
NR = {"C": 0x1000, "H": 0x2000, "M": 0x4000, "R": 0x8000, "T": 0x10000, "L": 0x80, "N": 0x40000, "B": 0x80000}


def _strings(data: bytes) -> list[str]:
    return [s.decode() for s in data.split(b"\0")[:-1]]


def decode(cmd: str, data: bytes) -> Any:
    if cmd == "O":
        return struct.unpack(">III", data)
    if cmd == "D":
        values = _strings(data[1:])
        return chr(data[0]), dict(zip(values[::2], values[1::2], strict=True))
    if cmd == "C":
        end = data.index(b"\0")
        family = chr(data[end + 1])
        if family == "U":
            return data[:end].decode(), family, None, None
        (port,) = struct.unpack(">H", data[end + 2 : end + 4])
        return data[:end].decode(), family, port, data[end + 4 : -1].decode()
    if cmd in ("H", "Q", "A", "N", "T", "E"):
        return _strings(data)[0] if cmd == "H" else None
    if cmd in ("M", "R"):
        return _strings(data)
    if cmd == "L":
        return tuple(_strings(data))
    return data  # B: a body chunk


class MilterServerProtocol(protocol.Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""
        self.steps = 0
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack(">I", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                return
            cmd, body = chr(self.buffer[4]), self.buffer[5 : 4 + length]
            self.buffer = self.buffer[4 + length :]
            self.command(cmd, decode(cmd, body))

    def command(self, cmd: str, args: Any) -> None:
        milter = self.factory
        milter.seen.append((cmd, args))
        if cmd == "D":
            milter.macros.setdefault(args[0], {}).update(args[1])
        if cmd == "O":
            self.steps = milter.steps
            self.transport.write(pkt(b"O", struct.pack(">III", 6, milter.actions, milter.steps) + milter.symlist))
            return
        if cmd in NO_ANSWER or self.steps & NR.get(cmd, 0):
            if cmd == "Q":
                self.transport.loseConnection()
            return
        answer = milter.script(cmd, args)
        if answer is None:
            answer = [CONTINUE]
        elif isinstance(answer, bytes):
            answer = [answer]
        for packet in answer:
            if packet == CLOSE:
                self.transport.loseConnection()
                return
            self.transport.write(packet)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed += 1


class MilterPeer(protocol.Factory):
    """The milter; ``port`` once :meth:`start` fired."""

    protocol = MilterServerProtocol

    def __init__(self, script: Script | None = None, actions: int = 0x1FF, steps: int = 0,
                 symlist: bytes = b"") -> None:
        self.script: Script = script or (lambda cmd, args: None)
        self.actions = actions
        self.steps = steps
        self.symlist = symlist
        self.seen: list[tuple[str, Any]] = []
        self.macros: dict[str, dict[str, str]] = {}
        self.connections: list[MilterServerProtocol] = []
        self.closed = 0
        self.port = 0
        self.listening: Any = None

    @property
    def spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def commands(self) -> list[str]:
        return [cmd for cmd, _ in self.seen if cmd != "D"]

    def args(self, cmd: str) -> list[Any]:
        return [args for c, args in self.seen if c == cmd]

    def start(self) -> MilterPeer:
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        return self

    def stop(self) -> defer.Deferred:
        for conn in self.connections:
            conn.transport.abortConnection()
        return defer.maybeDeferred(self.listening.stopListening)
