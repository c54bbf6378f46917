"""Every mqmta option, once: the command line (``twistd mqmta``, ``mqmta mktap``) and the
MailerQ-style config file (``key: value`` lines, ``#`` comments) are both made from this table.
The command line wins over the file; the file wins over the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.python import usage

from mqtwisted.jsonvalues import SECURITY_LEVELS
from mqtwisted.queue import AMQP_QUEUE_TYPES
from mqtwisted.shaping.rates import parse_duration


class ConfigError(usage.UsageError):
    """A bad option value or config line; the message names the file, line and key."""


def _port_list(value: str) -> list[int]:
    ports = []
    for part in str(value).split(","):
        part = part.strip()
        if not part:
            continue
        port = int(part)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        ports.append(port)
    return ports


def _optional_port(value: str) -> int | None:
    ports = _port_list(value)
    return ports[0] if ports else None


def _csv(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _on_off(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("on", "yes", "true", "1"):
        return True
    if v in ("off", "no", "false", "0"):
        return False
    raise ValueError("expected on or off")


def _choice(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return check


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must not be negative")
    return n


def _seconds(value: str) -> float:
    n = float(value)
    if n < 0:
        raise ValueError("must not be negative")
    return n


def _positive_seconds(value: str) -> float:
    n = float(value)
    if not n > 0:  # 0 would retry in a busy loop
        raise ValueError("must be more than 0")
    return n


def _ip_list(value: str) -> list[str]:
    import ipaddress

    return [str(ipaddress.ip_address(v)) for v in _csv(value)]


def _milters(value: str) -> list[str]:
    from mqtwisted.milter.client import parse_specs

    return parse_specs(value)


def _networks(value: str) -> list[str]:
    import ipaddress

    return [str(ipaddress.ip_network(v, strict=False)) for v in _csv(value)]


def _rate(value: str) -> str:
    # Kept as text: options travel to delivery worker processes as JSON.
    from mqtwisted.anvil import Rate

    return str(Rate.parse(value))


def _optional_bytes(value: str) -> int | None:
    return _positive_int(value) if str(value).strip() else None


def _intervals(value: str) -> list[float]:
    out = [float(v) for v in _csv(value)]
    if not out or any(v < 0 for v in out):
        raise ValueError("expected a comma list of seconds")
    return out


#: name, default (as text), coerce, help.  Names are MailerQ's where it has one.

def _state_url(value: str) -> str:
    value = value.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected redis://host:port/db (or nothing: the data directory), got {value!r}")
    return value

OPTIONS: list[tuple[str, str | None, Callable[[str], Any], str]] = [
    ("smtp-ip", "127.0.0.1", str, "address to listen on for SMTP"),
    ("smtp-port", "2525", _port_list, "SMTP port(s), comma separated"),
    ("smtp-secure-port", "", _optional_port, "implicit-TLS SMTP port (SMTPS), none by default"),
    ("smtp-certificate", "", str, "PEM certificate (default: self-signed, made in data-dir)"),
    ("smtp-key", "", str, "PEM private key for smtp-certificate"),
    ("smtp-range", "127.0.0.0/8,::1", _csv, "networks (CIDR) that may relay without AUTH"),
    ("local-domains", "", _csv, "domains whose mail goes to the local queue, from anyone"),
    ("smtp-auth", "", str, "credentials: hardcoded://user:pass,... or file:///path (user:crypt-hash)"),
    ("smtp-auth-plaintext", "off", _on_off, "offer AUTH without TLS (on/off)"),
    ("smtp-maxsize", "26214400", _positive_int, "largest message accepted, in bytes (0: no limit)"),
    ("smtp-max-line", "1000", _positive_int, "longest text line in DATA, octets with CRLF"),
    ("smtp-timeout", "300", _seconds, "idle timeout of an SMTP session, seconds"),
    ("smtp-connections", "1000", _positive_int, "maximum SMTP connections in total (0: no limit)"),
    ("smtp-connections-per-ip", "50", _positive_int, "maximum SMTP connections per client IP (0: no limit)"),
    ("smtp-max-recipients", "1000", _positive_int, "maximum recipients per message"),
    ("smtp-max-errors", "20", _positive_int, "errors per session before it is closed"),
    ("smtp-connection-rate", "60/60", _rate,
     "new connections per client IP: COUNT/SECONDS, then 421 4.7.0 (0: no limit)"),
    ("smtp-auth-failures", "5/600", _rate,
     "failed AUTH per client IP: COUNT/SECONDS, then 454 4.7.0 to every AUTH (0: no limit)"),
    ("smtp-limit-exceptions", "127.0.0.0/8,::1", _networks,
     "networks (CIDR) exempt from smtp-connection-rate and smtp-auth-failures"),
    ("smtp-proxy-ports", "", _port_list,
     "SMTP port(s) that expect a PROXY protocol v1/v2 header first (behind HAProxy or a load balancer)"),
    ("smtp-proxy-from", "127.0.0.0/8,::1", _networks,
     "networks (CIDR) trusted to send the PROXY header on smtp-proxy-ports"),
    ("queue-minfree", "", _optional_bytes,
     "free bytes the data directory keeps: below it MAIL gets 452 4.3.1 and /v1/inject 503 "
     "(default 4 x smtp-maxsize; 0: off)"),
    ("smtp-extract", "trusted", _choice("trusted", "always", "never"), "turn x-mq-* headers into JSON properties"),
    ("hostname", "", str, "this MTA's host name (default: the machine's FQDN)"),
    ("data-dir", "mqmta-data", str, "directory for the spool, certificates and temporary files"),
    ("queue", "spool", str, "queue backend: spool, or amqp://user:pass@host:port/vhost "
     "(a cluster: amqp://user:pass@host1:port,host2:port/vhost)"),
    ("amqp-prefetch", "100", _positive_int, "unacknowledged messages per AMQP consumer"),
    ("amqp-queue-type", "classic", _choice(*AMQP_QUEUE_TYPES),
     "type of the AMQP queues mqmta declares: classic (one broker), or quorum (a cluster)"),
    ("amqp-max-backoff", "30", _positive_seconds,
     "longest pause between two attempts to reconnect to the AMQP broker, seconds"),
    ("inbox", "", str, "queue for incoming mail (default: the outbox)"),
    ("outbox", "outbox", str, "queue that delivery consumes"),
    ("local", "local", str, "queue for mail to local-domains"),
    ("results", "results", str, "queue for every final delivery result"),
    ("success", "success", str, "queue for the results of delivered messages"),
    ("failure", "failure", str, "queue for the results of messages that failed for good"),
    ("retry", "retry", str, "queue for a copy of each temporary failure (the message waits in the outbox)"),
    ("dsn", "dsn", str, "queue for delivery status notifications (bounces) that mqmta writes"),
    ("refused", "refused", str, "queue for messages a milter quarantined (with the reason in 'quarantine')"),
    ("plugin-directory", "", str, "directory of plugins (*.py modules and packages)"),
    ("threads", "0", _positive_int, "plugin worker threads (0: number of CPUs)"),
    ("plugin-timeout", "30", _seconds, "seconds a plugin may keep control"),
    ("milters", "", _milters,
     "milters every inbound session asks, in order, after the plugins: inet:HOST:PORT or unix:/PATH, comma separated"),
    ("milters-out", "", _milters, "milters each message passes before delivery (e.g. OpenDKIM signing), same form"),
    ("milter-timeout", "30", _seconds, "seconds a milter may take to connect and to answer each command"),
    ("milter-default-action", "tempfail", _choice("tempfail", "accept", "reject"),
     "what a milter that is down, slow or speaks nonsense costs: tempfail (451), reject (550) or accept"),
    ("delivery", "on", _on_off, "deliver the outbox (off: this node only receives)"),
    ("delivery-processes", "0", _positive_int,
     "worker processes that deliver (0: the MTA process delivers; spool: at most 1)"),
    ("delivery-nice", "10", _positive_int,
     "nice increment of delivery worker processes, 0-19 (sessions' clients wait, deliveries do not)"),
    ("delivery-silence-limit", "30", _seconds, "seconds a delivery worker may stay silent before it is replaced"),
    ("delivery-restart-delays", "1,2,4,8,16,30", _intervals, "waits before restarting a failing worker, seconds"),
    ("smarthost", "", str, "send all mail via host[:port]"),
    ("dns-server", "", str, "DNS resolver host:port (default: the system's)"),
    ("verify-inbound", "off", _on_off,
     "check SPF, DKIM, DMARC and ARC of arriving mail: an Authentication-Results header and the auth "
     "property (on/off; DNS through dns-server)"),
    ("retry-interval", "600,600,1800,1800,3600,3600,7200", _intervals, "retry schedule, seconds (last repeats)"),
    ("max-delivertime", "86400", _seconds, "give up delivering after this many seconds"),
    ("max-attempts", "0", _positive_int, "give up after this many attempts (0: no limit)"),
    ("delay-warning-time", "4h", parse_duration,
     "after this long in the queue (seconds, or with a unit: 4h, 30m) a message still retried gets one "
     "'delayed' DSN to its sender, when its NOTIFY names DELAY (0: never)"),
    ("max-messages-per-connection", "100", _positive_int, "messages sent over one outbound connection"),
    ("max-recipients-per-transaction", "50", _positive_int,
     "recipients of one message (same body, sender and destination) sent in one SMTP transaction; 1: one each"),
    ("delivery-port", "25", _positive_int, "TCP port of MX hosts (25; a test network may use another)"),
    ("max-idle-time", "5", _seconds, "seconds an idle outbound connection waits for more mail (0: QUIT at once)"),
    ("max-connections-per-domain", "10", _positive_int, "concurrent outbound connections per destination"),
    ("smtp-client-timeout", "300", _seconds, "seconds an outbound connection waits for each reply of the server"),
    ("connect-timeout", "30", _seconds, "seconds an outbound TCP connection may take to be established"),
    ("smtp-client-security", "opportunistic", _choice(*SECURITY_LEVELS),
     "outbound TLS: none, optional, opportunistic, required or verified (a message's security wins)"),
    ("tls-ca", "", str,
     "PEM bundle of the CAs that verify receivers' certificates (verified, MTA-STS, REQUIRETLS) and MTA-STS policy "
     "hosts (default: the system's)"),
    ("smtp-client-ca", "", str, "the old name of tls-ca"),
    ("mta-sts", "on", _on_off, "follow receiving domains' MTA-STS policies (RFC 8461), on/off"),
    ("mta-sts-port", "443", _positive_int, "HTTPS port of MTA-STS policy hosts (443; a test network may use another)"),
    ("dane", "on", _on_off, "follow TLSA records that the resolver authenticated (DANE, RFC 7672), on/off"),
    ("dkim-keys", "", str,
     "TOML file of DKIM keys by sender domain ([[key]] tables; default: none, only a message's dkim property signs)"),
    ("shaping", "", str,
     "traffic shaping file (TOML, KumoMTA's shaping.toml keys): limits per sending IP and destination, "
     "sending IPs, pools, warm-up, automation (README: Sending at scale)"),
    ("bounce-rules", "", str,
     "TOML file of bounce classification rules, tried before the ones mqmta ships "
     "(mqtwisted/bounce_classes.toml, same form)"),
    ("smtp-defaultips", "", _ip_list,
     "local addresses to send from when a message names no ips or pool, comma separated (default: "
     "the shaping file's pool 'default', else the system's choice)"),
    ("state", "", _state_url,
     "where pauses, suppressions, suspensions and warm-up counts live, and with Redis also connection "
     "slots and rates shared by nodes: empty for data-dir/state.sqlite3, or redis://host:port/db"),
    ("www-ip", "127.0.0.1", str, "address of the console, the REST API, /status and /metrics"),
    ("www-port", "8485", _optional_port, "port of the console, the REST API, /status and /metrics (empty: off)"),
    ("www-auth", "", str,
     "console logins: hardcoded://user:pass,... or file:///path (as smtp-auth); without it the console "
     "listens on loopback only"),
    ("www-auth-failures", "5/600", _rate,
     "failed console logins per client IP (COUNT/SECONDS, e.g. 5/600; 0: no limit): past it every login from "
     "that address is refused until the window passes"),
    ("rest-tokens", "", str,
     "bearer tokens of the REST API: hardcoded://TOKEN,... or file:///path (a token or sha256:HEX per line)"),
    ("www-max-body", "67108864", _positive_int, "largest request body of the REST API, in bytes (413 above)"),
    ("log-format", "text", _choice("text", "json"), "log format"),
    ("shutdown-timeout", "30", _seconds, "seconds to let sessions and deliveries finish on shutdown"),
]

_BY_NAME = {name: (default, coerce) for name, default, coerce, _ in OPTIONS}


def default(name: str) -> Any:
    """The declared default of option ``name``, coerced (KeyError for an undeclared name)."""
    text, coerce = _BY_NAME[name]
    return None if text is None else coerce(text)


def read_config(path: str) -> dict[str, Any]:
    """Parse a config file into coerced values, refusing unknown keys and bad values."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    values: dict[str, Any] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon:
            raise ConfigError(f"{path}:{number}: expected 'key: value', got {raw.strip()!r}")
        if key not in _BY_NAME or key == "config":
            raise ConfigError(f"{path}:{number}: unknown key {key!r}")
        values[key] = _coerce(key, value, f"{path}:{number}: key {key!r}")
    return values


