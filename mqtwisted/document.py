"""The MailerQ JSON document, typed: one per recipient, from the SMTP server to delivery to the
result queues (see docs/architecture.rst for the data path).

A document is the JSON object itself (``doc.json``, a plain dict) seen through typed accessors.
Every property the MTA interprets has one, declared in the class bodies below; every other key is left
exactly as it came, in both directions (MailerQ's rule: unknown properties travel to the results
untouched).  Reading a property whose value is unusable raises :class:`DocumentError`, which names
the property and the value; setting one writes its JSON form, and setting ``None`` removes it.

Three views of the same JSON:

* :class:`IncomingDocument`: what the SMTP server publishes (``hostname``, ``received``,
  ``connection`` …);
* :class:`OutgoingDocument`: what delivery reads (``nextattempt``, ``maxdelivertime``, ``queues``,
  ``smarthost``, ``headers`` edits …) and the ``results`` it appends, one :class:`AttemptRecord`
  per attempt;
* both share :class:`Document`: ``envelope``, ``recipient``, ``mime``, ``dsn``, ``tags``.

The same dict may be viewed both ways (an incoming message relayed is the outbox's next outgoing
one).  Queues store and move the JSON; they read only :func:`due_time`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Self, TypeVar, overload

import attrs

from mqtwisted.jsonvalues import (
    DocumentError,
    boolean_value,
    count_value,
    dump_mime,
    format_time,
    intervals_value,
    mime_value,
    object_value,
    parse_hostport,
    parse_time,
    security_value,
    tags_value,
    text_value,
    timestamp_value,
)

__all__ = [
    "AttemptRecord", "Bounce", "ConnectionInfo", "Document", "DocumentError", "DsnRequest", "HeaderEdits",
    "IncomingDocument", "OutgoingDocument", "Property", "QueueOverrides", "Smarthost", "due_time", "usable",
]

T = TypeVar("T")

#: how much of a message is searched for the end of its header (TLS-Required)
_HEAD_SCAN = 256 * 1024
_TLS_REQUIRED_NO = r"^tls-required:[ \t]*no[ \t]*\r?$"
#: (the field, a line end, the header's end with CRLF and with LF) for a str and a bytes ``mime``
_TLS_REQUIRED_TEXT = (re.compile(_TLS_REQUIRED_NO, re.IGNORECASE | re.MULTILINE), "\r\n", "\n\r\n", "\n\n")
_TLS_REQUIRED_BYTES = (re.compile(_TLS_REQUIRED_NO.encode(), re.IGNORECASE | re.MULTILINE), b"\r\n", b"\n\r\n", b"\n\n")


def due_time(json: Mapping[str, Any]) -> float:
    """When a queue may hand the document out: its ``nextattempt`` in epoch seconds, 0 when it
    has none.  Queues are lenient: an unusable value is due at once, and delivery, which reads
    it strictly, reports it."""
    return parse_time(json.get("nextattempt")) or 0.0


# -- nested values ---------------------------------------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
NOTIFY_KEYWORDS = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


def _address_text(key: str, value: Any) -> str:
    """An envelope address, which MAIL FROM or RCPT TO writes as it is: a CR LF in it would end
    the command and start one of the document's choosing on the next hop's connection."""
    text = text_value(key, value)
    if _CONTROL.search(text):
        raise DocumentError(key, value, "an address without control characters")
    return text


def _report_text(key: str, value: Any) -> str | None:
    """ORCPT or ENVID: printable ASCII, as RFC 3461 has them and the SMTP server takes them.  A
    report repeats them as fields (a CR LF would write fields of its own), and a next hop that
    checks refuses the MAIL or RCPT that carries anything else, failing the message."""
    if not value:
        return None
    text = str(value)
    if not _PRINTABLE.fullmatch(text):
        raise DocumentError(key, value, "printable ASCII text")
    return text


@attrs.frozen
class DsnRequest:
    """RFC 3461 parameters from MAIL FROM and RCPT TO: ``dsn`` {notify, ret, orcpt, envid}."""

    #: upper-case NOTIFY keywords (SUCCESS, FAILURE, DELAY, NEVER) as given; None when not given
    notify: tuple[str, ...] | None = None
    ret: str | None = None
    orcpt: str | None = None
    envid: str | None = None

    @classmethod
    def parse(cls, key: str, value: Any) -> DsnRequest:
        raw = object_value(key, value)
        notify = raw.get("notify")
        if isinstance(notify, str):
            notify = notify.split(",")
        if notify is not None and not isinstance(notify, list):
            raise DocumentError(f"{key}.notify", notify, "a keyword list")
        keywords = tuple(str(v).strip().upper() for v in notify) if notify else None
        # RCPT TO carries them onward as they are: anything else (a CR LF) would be on the wire
        if keywords is not None and not set(keywords) <= NOTIFY_KEYWORDS:
            raise DocumentError(f"{key}.notify", notify, "keywords among NEVER, SUCCESS, FAILURE, DELAY")
        return cls(
            keywords,
            str(raw["ret"]).upper() if raw.get("ret") else None,
            _report_text(f"{key}.orcpt", raw.get("orcpt")),
            _report_text(f"{key}.envid", raw.get("envid")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.notify:
            out["notify"] = ",".join(self.notify)
        for name in ("orcpt", "ret", "envid"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @property
    def wants_failure_report(self) -> bool:
        """RFC 3461 §4.1: no NOTIFY means failures only; NEVER means none."""
        return self.notify is None or self.asks("FAILURE")

    def asks(self, keyword: str) -> bool:
        """Whether NOTIFY names ``keyword`` (SUCCESS, FAILURE, DELAY) and not NEVER."""
        return self.notify is not None and keyword in self.notify and "NEVER" not in self.notify

    @property
    def headers_only(self) -> bool:
        return self.ret == "HDRS"


@attrs.frozen
class Smarthost:
    """A relay to send through instead of the recipient's MX (``smarthost``: ``"host:port"`` or
    {hostname, port, username, password})."""

    hostname: str
    port: int = 25
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, key: str, value: Any) -> Smarthost:
        if isinstance(value, str) and value.strip():
            try:
                return cls(*parse_hostport(value, 25))
            except ValueError:
                raise DocumentError(key, value, "host[:port]") from None
        raw = object_value(key, value)
        if not isinstance(raw.get("hostname"), str) or not raw["hostname"]:
            raise DocumentError(f"{key}.hostname", raw.get("hostname"), "a host name")
        return cls(
            raw["hostname"], count_value(f"{key}.port", raw.get("port") or 25),
            str(raw["username"]) if raw.get("username") else None,
            str(raw["password"]) if raw.get("password") else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hostname": self.hostname, "port": self.port}
        if self.username:
            out["username"] = self.username
        if self.password:
            out["password"] = self.password
        return out


def _header_values(key: str, edits: Mapping[str, Any], mode: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    raw = edits.get(mode)
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise DocumentError(f"{key}.{mode}", raw, "an object of header names and values")
    out = []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        out.append((str(name), tuple(str(v) for v in values if v is not None)))
    return tuple(out)


@attrs.frozen
class HeaderEdits:
    """MailerQ's ``headers`` property: edits made to the MIME on the wire only.  ``remove``
    names; ``prepend``, ``append`` (also ``add``), ``replace`` (first occurrence, others removed,
    appended when absent) and ``update`` (like replace, never appended): name → value(s)."""

    remove: frozenset[str] = frozenset()
    prepend: tuple[tuple[str, tuple[str, ...]], ...] = ()
    append: tuple[tuple[str, tuple[str, ...]], ...] = ()
    replace: tuple[tuple[str, tuple[str, ...]], ...] = ()
    update: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, key: str, value: Any) -> HeaderEdits:
        raw = object_value(key, value)
        remove = raw.get("remove")
        if isinstance(remove, str):
            remove = [remove]
        if remove is not None and not isinstance(remove, list):
            raise DocumentError(f"{key}.remove", remove, "a header name or a list of them")
        return cls(
            frozenset(str(r).lower() for r in remove or ()),
            _header_values(key, raw, "prepend"),
            _header_values(key, raw, "append") + _header_values(key, raw, "add"),
            _header_values(key, raw, "replace"),
            _header_values(key, raw, "update"),
        )


@attrs.frozen
class ConnectionInfo:
    """The SMTP session an incoming message came in on (``connection``)."""

    local_ip: str | None = None
    local_port: int | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    helo: str | None = None
    secure: bool = False
    user: str | None = None

    _KEYS = (("local_ip", "local-ip"), ("local_port", "local-port"), ("remote_ip", "remote-ip"),
             ("remote_port", "remote-port"), ("helo", "helo"), ("secure", "secure"), ("user", "user"))

    @classmethod
    def parse(cls, key: str, value: Any) -> ConnectionInfo:
        raw = object_value(key, value)
        return cls(**{field: raw.get(name) for field, name in cls._KEYS if name in raw})

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, field) for field, name in self._KEYS}


@attrs.frozen
class Bounce:
    """What a DSN document reports (``bounce``): the recipient, its status and the RFC 3464
    action (failed, delayed, relayed, delivered)."""

    recipient: str
    status: str
    action: str = "failed"

    @classmethod
    def parse(cls, key: str, value: Any) -> Bounce:
        raw = object_value(key, value)
        return cls(text_value(f"{key}.recipient", raw.get("recipient")), text_value(f"{key}.status", raw.get("status")),
                   text_value(f"{key}.action", raw.get("action", "failed")))

    def to_json(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "status": self.status, "action": self.action}


#: the record's fields left out of its JSON when they hold these values
_RECORD_DEFAULTS = {"code": None, "status": None, "description": "", "mta": None, "local_ip": None,
                    "remote_ip": None, "messages": None, "cipher": None, "dsn": None, "classification": None,
                    "tls_policy": None}
#: attempt record field -> JSON key (MailerQ's names: ``from`` is our address, ``to`` the peer's)
_RECORD_KEYS: tuple[tuple[str, str], ...] = (
    ("state", "state"), ("result", "result"), ("code", "code"), ("status", "status"),
    ("description", "description"), ("mta", "mta"), ("local_ip", "from"), ("remote_ip", "to"),
    ("messages", "messages"), ("cipher", "cipher"), ("dsn", "dsn"), ("classification", "classification"),
    ("tls_policy", "tls_policy"),
)


@attrs.frozen
class AttemptRecord:
    """One object of a document's ``results`` array, as recorded (see
    :class:`mqtwisted.results.Attempt` for the attempt being made).  Keys this model does not
    know are kept in ``extra`` and written back."""

    time: float | None
    state: str
    result: str
    code: int | None = None
    status: str | None = None
    description: str = ""
    mta: str | None = None
    local_ip: str | None = None
    remote_ip: str | None = None
    messages: int | None = None
    cipher: dict[str, Any] | None = None
    dsn: bool | None = None
    #: what kind of failure an attempt that was not accepted is (mqtwisted.classify)
    classification: str | None = None
    #: the TLS policy that applied to the attempt (mqtwisted.tlspolicy)
    tls_policy: str | None = None
    #: the record's JSON time as written (kept so that a record round-trips exactly)
    time_text: Any = attrs.field(default=None, eq=False)
    extra: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @classmethod
    def parse(cls, key: str, value: Any) -> AttemptRecord:
        raw = object_value(key, value)
        known = {name for _, name in _RECORD_KEYS} | {"time"}
        fields = {field: raw[name] for field, name in _RECORD_KEYS if name in raw}
        fields.setdefault("state", "")
        fields.setdefault("result", "")
        return cls(
            time=parse_time(raw.get("time")), time_text=raw.get("time"),
            extra={k: v for k, v in raw.items() if k not in known}, **fields,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.time_text is not None:
            out["time"] = self.time_text
        elif self.time is not None:
            out["time"] = format_time(self.time)
        for field, name in _RECORD_KEYS:
            value = getattr(self, field)
            if field in _RECORD_DEFAULTS and value == _RECORD_DEFAULTS[field]:
                continue
            out[name] = value
        out.update(self.extra)
        return out


def _results(key: str, value: Any) -> tuple[AttemptRecord, ...]:
    if not isinstance(value, list):
        raise DocumentError(key, value, "a list of attempts")
    return tuple(AttemptRecord.parse(f"{key}[{i}]", v) for i, v in enumerate(value))


@attrs.frozen
class QueueOverrides:
    """A message's own result queues (``queues``): a role given names its queue, ``null`` (or
    an empty name) means none; a role not given goes to the configured default."""

    names: Mapping[str, str | None]

    @classmethod
    def parse(cls, key: str, value: Any) -> QueueOverrides:
        raw = object_value(key, value)
        return cls({role: (v if isinstance(v, str) and v else None) for role, v in raw.items()})

    def target(self, role: str, default: str | None) -> str | None:
        return self.names[role] if role in self.names else default


# -- the accessor ----------------------------------------------------------------------------------


class Property(Generic[T]):
    """One property of the document: its JSON key, how its value is read, how it is written."""

    def __init__(self, key: str, parse: Callable[[str, Any], T], dump: Callable[[Any], Any] | None = None,
                 doc: str = "") -> None:
        self.key = key
        self.parse = parse
        self.dump = dump
        self.__doc__ = doc

    @overload
    def __get__(self, document: None, owner: type) -> Property[T]: ...

    @overload
    def __get__(self, document: Document, owner: type) -> T | None: ...

    def __get__(self, document: Document | None, owner: type) -> Any:
        if document is None:
            return self
        value = document.json.get(self.key)
        return None if value is None else self.parse(self.key, value)

    def __set__(self, document: Document, value: T | None) -> None:
        if value is None:
            document.json.pop(self.key, None)
            return
        if self.dump is not None:
            value = self.dump(value)
        elif hasattr(value, "to_json"):
            value = value.to_json()
        document.json[self.key] = value


def usable(read: Callable[[], T], fallback: T) -> T:
    """``read()``, or ``fallback`` when the property it reads is unusable: for the paths that
    must finish whatever the document holds (a failure report about an invalid document)."""
    try:
        return read()
    except DocumentError:
        return fallback


def _list(value: Iterable[Any]) -> list[Any]:
    return list(value)


def _addresses(key: str, value: Any) -> tuple[str, ...]:
    """MailerQ's ``ips``: a list of local IP addresses (normalised)."""
    if not isinstance(value, list) or not value:
        raise DocumentError(key, value, "a list of IP addresses")
    try:
        return tuple(str(ipaddress.ip_address(str(v).strip())) for v in value)
    except ValueError:
        raise DocumentError(key, value, "a list of IP addresses") from None


