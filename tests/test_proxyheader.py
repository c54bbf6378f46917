"""The PROXY protocol header parser (v1 and v2), under every split and every malformed input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtwisted.smtp.proxyheader import V2_SIGNATURE, Proxied, ProxyHeaderError, parse


def v2(src: str, dst: str, sport: int, dport: int, command: int = 1, tlvs: bytes = b"") -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if a.version == 4 else 0x21
    body = a.packed + b.packed + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


CASES = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", Proxied("192.0.2.7", 40000, "198.51.100.1", 25)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n", Proxied("2001:db8::7", 40000, "2001:db8::1", 25)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (v2("192.0.2.7", "198.51.100.1", 40000, 25), Proxied("192.0.2.7", 40000, "198.51.100.1", 25)),
    (v2("2001:db8::7", "2001:db8::1", 1, 2, tlvs=b"\x01\x00\x02h2"), Proxied("2001:db8::7", 1, "2001:db8::1", 2)),
    (v2("192.0.2.7", "198.51.100.1", 1, 2, command=0), None),
]


@pytest.mark.parametrize("header, expected", CASES)
def test_headers_parse_and_every_prefix_waits_for_more(header, expected):
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
    assert parse(header + b"EHLO x\r\n") == (len(header), expected)


@pytest.mark.parametrize("bad", [
    b"EHLO client\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",
    b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",
    b"PROXY TCP4 192.0.2.300 198.51.100.1 1 25\r\n",
    b"PROXY TCP5 192.0.2.7 198.51.100.1 1 25\r\n",
    b"PROXY TCP4 \xff 198.51.100.1 1 25\r\n",
    b"PROXY " + b"1" * 200,
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
    V2_SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12),  # AF_UNIX: not TCP
    V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # too short for IPv4 addresses
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # longer than any proxy sends
    b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c",
])
def test_malformed_headers_are_refused_with_a_reason(bad):
    with pytest.raises(ProxyHeaderError):
        parse(bad)


@given(st.binary(max_size=300))
def test_any_bytes_either_wait_parse_or_raise_the_one_error(data):
    try:
        result = parse(data)
    except ProxyHeaderError:
        return
    if result is not None:
        length, _ = result
        assert 0 < length <= len(data)