def _coerce(key: str, value: str, where: str) -> Any:
    try:
        return _BY_NAME[key][1](value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: bad value {value!r}: {e}") from e


class MQOptions(usage.Options):
    """``twistd mqmta`` options."""

    synopsis = "[options]"
    longdesc = "mqmta: a mail transfer agent with MailerQ's plugin API and queue model."
    optParameters = [[name, None, default, help] for name, default, _, help in OPTIONS] + [
        ["config", "c", None, "MailerQ-style config file (key: value lines); the command line wins"],
    ]

    #: set by parseOptions: the arguments as given (SIGHUP parses them again)
    argv: list[str] | None = None
    #: where --log-format json writes (twistd's --logfile, else standard output)
    json_log_path: str | None = None
    #: twistd writes its log lines to standard output (-n, no --logfile, --syslog or --logger)
    log_to_stdout = False
    _probe = False

    def parseOptions(self, options: list[str] | None = None) -> None:
        import sys

        args = list(sys.argv[1:] if options is None else options)
        self.argv = args
        if not self._probe:
            # A first pass finds --config however it was spelt (--config=F, -cF, or any prefix
            # getopt accepts, like --conf F); its values then become the defaults that the
            # command line, parsed for real below, overrides.
            probe = type(self)()
            probe._probe = True
            probe.parseOptions(args)
            if probe["config"]:
                for key, value in read_config(probe["config"]).items():
                    self.defaults[key] = value
                    self[key] = value
        super().parseOptions(args)

    def _check_www(self) -> None:
        """The console's access: logins and tokens must load, and without www-auth it stays on
        loopback (it would otherwise let anyone act on the queues)."""
        import ipaddress

        if self["www-port"] is not None and not self["www-auth"]:
            try:
                loopback = ipaddress.ip_address(self["www-ip"]).is_loopback
            except ValueError:
                loopback = self["www-ip"] == "localhost"
            if not loopback:
                raise ConfigError(f"--www-ip {self['www-ip']}: the console and REST API listen beyond loopback "
                                  "only with --www-auth (set it, or use --www-ip 127.0.0.1)")
        from mqtwisted.auth import AuthConfigError, load_checker, load_tokens

        try:
            if self["www-auth"]:
                load_checker(self["www-auth"], "www-auth")
            if self["rest-tokens"]:
                load_tokens(self["rest-tokens"])
        except AuthConfigError as e:
            raise ConfigError(str(e)) from None

    def postOptions(self) -> None:
        if self._probe:
            return
        for name, _, _, _ in OPTIONS:
            value = self[name]
            if isinstance(value, str):
                self[name] = _coerce(name, value, f"--{name}")
        if not self["hostname"]:
            import socket

            self["hostname"] = socket.getfqdn()
        if not self["inbox"]:
            self["inbox"] = self["outbox"]
        if self["delivery-processes"] > 1 and self["queue"] == "spool":
            # Spool leases live in the consuming process: two consumers would deliver twice.
            raise ConfigError("--delivery-processes: the spool has one consumer (at most 1); "
                              "use --queue amqp://... for more")
        if self["delivery-nice"] > 19:
            raise ConfigError(f"--delivery-nice: {self['delivery-nice']} is not a nice increment (0-19)")
        self._check_www()
        if self["shaping"]:
            # Checked here so that a bad file stops the start, and a SIGHUP keeps the running one.
            from mqtwisted.shaping import ShapingError, load_shaping

            self["shaping"] = os.path.abspath(self["shaping"])
            try:
                load_shaping(self["shaping"])
            except ShapingError as e:
                raise ConfigError(f"--shaping: {e}") from None
        if self["bounce-rules"]:
            from mqtwisted.classify import RulesError, read_rules

            self["bounce-rules"] = os.path.abspath(self["bounce-rules"])
            try:
                read_rules(self["bounce-rules"])
            except RulesError as e:
                raise ConfigError(f"--bounce-rules: {e}") from None
        if self["queue-minfree"] is None:
            self["queue-minfree"] = 4 * (self["smtp-maxsize"] or 26214400)
        listening = {*self["smtp-port"], self["smtp-secure-port"]}
        both = sorted(p for p in self["smtp-proxy-ports"] if p and p in listening)
        if both:
            raise ConfigError(f"--smtp-proxy-ports: port {both[0]} is also in --smtp-port or --smtp-secure-port; "
                              "a port either expects a PROXY header or does not")
        if bool(self["smtp-certificate"]) != bool(self["smtp-key"]):
            raise ConfigError("--smtp-certificate and --smtp-key go together")
        self["data-dir"] = os.path.abspath(self["data-dir"])
        self._tls_ca()
        if self["dkim-keys"]:
            # Read again by delivery worker processes and on SIGHUP, whatever their directory.
            self["dkim-keys"] = os.path.abspath(self["dkim-keys"])
        parent = getattr(self, "parent", None)  # twistd's own options, when run by twistd
        if parent is not None and hasattr(parent, "get"):
            logfile = parent.get("logfile")
            if logfile and logfile != "-":
                self.json_log_path = os.path.abspath(logfile)
            elif not parent.get("nodaemon") and not logfile:
                self.json_log_path = os.path.abspath("twistd.log")
            self.log_to_stdout = bool(
                parent.get("nodaemon") and logfile in (None, "", "-")
                and not parent.get("syslog") and not parent.get("logger")
            )

    def _tls_ca(self) -> None:
        """``smtp-client-ca`` is the old name of ``tls-ca``; the bundle is read now, so that a bad
        one stops the start."""
        old, new = self["smtp-client-ca"], self["tls-ca"]
        if old and new and os.path.abspath(old) != os.path.abspath(new):
            raise ConfigError("--smtp-client-ca is the old name of --tls-ca: give one of them")
        if not new and old:
            new = old
        if new:
            from mqtwisted.tlspolicy import TrustError, load_bundle

            new = os.path.abspath(new)
            try:
                load_bundle(new)
            except TrustError as e:
                raise ConfigError(f"--tls-ca: {e}") from None
        self["tls-ca"] = self["smtp-client-ca"] = new
