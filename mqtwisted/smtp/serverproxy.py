"""The first bytes of a session on a port behind a proxy (``smtp-proxy-ports``): the PROXY header.

Read before anything else, so that admission (connection limits, ``smtp-connection-rate``), the
connect hook, ``smtp-range`` relay decisions and the JSON all see the real client.  Only proxies in
``smtp-proxy-from`` may send one: anyone else could claim any address.  A session that never
completes its header is closed by the idle timeout like any other.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from mqtwisted.connection import Connection, Reply
from mqtwisted.networks import in_networks
from mqtwisted.smtp.proxyheader import ProxyHeaderError, parse

log = Logger()

NOT_A_PROXY = Reply(421, "PROXY protocol not accepted from this address", "4.7.0")
BAD_HEADER = Reply(421, "Invalid PROXY protocol header", "5.5.2")


class ProxyHeaderSession:
    """Mixed into :class:`mqtwisted.smtp.server.SMTPServer`: holds its start until the header."""

    #: set by :class:`mqtwisted.smtp.factory.BehindProxy` for the ports that expect a header
    expect_proxy_header = False
    conn: Connection
    factory: Any
    _proxy_buffer: bytes | None = None

    def _send(self, reply: Reply) -> None: ...  # SMTPServer's
    def _close(self) -> None: ...  # SMTPServer's
    def _admit(self) -> None: ...  # SMTPServer's: the start of a session once the client is known

    def _await_proxy_header(self) -> None:
        if not in_networks(self.factory.config.proxy_from, self.conn.remote_ip):
            log.warn("{ip}: sent to a PROXY port but not in smtp-proxy-from: closed", ip=self.conn.remote_ip)
            self._send(NOT_A_PROXY)
            self._close()
            return
        self._proxy_buffer = b""

    def _proxy_header_data(self, data: bytes) -> bytes | None:
        """Consume header bytes; the bytes after the header once it is complete, else None."""
        buffer = (self._proxy_buffer or b"") + data
        try:
            parsed = parse(buffer)
        except ProxyHeaderError as e:
            log.warn("{ip}: {error}: closed", ip=self.conn.remote_ip, error=str(e))
            self._proxy_buffer = None
            self._send(BAD_HEADER)
            self._close()
            return None
        if parsed is None:
            self._proxy_buffer = buffer
            return None
        length, proxied = parsed
        self._proxy_buffer = None
        if proxied is not None:
            conn = self.conn
            conn.remote_ip, conn.remote_port = proxied.client_ip, proxied.client_port
            conn.local_ip, conn.local_port = proxied.server_ip, proxied.server_port
        self._admit()
        return buffer[length:]

    @property
    def awaiting_proxy_header(self) -> bool:
        return self._proxy_buffer is not None
