"""The milter protocol, version 6, as pure functions over bytes: no sockets, no reactor.

The MTA side only: :func:`packet` and the ``encode_*`` functions make what the MTA sends,
:class:`Decoder` cuts what a milter sends into packets, and :func:`decode_response` turns one
into a typed action.  Anything malformed raises :class:`MilterProtocolError` with what was wrong,
so the caller can take the default action instead of guessing.

Every packet is ``uint32 length`` (big-endian, counting the command byte), one command byte,
then ``length - 1`` bytes of data.  Strings are NUL-terminated.  Sources: sendmail's
``libmilter/mfdef.h`` (the constants) and the protocol descriptions that pmilter, go-milter and
Postfix's ``milter8.c`` document and follow.  See docs/architecture.rst.
"""

from __future__ import annotations

import enum
import re
import struct

import attrs

VERSION = 6
#: largest body chunk in one SMFIC_BODY packet (libmilter's MILTER_CHUNK_SIZE)
CHUNK = 65535
#: largest packet a milter may send us: generous (libmilter sends at most 1 MB with SMFIP_MDS_1M);
#: a length beyond it is garbage, not a packet to buffer
MAX_PACKET = (1 << 20) + 64

# Commands, MTA to milter.
ABORT, BODY, CONNECT, MACRO, BODYEOB = b"A", b"B", b"C", b"D", b"E"
HELO, HEADER, MAIL, EOH, OPTNEG, QUIT, RCPT, DATA = b"H", b"L", b"M", b"N", b"O", b"Q", b"R", b"T"

# Address families in SMFIC_CONNECT.
FAMILY_UNKNOWN, FAMILY_UNIX, FAMILY_INET, FAMILY_INET6 = b"U", b"L", b"4", b"6"


class Action(enum.IntFlag):
    """What a milter may do (SMFIF_*), offered by the MTA and requested by the milter."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


class Step(enum.IntFlag):
    """Protocol flags (SMFIP_*): steps the milter does not want, replies it will not send."""

    NOCONNECT = 0x01
    NOHELO = 0x02
    NOMAIL = 0x04
    NORCPT = 0x08
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000


#: Everything we offer: every action, and every step but RCPT_REJ (a refused recipient is never
#: shown to a milter) and the unknown-command ones (we never send SMFIC_UNKNOWN).
OFFERED_ACTIONS = 0x1FF
OFFERED_STEPS = 0x1FFFFF & ~Step.RCPT_REJ.value

#: The steps whose reply the milter may waive (SMFIP_NR_*), by command.  Plain ints, like the
#: negotiated flags they are tested against per command: IntFlag arithmetic costs microseconds.
NO_REPLY = {CONNECT: Step.NR_CONN.value, HELO: Step.NR_HELO.value, MAIL: Step.NR_MAIL.value,
            RCPT: Step.NR_RCPT.value, DATA: Step.NR_DATA.value, HEADER: Step.NR_HDR.value,
            EOH: Step.NR_EOH.value, BODY: Step.NR_BODY.value}
#: The steps the milter may not want at all (SMFIP_NO*), by command.
NOT_WANTED = {CONNECT: Step.NOCONNECT.value, HELO: Step.NOHELO.value, MAIL: Step.NOMAIL.value,
              RCPT: Step.NORCPT.value, DATA: Step.NODATA.value, HEADER: Step.NOHDRS.value,
              EOH: Step.NOEOH.value, BODY: Step.NOBODY.value}

#: Macro stages of SMFIR_SETSYMLIST, as the command each one's macros are sent with.
MACRO_STAGES = {0: CONNECT, 1: HELO, 2: MAIL, 3: RCPT, 4: DATA, 5: BODYEOB, 6: EOH}


class MilterProtocolError(Exception):
    """A milter sent something the protocol does not allow."""


# -- encoding (MTA to milter) --------------------------------------------------------------------


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def _z(*strings: str) -> bytes:
    return b"".join(s.encode("utf-8", "surrogateescape") + b"\0" for s in strings)


def encode_optneg(actions: int = OFFERED_ACTIONS, steps: int = OFFERED_STEPS) -> bytes:
    return packet(OPTNEG, struct.pack(">III", VERSION, int(actions), int(steps)))


def encode_macros(cmd: bytes, values: dict[str, str]) -> bytes:
    return packet(MACRO, cmd + b"".join(_z(k, v) for k, v in values.items()))


def encode_connect(hostname: str, family: bytes, port: int, address: str) -> bytes:
    if family == FAMILY_UNKNOWN:
        return packet(CONNECT, _z(hostname) + family)
    return packet(CONNECT, _z(hostname) + family + struct.pack(">H", port) + _z(address))


def encode_helo(name: str) -> bytes:
    return packet(HELO, _z(name))


def encode_mail(address: str, args: list[str]) -> bytes:
    return packet(MAIL, _z(f"<{address}>", *args))


def encode_rcpt(address: str, args: list[str]) -> bytes:
    return packet(RCPT, _z(f"<{address}>", *args))


def encode_header(name: str, value: str) -> bytes:
    return packet(HEADER, _z(name, value))


def encode_body(chunk: bytes) -> bytes:
    return packet(BODY, chunk)


def encode_simple(cmd: bytes) -> bytes:
    """A command without data: DATA, EOH, BODYEOB, ABORT, QUIT."""
    return packet(cmd)


def esmtp_args(params: dict[str, str | None]) -> list[str]:
    """ESMTP parameters as a milter gets them: ``KEY=VALUE`` or ``KEY``."""
    return [k if v is None else f"{k}={v}" for k, v in params.items()]


# -- decoding (milter to MTA) --------------------------------------------------------------------


class Decoder:
    """Cuts a byte stream into ``(command, data)`` packets; refuses impossible lengths."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.buffer = b""
        self.max_packet = max_packet

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack(">I", self.buffer[:4])
            if length == 0 or length > self.max_packet:
                raise MilterProtocolError(f"packet length {length} out of range 1..{self.max_packet}")
            if len(self.buffer) < 4 + length:
                break
            out.append((self.buffer[4:5], self.buffer[5 : 4 + length]))
            self.buffer = self.buffer[4 + length :]
        return out


