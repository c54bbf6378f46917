"""Who may send mail where: the relay rules (no open relay, ever).

* mail for a ``local-domains`` domain is accepted from anyone (it goes to the ``local`` queue);
* anything else only from an authenticated client or from an ``smtp-range`` network.
"""

from __future__ import annotations

import attrs

from mqtwisted.connection import Connection
from mqtwisted.networks import in_parsed, parse_networks
from mqtwisted.smtp.commands import domain_of

DEFAULT_RANGE = ("127.0.0.0/8", "::1/128")


@attrs.frozen
class RelayPolicy:
    trusted: tuple[str, ...] = DEFAULT_RANGE
    local_domains: frozenset[str] = frozenset()
    _networks: tuple = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_networks", parse_networks(self.trusted))

    def __getstate__(self) -> dict:
        return {"trusted": self.trusted, "local_domains": self.local_domains}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "trusted", state["trusted"])
        object.__setattr__(self, "local_domains", state["local_domains"])
        self.__attrs_post_init__()

    def is_local(self, address: str) -> bool:
        return domain_of(address) in self.local_domains

    def is_trusted(self, ip: str) -> bool:
        return in_parsed(self._networks, ip)

    def may_relay(self, conn: Connection) -> bool:
        return conn.authenticated or self.is_trusted(conn.remote_ip)
