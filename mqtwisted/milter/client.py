"""One connection to one milter, on Twisted: send a command, wait for its answer, with a deadline.

The MTA drives the conversation; at most one command waits for an answer at a time.  Whatever
goes wrong (the milter cannot be reached, closes the connection, says nothing for
``milter-timeout`` seconds, or sends something :mod:`~mqtwisted.milter.protocol` refuses) fails
the waiting Deferred with :class:`MilterFailed` and drops the connection: the chain then takes
the default action.  SMFIR_PROGRESS restarts the deadline.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mqtwisted.metrics import METRICS
from mqtwisted.milter import protocol as mp


class MilterFailed(Exception):
    """The milter is unusable for the rest of the session (the reason is the message)."""


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``inet:HOST:PORT`` or ``unix:/PATH`` (Postfix's and sendmail's form) as (kind, host or
    path, port); ValueError names what is wrong."""
    kind, _, rest = spec.partition(":")
    if kind in ("inet", "inet6") and rest:
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{spec!r}: expected inet:HOST:PORT")
        return "inet", host.strip("[]"), int(port)
    if kind in ("unix", "local") and rest:
        return "unix", rest, 0
    raise ValueError(f"{spec!r}: expected inet:HOST:PORT or unix:/PATH")


def parse_specs(value: str) -> list[str]:
    """``--milters``: a comma list of milter addresses, each checked."""
    specs = [s.strip() for s in str(value).split(",") if s.strip()]
    for spec in specs:
        parse_spec(spec)
    return specs


def endpoint_of(reactor: Any, spec: str, timeout: float) -> Any:
    # Imported here: twisted.internet.endpoints is most of the import time of this module, and
    # every MTA and delivery process imports it (options, the prepare step) milters or not.
    from twisted.internet import endpoints

    kind, where, port = parse_spec(spec)
    if kind == "unix":
        return endpoints.UNIXClientEndpoint(reactor, where, timeout=timeout)
    # An address needs no name lookup: HostnameEndpoint's (a thread hop per connection) cost
    # 6 ms of every SMTP session on the reactor thread.
    if isIPAddress(where):
        return endpoints.TCP4ClientEndpoint(reactor, where, port, timeout=timeout)
    if isIPv6Address(where):
        return endpoints.TCP6ClientEndpoint(reactor, where, port, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, where, port, timeout=timeout)


#: the command of a request (its fifth byte) as the console names the step
STEPS = {mp.CONNECT: "connect", mp.HELO: "helo", mp.MAIL: "mail", mp.RCPT: "rcpt", mp.DATA: "data",
         mp.HEADER: "header", mp.EOH: "eoh", mp.BODY: "body", mp.BODYEOB: "eom"}