@attrs.frozen
class OptNeg:
    """The milter's answer to SMFIC_OPTNEG."""

    version: int
    actions: Action
    steps: Step
    #: SETSYMLIST: the macros wanted, by the command they are sent with
    macros: dict[bytes, tuple[str, ...]] = attrs.field(factory=dict)


# Final answers to a command (accept/reject actions).
@attrs.frozen
class Continue:
    pass


@attrs.frozen
class Accept:
    pass


@attrs.frozen
class Reject:
    pass


@attrs.frozen
class Tempfail:
    pass


@attrs.frozen
class Discard:
    pass


@attrs.frozen
class Skip:
    """No more body chunks, please (only after SMFIC_BODY, only when SMFIP_SKIP was agreed)."""


@attrs.frozen
class ConnFail:
    """SMFIR_CONN_FAIL / SMFIR_SHUTDOWN: the milter wants the SMTP connection closed (421)."""


@attrs.frozen
class ReplyCode:
    """A reply of the milter's choosing (4xx or 5xx), possibly multi-line."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]


# Modifications (only before the final answer to SMFIC_BODYEOB) and progress.
@attrs.frozen
class Progress:
    pass


@attrs.frozen
class AddHeader:
    name: str
    value: str


@attrs.frozen
class InsertHeader:
    index: int
    name: str
    value: str


@attrs.frozen
class ChangeHeader:
    """The ``index``-th (from 1) header called ``name`` gets ``value``; an empty value deletes it."""

    index: int
    name: str
    value: str


@attrs.frozen
class ChangeFrom:
    address: str
    args: tuple[str, ...]


@attrs.frozen
class AddRecipient:
    address: str
    args: tuple[str, ...]


@attrs.frozen
class DeleteRecipient:
    address: str


@attrs.frozen
class ReplaceBody:
    """One chunk of the new body; several in a row make it up."""

    chunk: bytes


@attrs.frozen
class Quarantine:
    reason: str


Final = Continue | Accept | Reject | Tempfail | Discard | Skip | ConnFail | ReplyCode
Modification = (AddHeader | InsertHeader | ChangeHeader | ChangeFrom | AddRecipient | DeleteRecipient
                | ReplaceBody | Quarantine)
Response = Final | Modification | Progress

_FIXED: dict[bytes, Response] = {
    b"c": Continue(), b"a": Accept(), b"r": Reject(), b"t": Tempfail(), b"d": Discard(),
    b"s": Skip(), b"f": ConnFail(), b"4": ConnFail(), b"p": Progress(),
}
_REPLY_LINE = re.compile(r"([45]\d\d)([ -])(?:([45]\.\d{1,3}\.\d{1,3})(?: |$))?(.*)", re.S)


def _strings(data: bytes, count: int | None, what: str) -> list[str]:
    """The NUL-terminated strings of ``data`` (exactly ``count`` of them, or at least one)."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"{what}: string not NUL-terminated")
    parts = [p.decode("utf-8", "surrogateescape") for p in data[:-1].split(b"\0")]
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"{what}: expected {count} strings, got {len(parts)}")
    return parts


