"""What the SMTP server is configured with: its settings, its line limits, and the callables it is
given for what happens after a command (``accept``) and for checking credentials.  Nothing about
queues or plugins: see :mod:`mqtwisted.cleanup` for what ``accept`` does with a message.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet import defer

from mqtwisted.anvil import Rate
from mqtwisted.connection import Connection
from mqtwisted.envelope import Body, Envelope

COMMAND_LINE = 512
PATH_LINE = 1024  # MAIL/RCPT with ESMTP parameters (RFC 5321 §4.5.3.1.4; ORCPT may be 500 alone)
AUTH_LINE = 12288  # RFC 4954 §4
BYTES_PER_TIMEOUT_RESET = 65536
MAX_PENDING = 65536  # bytes read ahead of a command still being decided before reading pauses


@attrs.define
class ServerConfig:
    """Everything the protocol needs to know, and nothing about queues or plugins."""

    hostname: str = "localhost"
    max_size: int = 26214400
    max_line: int = 1000
    timeout: float = 300.0
    max_recipients: int = 1000
    max_errors: int = 20
    max_connections: int = 0
    max_connections_per_ip: int = 0
    auth_plaintext: bool = False
    spill_dir: str | None = None
    #: per client IP, as Postfix's anvil: new connections, failed AUTH; and who is exempt
    connection_rate: Rate = Rate(0, 0.0)
    auth_failures: Rate = Rate(0, 0.0)
    limit_exceptions: tuple[str, ...] = ()
    #: proxies trusted to send a PROXY header (on the ports that expect one)
    proxy_from: tuple[str, ...] = ()
    #: free bytes to keep where accepted mail is stored (spill_dir's file system); 0: no check
    min_free: int = 0


Accept = Callable[[Connection, Envelope, Body], defer.Deferred]
Authenticator = Callable[[str, str], bool]
