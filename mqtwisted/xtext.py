"""RFC 3461 xtext: how ``ORCPT`` and ``ENVID`` values travel in ESMTP parameters.

The inbound side validates and decodes them into the queued document; the outbound side encodes
them again.  Both directions live here so they cannot drift apart.
"""

from __future__ import annotations

import re

#: A well-formed xtext string: printable ASCII except ``+`` and ``=``, or ``+`` and two hex digits.
XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")


def is_xtext(value: str) -> bool:
    """True when ``value`` is well-formed xtext."""
    return XTEXT.match(value) is not None


def xtext_encode(value: str) -> str:
    """``value`` as xtext (UTF-8 bytes outside the printable range become ``+XX``)."""
    out = []
    for o in value.encode("utf-8"):
        out.append(chr(o) if 33 <= o <= 126 and o not in b"+=" else "+%02X" % o)
    return "".join(out)


def xtext_decode(value: str) -> str:
    """The text ``value`` encodes (``+XX`` back to the character)."""
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)


def is_printable_xtext(value: str) -> bool:
    """True when ``value`` is xtext whose text is printable US-ASCII (RFC 3461 §4.2 and §4.4 ask
    that of ORCPT and ENVID).  The text is written into delivery reports as a field's value, so
    an encoded CR or LF would start fields of the sender's choosing, as Postfix also refuses."""
    return is_xtext(value) and all(" " <= c <= "~" for c in xtext_decode(value))