def _index(data: bytes, what: str) -> tuple[int, bytes]:
    if len(data) < 4:
        raise MilterProtocolError(f"{what}: too short for its index")
    return struct.unpack(">I", data[:4])[0], data[4:]


def _address(arg: str) -> str:
    return arg[1:-1] if arg.startswith("<") and arg.endswith(">") else arg


def decode_reply(text: str) -> ReplyCode:
    """SMFIR_REPLYCODE's text: ``550 5.7.1 why`` or ``550-5.7.1 one\\r\\n550 5.7.1 two``."""
    lines, code, enhanced = [], None, None
    for line in re.split(r"\r?\n", text.rstrip("\r\n")):
        m = _REPLY_LINE.fullmatch(line)
        if m is None or (code is not None and int(m.group(1)) != code):
            raise MilterProtocolError(f"reply code: not a 4xx/5xx reply line: {line[:80]!r}")
        code = int(m.group(1))
        enhanced = enhanced or m.group(3)
        lines.append(m.group(4).replace("%%", "%"))  # libmilter doubles '%' for printf
    assert code is not None
    return ReplyCode(code, enhanced, tuple(lines))


def decode_response(cmd: bytes, data: bytes) -> Response:
    """One packet from a milter (not its SMFIC_OPTNEG: :func:`decode_optneg`)."""
    fixed = _FIXED.get(cmd)
    if fixed is not None:
        if data:
            raise MilterProtocolError(f"response {cmd!r} carries {len(data)} unexpected bytes")
        return fixed
    if cmd == b"y":
        return decode_reply(_strings(data, 1, "reply code")[0])
    if cmd == b"h":
        return AddHeader(*_strings(data, 2, "add header"))
    if cmd in (b"i", b"m"):
        index, rest = _index(data, "header edit")
        name, value = _strings(rest, 2, "header edit")
        return (InsertHeader if cmd == b"i" else ChangeHeader)(index, name, value)
    if cmd == b"e":
        args = _strings(data, None, "change sender")
        return ChangeFrom(_address(args[0]), tuple(a for a in args[1:] if a))
    if cmd in (b"+", b"2"):
        args = _strings(data, None if cmd == b"2" else 1, "add recipient")
        return AddRecipient(_address(args[0]), tuple(a for a in args[1:] if a))
    if cmd == b"-":
        return DeleteRecipient(_address(_strings(data, 1, "delete recipient")[0]))
    if cmd == b"b":
        return ReplaceBody(data)
    if cmd == b"q":
        return Quarantine(_strings(data, 1, "quarantine")[0])
    raise MilterProtocolError(f"unknown response code {cmd!r}")


def decode_optneg(cmd: bytes, data: bytes) -> OptNeg:
    """The milter's SMFIC_OPTNEG: version, actions, steps, and the macros it asks for (v6)."""
    if cmd != OPTNEG:
        raise MilterProtocolError(f"expected the option negotiation, got response {cmd!r}")
    if len(data) < 12:
        raise MilterProtocolError(f"option negotiation: {len(data)} bytes, at least 12 expected")
    version, actions, steps = struct.unpack(">III", data[:12])
    if version < 2 or version > VERSION:
        raise MilterProtocolError(f"option negotiation: milter speaks version {version}, we speak 2..{VERSION}")
    if actions & ~OFFERED_ACTIONS:
        raise MilterProtocolError(f"option negotiation: milter asks for actions {actions:#x} beyond what we offered")
    # Steps we did not offer are only wishes (send rejected recipients, unknown commands): they are
    # not granted, and the milter is not refused for having them.
    steps &= OFFERED_STEPS
    macros: dict[bytes, tuple[str, ...]] = {}
    rest = data[12:]
    while rest:
        stage, rest = _index(rest, "macro list")
        end = rest.find(b"\0")
        if end < 0 or stage not in MACRO_STAGES:
            raise MilterProtocolError(f"option negotiation: bad macro list for stage {stage}")
        names = rest[:end].decode("ascii", "replace").split()
        macros[MACRO_STAGES[stage]] = tuple(n.strip() for n in names)
        rest = rest[end + 1 :]
    return OptNeg(version, Action(actions), Step(steps), macros)