@attrs.define(eq=False)
class Document:
    """A MailerQ JSON document seen through typed accessors; ``json`` is the document itself,
    edited in place (a plugin's ``MQ_json`` is the same dict)."""

    json: dict[str, Any] = attrs.field(factory=dict)

    envelope = Property("envelope", _address_text, doc="the envelope sender; '' is the null sender")
    recipient = Property("recipient", _address_text, doc="the one recipient this document is for")
    mime = Property("mime", mime_value, dump_mime, doc="the message (bytes; JSON text with 8-bit octets escaped)")
    dsn = Property("dsn", DsnRequest.parse, doc="the sender's RFC 3461 DSN request")
    tags = Property("tags", tags_value, _list, doc="labels that travel with the message")
    received = Property("received", timestamp_value, doc="when the MTA received it (epoch seconds)")
    auth = Property("auth", object_value,
                    doc="inbound authentication results (--verify-inbound): spf, dkim, dmarc, arc and "
                        "the Authentication-Results value as header (mqtwisted.authcheck.results)")
    #: what MAIL FROM asked of every hop (RFC 3030, 6531, 8689): the delivery must keep it or fail
    binarymime = Property("binarymime", boolean_value, doc="BODY=BINARYMIME: sent only with BDAT to a receiver "
                                                           "offering CHUNKING and BINARYMIME")
    smtputf8 = Property("smtputf8", boolean_value, doc="SMTPUTF8: sent only to a receiver offering SMTPUTF8")
    requiretls = Property("requiretls", boolean_value, doc="REQUIRETLS: sent only over verified TLS to a "
                                                           "receiver offering REQUIRETLS")

    @classmethod
    def of(cls, value: Mapping[str, Any] | Document) -> Self:
        """A view of ``value``'s JSON (the same dict when it is one)."""
        json = value.json if isinstance(value, Document) else value
        return cls(json if isinstance(json, dict) else dict(json))

    def copy(self) -> Self:
        """A view of a shallow copy: setting properties on it leaves this document alone."""
        return type(self)(dict(self.json))

    @property
    def sender(self) -> str:
        """The envelope sender, '' when absent."""
        return self.envelope or ""

    @property
    def recipient_domain(self) -> str:
        """The recipient's domain, lower case; DocumentError when the recipient is no address."""
        recipient = self.recipient
        if recipient is None or "@" not in recipient or not recipient.rsplit("@", 1)[1]:
            raise DocumentError("recipient", recipient, "an address (local@domain)")
        return recipient.rsplit("@", 1)[1].rstrip(".").lower()

    @property
    def has_mime(self) -> bool:
        """Whether the document carries its message (else a plugin may build it on the way out)."""
        return isinstance(self.json.get("mime"), (str, bytes))

    def without_mime(self) -> dict[str, Any]:
        """The JSON without its ``mime`` (listings, result copies)."""
        return {k: v for k, v in self.json.items() if k != "mime"}


