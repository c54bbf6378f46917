"""Who may send mail where: the relay rules (no open relay, ever).

* mail for a ``local-domains`` domain is accepted from anyone (it goes to the ``local`` queue);
* anything else only from an authenticated client or from an ``smtp-range`` network.
"""

from __future__ import annotations

import attrs

from mqtwisted.connection import Connection
from mqtwisted.networks import in_networks, parse_networks
from mqtwisted.smtp.commands import domain_of

DEFAULT_RANGE = ("127.0.0.0/8", "::1/128")


@attrs.frozen
class RelayPolicy:
    trusted: tuple[str, ...] = attrs.field(default=DEFAULT_RANGE, converter=tuple)
    local_domains: frozenset[str] = frozenset()

    def __attrs_post_init__(self) -> None:
        parse_networks(self.trusted)  # a bad range fails here, at start, not at the first RCPT

    def is_local(self, address: str) -> bool:
        return domain_of(address) in self.local_domains

    def is_trusted(self, ip: str) -> bool:
        return in_networks(self.trusted, ip)

    def may_relay(self, conn: Connection) -> bool:
        return conn.authenticated or self.is_trusted(conn.remote_ip)