class MilterConnection(protocol.Protocol):
    """The MTA's side of one milter connection."""

    def __init__(self, clock: IReactorTime, timeout: float, name: str) -> None:
        self.clock = clock
        self.timeout = timeout
        self.name = name
        self.decoder = mp.Decoder()
        self.waiting: defer.Deferred[list[mp.Response]] | None = None
        self.answers: list[mp.Response] = []
        self.negotiating = False
        self.timer: IDelayedCall | None = None
        self.lost = False
        self.why: str | None = None
        #: commands that get no answer, held until something is asked (or the QUIT)
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        # Commands whose reply the milter waived go out on their own and are never answered, so
        # the milter's kernel delays its ACK; with Nagle the next command would wait for that
        # ACK (about 40 ms per message, measured against rspamd).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)

    # -- asking ----------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Commands that get no answer (macros, ABORT, waived replies).  They go out with the next
        command that is answered, in one write: what the milter does not answer cannot change
        the SMTP dialogue, and a message rspamd answers only at its end then costs two writes
        instead of a dozen system calls on each side."""
        if not self.lost:
            self.pending.append(data)

    def _flush(self, data: bytes) -> None:
        self.pending.append(data)
        data, self.pending = b"".join(self.pending), []
        self.transport.write(data)

    def ask(self, data: bytes) -> defer.Deferred[list[mp.Response]]:
        """Send ``data`` and fire with the modifications that came before the final answer, then
        that answer (last).  Fails with :class:`MilterFailed`.  Each round trip is counted and
        timed in /metrics and the console, as a hook of the plugin ``milter NAME``."""
        started = time.perf_counter()
        step = STEPS.get(data[4:5], "other")

        def timed(result: Any) -> Any:
            METRICS.hook_time(f"milter {self.name}", step, time.perf_counter() - started)
            return result

        return self._ask(data, negotiating=False).addBoth(timed)

    def negotiate(self, data: bytes) -> defer.Deferred[mp.OptNeg]:
        return self._ask(data, negotiating=True).addCallback(lambda answers: answers[0])

    def _ask(self, data: bytes, negotiating: bool) -> defer.Deferred:
        if self.lost:
            return defer.fail(MilterFailed(f"milter {self.name}: {self.why or 'connection lost'}"))
        if self.waiting is not None:
            return defer.fail(MilterFailed(f"milter {self.name}: asked twice at once"))
        self.waiting = defer.Deferred()
        self.answers = []
        self.negotiating = negotiating
        self._arm()
        self._flush(data)
        return self.waiting

    def quit(self) -> None:
        """SMFIC_QUIT and close (nothing more is asked)."""
        if not self.lost:
            self._flush(mp.encode_simple(mp.QUIT))
            self.transport.loseConnection()

    # -- answers ---------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            for cmd, body in self.decoder.feed(data):
                self._packet(cmd, body)
                if self.lost:
                    return
        except mp.MilterProtocolError as e:
            self._fail(f"protocol error: {e}")

    def _packet(self, cmd: bytes, body: bytes) -> None:
        if self.waiting is None:
            raise mp.MilterProtocolError(f"response {cmd!r} to nothing asked")
        if self.negotiating:
            self._done([mp.decode_optneg(cmd, body)])
            return
        answer = mp.decode_response(cmd, body)
        if isinstance(answer, mp.Progress):
            self._arm()
            return
        self.answers.append(answer)
        if isinstance(answer, mp.Final):
            self._done(self.answers)

    def _done(self, answers: list[Any]) -> None:
        d, self.waiting = self.waiting, None
        self._disarm()
        if d is not None:
            d.callback(answers)

    def _arm(self) -> None:
        self._disarm()
        self.timer = self.clock.callLater(self.timeout, self._fail, f"no answer in {self.timeout:g} s")

    def _disarm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _fail(self, why: str) -> None:
        self._disarm()
        if self.why is None:
            self.why = why
        if not self.lost:
            self.lost = True
            self.transport.abortConnection()
        d, self.waiting = self.waiting, None
        if d is not None:
            d.errback(MilterFailed(f"milter {self.name}: {why}"))

    def connectionLost(self, reason: Any = None) -> None:
        self._fail("closed the connection")


class _Factory(protocol.Factory):
    def __init__(self, clock: IReactorTime, timeout: float, name: str) -> None:
        self.clock, self.timeout, self.name = clock, timeout, name

    def buildProtocol(self, addr: Any) -> MilterConnection:
        return MilterConnection(self.clock, self.timeout, self.name)


def connect(reactor: Any, spec: str, timeout: float) -> defer.Deferred[MilterConnection]:
    """A connection to the milter at ``spec``; fails with :class:`MilterFailed` (not reachable in
    ``timeout`` seconds, or a bad spec)."""
    try:
        endpoint = endpoint_of(reactor, spec, timeout)
    except ValueError as e:
        return defer.fail(MilterFailed(str(e)))
    d = endpoint.connect(_Factory(reactor, timeout, spec))

    def unreachable(failure: Any) -> None:
        raise MilterFailed(f"milter {spec}: cannot connect: {failure.getErrorMessage()}")

    d.addErrback(unreachable)
    return d
