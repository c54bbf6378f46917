"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): who the client
really is when mqmta runs behind HAProxy or a cloud load balancer.

Pure functions over bytes.  Twisted implements the same parsers, but exports only an endpoint
wrapper whose protocol wrapper hides TLS handshake events from the SMTP session (its STARTTLS would
never be marked secure) and hands the session its transport before the header is read (the
connect hook and the connection limits would see the proxy's address).  So the session reads the
header itself, before anything else, with this parser.

:func:`parse` takes what has arrived so far and answers: not enough yet (None), the header's
length and the addresses it carries, or :class:`ProxyHeaderError`.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 4096  # addresses and TLVs: more than any proxy sends for TCP

_V2_FAMILIES = {
    0x11: (4, "!4s4sHH"),  # TCP over IPv4
    0x21: (16, "!16s16sHH"),  # TCP over IPv6
}


class ProxyHeaderError(ValueError):
    """Not a PROXY header this server takes; the message says what was wrong."""


@attrs.frozen
class Proxied:
    """The addresses a header carries; None when it carries none (``LOCAL``, ``UNKNOWN``: the
    proxy's own health check, which speaks for itself)."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int


def parse(data: bytes) -> tuple[int, Proxied | None] | None:
    """``(length of the header, addresses)``, or None while ``data`` may still become a header."""
    if not data:
        return None
    if data[:12] == V2_SIGNATURE[: len(data[:12])] and data[:1] == b"\r":
        return _parse_v2(data)
    if data[:6] == V1_PREFIX[: len(data[:6])] and data[:1] == b"P":
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY header (v1 or v2) at the start of the connection")


def _parse_v1(data: bytes) -> tuple[int, Proxied | None] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} octets")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return end + 2, None
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if fields[1] == "TCP4" else 6
    client, server = _address(fields[2], version), _address(fields[3], version)
    return end + 2, Proxied(client, _port(fields[4]), server, _port(fields[5]))


def _parse_v2(data: bytes) -> tuple[int, Proxied | None] | None:
    if len(data) < 16:
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("bad PROXY v2 signature")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if 16 + length > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header of {16 + length} octets, more than {V2_MAX}")
    if len(data) < 16 + length:
        return None
    if command == 0:  # LOCAL: the proxy speaking for itself
        return 16 + length, None
    if family not in _V2_FAMILIES:
        if family == 0x00:  # UNSPEC with PROXY: the proxy does not know; use the connection's
            return 16 + length, None
        raise ProxyHeaderError(f"PROXY v2 address family {family:#04x} is not TCP over IPv4 or IPv6")
    size, layout = _V2_FAMILIES[family]
    if length < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 header too short for its addresses")
    src, dst, sport, dport = struct.unpack(layout, data[16 : 16 + 2 * size + 4])
    return 16 + length, Proxied(
        str(ipaddress.ip_address(src)), sport, str(ipaddress.ip_address(dst)), dport
    )


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 address {text!r} is not IPv{version}")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 port {text!r} is not 0-65535")
    return int(text)