@attrs.define(eq=False)
class IncomingDocument(Document):
    """What the SMTP server publishes for one recipient of a message it accepted."""

    hostname = Property("hostname", text_value, doc="the MTA that received the message")
    message_id = Property("message-id", text_value, doc="the message's Message-ID header")
    connection = Property("connection", ConnectionInfo.parse, doc="the SMTP session it came in on")
    local = Property("local", boolean_value, doc="in flight only: goes to the local queue (MQ_setLocal)")


@attrs.define(eq=False)
class OutgoingDocument(Document):
    """What delivery reads for one recipient, and the attempts it records."""

    nextattempt = Property("nextattempt", timestamp_value, doc="not before this time (epoch seconds)")
    maxdelivertime = Property("maxdelivertime", timestamp_value,
                              doc="give up at this time; a small number: seconds after the first attempt")
    maxattempts = Property("maxattempts", count_value, doc="give up after this many attempts")
    retries = Property("retries", intervals_value, _list, doc="the message's own retry schedule, seconds")
    queues = Property("queues", QueueOverrides.parse, lambda q: dict(q.names), doc="its own result queues")
    smarthost = Property("smarthost", Smarthost.parse, doc="send through this relay")
    security = Property("security", security_value, doc="the outbound TLS policy for this message")
    headers = Property("headers", HeaderEdits.parse, doc="header edits made on the wire only")
    keepmime = Property("keepmime", boolean_value, doc="result copies keep the mime")
    results = Property("results", _results, lambda rs: [r.to_json() for r in rs],
                       doc="one record per attempt, oldest first")
    bounce = Property("bounce", Bounce.parse, doc="a DSN document: the recipient, status and action it reports")
    delaywarning = Property("delaywarning", timestamp_value,
                            doc="when the delayed DSN was written: one per document, never again on a retry")
    dkim = Property("dkim", lambda key, value: value,
                    doc="MailerQ's signing instructions as given (an object or a list); "
                        "mqtwisted.signing.parse_dkim_property reads them")
    ips = Property("ips", _addresses, _list, doc="send from one of these local addresses")
    pool = Property("pool", text_value, doc="send from an address of this pool of the shaping file")

    def check(self) -> None:
        """Read every property delivery interprets: DocumentError names the first unusable one.
        (``mime`` only for its type: it is converted once, when it is sent.)"""
        self.recipient_domain  # noqa: B018 (read for its check)
        if self.json.get("mime") is not None and not self.has_mime:
            raise DocumentError("mime", self.json["mime"], "the message as a string")
        json = self.json
        for key, parse in _CHECKS:
            value = json.get(key)
            if value is not None:
                parse(key, value)

    @property
    def tls_optional(self) -> bool:
        """RFC 8689 §4.2.2: the header says ``TLS-Required: No`` and MAIL FROM did not ask for
        REQUIRETLS (which wins): TLS is tried when offered, but no policy (security level,
        MTA-STS, DANE) holds the message back."""
        mime = self.json.get("mime")
        if not isinstance(mime, (str, bytes)) or usable(lambda: self.requiretls, False):
            return False
        # Searched in place, as message.header_block does: no copy of the message per attempt.
        pattern, crlf, blank_crlf, blank_lf = _TLS_REQUIRED_TEXT if isinstance(mime, str) else _TLS_REQUIRED_BYTES
        limit = min(len(mime), _HEAD_SCAN)
        end = mime.find(blank_crlf, 0, limit) if mime.find(crlf, 0, limit) >= 0 else mime.find(blank_lf, 0, limit)
        return pattern.search(mime, 0, limit if end < 0 else end + 1) is not None

    def first_attempt_time(self) -> float | None:
        results = self.results or ()
        return results[0].time if results else None

    def attempt_count(self) -> int:
        raw = self.json.get("results")
        return len(raw) if isinstance(raw, list) else 0

    def with_attempt(self, record: AttemptRecord) -> OutgoingDocument:
        """A copy with ``record`` appended to its ``results`` (the others are kept as they are)."""
        copy = self.copy()
        raw = self.json.get("results")
        copy.json["results"] = [*(raw if isinstance(raw, list) else ()), record.to_json()]
        return copy

    def result_queue(self, role: str, default: str | None) -> str | None:
        """Where a result of ``role`` goes: the message's ``queues`` entry, else ``default``."""
        queues = self.queues
        return default if queues is None else queues.target(role, default)

    def result_copy(self) -> dict[str, Any]:
        """The JSON published to result queues: all of it but ``mime``, unless ``keepmime``."""
        return dict(self.json) if usable(lambda: self.keepmime, False) else self.without_mime()


_CHECKED = ("envelope", "dsn", "nextattempt", "maxdelivertime", "maxattempts", "retries", "queues",
            "smarthost", "security", "headers", "keepmime", "results", "ips", "pool", "delaywarning", "binarymime",
            "smtputf8", "requiretls")
#: (JSON key, reader) of each checked property: what reading it through its accessor does
_CHECKS = tuple((prop.key, prop.parse) for prop in (getattr(OutgoingDocument, name) for name in _CHECKED))
