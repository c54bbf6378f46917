"""Operational log lines (one per SMTP session, one per delivery attempt) and the observers that
write them: JSON lines, and twistd's text lines made cheaply.

Every line goes through :mod:`twisted.logger` with its facts as event fields, so ``--log-format
json`` (or ``twistd --logger mqtwisted.oplog.json_observer``, or ``twist --log-format json``)
gives machine-readable records with the same keys the text lines show.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventAsText,
    formatTime,
    jsonFileLogObserver,
    timeFormatRFC3339,
)
from zope.interface import implementer

from mqtwisted.metrics import METRICS


class LineLogger(Logger):
    """twisted's :class:`Logger` without its check, at every event, that the level is one of
    :class:`LogLevel`'s (it sorts all the levels each time: a fifth of what a delivery line
    cost).  Only this module emits through it, with LogLevel's own constants."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        kwargs.update(log_logger=self, log_level=level, log_namespace=self.namespace,
                      log_source=self.source, log_format=format, log_time=time.time())
        self.observer(kwargs)


smtp_log = LineLogger(namespace="mqtwisted.smtp.session")
delivery_log = LineLogger(namespace="mqtwisted.delivery.attempt")


def session_ended(server: Any) -> None:
    """One line when an SMTP session ends: who, how it ended, what it got through."""
    conn = server.conn
    outcome = getattr(server, "outcome", "lost")
    METRICS.session(outcome)
    started = getattr(server, "started", 0.0)
    accepted = getattr(server, "accepted", 0)
    refused = getattr(server, "refused", 0)
    duration = time.monotonic() - started if started else 0.0
    # The text is made here with an f-string and logged as "{line}": twisted.logger's
    # string.Formatter pass over a long format is the costliest part of a session at load.
    # The facts stay event fields for --log-format json.
    smtp_log.info(
        "{line}",
        line=(
            f"smtp session {conn.id} from {conn.remote_ip}:{conn.remote_port} helo={conn.helo} "
            f"user={conn.user} tls={conn.secure}: {outcome}; {accepted} accepted, "
            f"{refused} refused, {duration:.3f}s"
        ),
        session=conn.id,
        remote_ip=conn.remote_ip,
        remote_port=conn.remote_port,
        helo=conn.helo,
        user=conn.user,
        secure=conn.secure,
        outcome=outcome,
        accepted=accepted,
        refused=refused,
        duration=duration,
    )


def delivery_attempt(document: dict[str, Any], attempt: Any) -> None:
    """One line per delivery attempt at one message, and its count by state and result."""
    METRICS.attempt(attempt.state, attempt.result)
    recipient, envelope = document.get("recipient"), document.get("envelope") or ""
    cipher = attempt.cipher or {}
    tls = attempt.tls_policy
    if tls is not None and cipher:
        tls = f"{tls} {cipher.get('version')} {cipher.get('name')}"
    delivery_log.info(
        "{line}",
        line=(
            f"delivery to {recipient} from <{envelope}> via {attempt.mta} [{attempt.remote_ip}]: "
            f"{attempt.state} {attempt.result} {attempt.code} {attempt.status} {attempt.description}"
            + (f" (tls={tls})" if tls is not None else "")
        ),
        tls_policy=attempt.tls_policy,
        tls_version=cipher.get("version"),
        tls_cipher=cipher.get("name"),
        recipient=recipient,
        envelope=envelope,
        mta=attempt.mta,
        remote_ip=attempt.remote_ip,
        state=attempt.state,
        result=attempt.result,
        code=attempt.code,
        status=attempt.status,
        description=attempt.description,
    )


@implementer(ILogObserver)
class JSONLogObserver:
    """JSON lines (one event per line) to ``path``, or to the process's real standard output.

    It pickles (the TAP's Application carries it as its ``ILogObserver``): the file is opened on
    the first event, never stored.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._observer: Any = None
        self._file: IO[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_observer": None, "_file": None}

    def __call__(self, event: dict[str, Any]) -> None:
        if self._observer is None:
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)
            else:
                # Not sys.stdout: twistd redirects that into the log, which would loop.
                self._file = sys.__stdout__
            self._observer = jsonFileLogObserver(self._file, recordSeparator="")
        self._observer(event)


def json_observer() -> JSONLogObserver:
    """For ``twistd --logger mqtwisted.oplog.json_observer``: JSON lines on standard output."""
    return JSONLogObserver()


@implementer(ILogObserver)
class TextLogObserver:
    """twistd's text lines (``2026-11-25T06:45:03+0000 [system] text``, as
    :func:`twisted.logger.formatEventAsClassicLogText` makes them) on standard output, for a
    fraction of the cost: the timestamp is formatted once a second instead of once a line, and the
    lines this module pre-formats (``"{line}"``) skip the string formatter.  At a thousand messages
    a second the two log lines per message were the largest single cost of the delivery worker.

    It pickles (a TAP's Application may carry it): the stream is looked up on the first event.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._second = -1
        self._stamp = ""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_format") == "{line}" and "log_failure" not in event:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
            text = f"[{system}] {event.get('line')}"
        else:
            text = eventAsText(event, includeTimestamp=False)
            if not text:
                return
        when = event.get("log_time")
        if when is None:
            stamp = "-"
        else:
            second = int(when)
            if second != self._second:
                self._second, self._stamp = second, formatTime(second, timeFormatRFC3339)
            stamp = self._stamp
        stream = self._stream
        if stream is None:
            # Not sys.stdout: twistd redirects that into the log, which would loop.
            stream = self._stream = sys.__stdout__
        stream.write(f"{stamp} {text}".replace("\n", "\n\t") + "\n")
        stream.flush()
