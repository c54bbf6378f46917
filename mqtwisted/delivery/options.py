"""Delivery's settings and the MTA options they come from.

Every option read here is declared in :data:`mqtwisted.options.OPTIONS`, with its default and
help; an option given neither on the command line nor in the config file takes that default, so
the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mqtwisted import options as mta_options
from mqtwisted.jsonvalues import parse_intervals
from mqtwisted.milter.client import parse_specs
from mqtwisted.results import DEFAULT_MAX_DELIVERTIME, DEFAULT_RETRY_INTERVALS
from mqtwisted.shaping import Limits
from mqtwisted.shaping.rates import parse_duration

#: The queues delivery consumes (``outbox``) and publishes to, each named by the option of the
#: same name.
QUEUE_ROLES: tuple[str, ...] = ("outbox", "results", "success", "failure", "retry", "dsn")


def _optional_text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = mta_options.default("smtp-defaultips") if not value.strip() else value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _milter_list(value: Any) -> tuple[str, ...]:
    return tuple(parse_specs(value) if isinstance(value, str) else value)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("on", "yes", "true", "1")
    return bool(value)


def _schedule(value: Any) -> tuple[int, ...]:
    return parse_intervals(value) or DEFAULT_RETRY_INTERVALS


#: DeliveryOptions field, the MTA option it is read from, and the conversion.
OPTION_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("helo", "hostname", _optional_text),
    ("dns_server", "dns-server", _optional_text),
    ("smarthost", "smarthost", _optional_text),
    ("port", "delivery-port", int),
    ("max_connections_per_domain", "max-connections-per-domain", int),
    ("max_messages_per_connection", "max-messages-per-connection", int),
    ("max_recipients", "max-recipients-per-transaction", int),
    ("max_idle_time", "max-idle-time", float),
    ("retry_interval", "retry-interval", _schedule),
    ("max_delivertime", "max-delivertime", lambda v: int(float(v))),
    ("max_attempts", "max-attempts", int),
    ("delay_warning_time", "delay-warning-time", parse_duration),
    ("security", "smtp-client-security", str),
    ("timeout", "smtp-client-timeout", float),
    ("connect_timeout", "connect-timeout", float),
    ("tls_ca", "tls-ca", _optional_text),
    ("mta_sts", "mta-sts", _flag),
    ("mta_sts_port", "mta-sts-port", int),
    ("dane", "dane", _flag),
    ("data_dir", "data-dir", _optional_text),
    ("dkim_keys", "dkim-keys", _optional_text),
    ("shaping", "shaping", _optional_text),
    ("default_ips", "smtp-defaultips", _addresses),
    ("bounce_rules", "bounce-rules", _optional_text),
    ("milters_out", "milters-out", _milter_list),
    ("milter_timeout", "milter-timeout", float),
    ("milter_default_action", "milter-default-action", str),
    ("state", "state", _optional_text),
)


def option_names() -> list[str]:
    """Every MTA option :meth:`DeliveryOptions.from_options` reads."""
    return [name for _, name, _ in OPTION_FIELDS] + list(QUEUE_ROLES)


@attrs.define
class DeliveryOptions:
    """Delivery settings; :meth:`from_options` reads them from the MTA's option names.  The
    defaults here equal the declared defaults of those options (a test holds them together)."""

    helo: str | None = None
    dns_server: str | None = None
    smarthost: str | None = None
    #: the SMTP port of MX hosts (25; tests point it elsewhere)
    port: int = 25
    max_connections_per_domain: int = 10
    max_messages_per_connection: int = 100
    #: recipients sent in one transaction when their documents share a message and a destination
    max_recipients: int = 50
    #: seconds an outbound connection with nothing to send stays open for the next message to
    #: its destination (0: QUIT at once).  MailerQ keeps idle connections too: under a trickle
    #: of mail, a new connection per message costs more than the message itself.
    max_idle_time: float = 5.0
    retry_interval: tuple[int, ...] = DEFAULT_RETRY_INTERVALS
    max_delivertime: int = DEFAULT_MAX_DELIVERTIME
    max_attempts: int = 0
    #: seconds after its arrival a message still retried gets its one "delayed" DSN (0: never)
    delay_warning_time: float = 4 * 3600
    security: str = "opportunistic"
    #: seconds to wait for each reply of the receiving server
    timeout: float = 300
    connect_timeout: float = 30
    prefetch: int = 1000
    #: queue names by role (outbox, results, success, failure, retry, dsn)
    queues: dict[str, str] = attrs.field(factory=lambda: {role: role for role in QUEUE_ROLES})
    #: PEM bundle of the CAs that verify receivers and MTA-STS policy hosts (default: the system's)
    tls_ca: str | None = None
    #: follow MTA-STS policies; their HTTPS port (443 but on test networks)
    mta_sts: bool = True
    mta_sts_port: int = 443
    #: follow authenticated TLSA records
    dane: bool = True
    #: where MTA-STS policies are cached (``data_dir/mta-sts``)
    data_dir: str | None = "mqmta-data"
    ipv6: bool = True
    #: the ``--dkim-keys`` file (signing keys by sender domain), or None
    dkim_keys: str | None = None
    #: the traffic shaping file (:mod:`mqtwisted.shaping`); None: the limits above only
    shaping: str | None = None
    #: local addresses for messages that name no ``ips`` or ``pool``
    default_ips: tuple[str, ...] = ()
    #: the operator's bounce classification rules (:mod:`mqtwisted.classify`), or None
    bounce_rules: str | None = None
    #: ``--milters-out``: milters each message passes before it is sent
    milters_out: tuple[str, ...] = ()
    milter_timeout: float = 30.0
    milter_default_action: str = "tempfail"
    #: ``--state``: None for the data directory, or a redis:// URL (:mod:`mqtwisted.state`)
    state: str | None = None
    #: where ``state.sqlite3`` is kept without ``--state`` (the MTA's data directory); None: in
    #: memory only (a service built by hand)
    state_dir: str | None = None

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> DeliveryOptions:
        """From a mapping with the command-line names (``max-connections-per-domain`` …); a name
        absent or empty takes its declared default."""

        def get(name: str) -> Any:
            for key in (name, name.replace("-", "_")):
                if key in opts and opts[key] not in (None, ""):
                    return opts[key]
            return mta_options.default(name)

        fields = {field: convert(get(name)) for field, name, convert in OPTION_FIELDS}
        if fields["tls_ca"] is None:
            fields["tls_ca"] = _optional_text(get("smtp-client-ca"))  # tls-ca's old name
        return cls(queues={role: str(get(role)) for role in QUEUE_ROLES}, **fields)

    def base_limits(self) -> Limits:
        """The limits of a destination the shaping file says nothing about: these options."""
        return Limits(
            connection_limit=self.max_connections_per_domain,
            max_deliveries_per_connection=self.max_messages_per_connection,
            idle_timeout=self.max_idle_time,
        )

    def queue(self, role: str) -> str:
        """The configured name of the queue for ``role``."""
        return self.queues.get(role, role)
