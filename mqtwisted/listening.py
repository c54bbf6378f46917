"""Listening sockets that fail the way an operator can act on: one line naming the option.

Twisted's ``TCPServer`` raises ``CannotListenError`` out of ``privilegedStartService``, and twistd
prints it as a thirty-line traceback.  Here the same failure ends the start with the option whose
value could not be bound, the address and the system's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application import internet
from twisted.internet.error import CannotListenError

T = TypeVar("T")


class ListenFailed(SystemExit):
    """Ends the start: raised as SystemExit so twistd exits non-zero with just this line."""


def bind_or_exit(listen: Callable[[], T], option: str) -> T:
    """Run ``listen``; a port that cannot be bound becomes one line naming ``option``."""
    try:
        return listen()
    except CannotListenError as e:
        reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
        where = f"{e.interface or '*'}:{e.port}"
        raise ListenFailed(f"mqmta: --{option}: cannot listen on {where}: {reason}") from None


class TCPListener(internet.TCPServer):
    """``internet.TCPServer`` that knows which option asked for it."""

    def __init__(self, option: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option = option

    def privilegedStartService(self) -> None:
        bind_or_exit(super().privilegedStartService, self.option)

    def startService(self) -> None:
        bind_or_exit(super().startService, self.option)


class SSLListener(internet.SSLServer):
    """``internet.SSLServer`` that knows which option asked for it."""

    def __init__(self, option: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option = option

    def privilegedStartService(self) -> None:
        bind_or_exit(super().privilegedStartService, self.option)

    def startService(self) -> None:
        bind_or_exit(super().startService, self.option)
