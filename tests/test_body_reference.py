"""The chunked body reader against a line-by-line reference, on wire made of the pieces that
matter (bare CR and LF, CRLF, dots, NUL, the end marker) and split anywhere: its speed-ups
(one search for CRLF-dot, one split for every check, a carry between chunks) must not change
a verdict."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqtwisted.smtp.body import BodyReader

PIECES = [b"a", b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\0", b"\r\n.\r\n"]
wires = st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join)
splits = st.lists(st.integers(min_value=0, max_value=120), max_size=5)


def reference(wire: bytes) -> tuple[bytes, bool, bool, bytes] | None:
    """DATA read by the rules alone: the first CRLF . CRLF (after the reply's CRLF) ends it."""
    virtual = b"\r\n" + wire
    end = virtual.find(b"\r\n.\r\n")
    if end < 0:
        return None
    content = virtual[2 : end + 2]
    body = (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]
    alone = content.replace(b"\r\n", b"")
    return body, b"\r" in alone or b"\n" in alone, b"\0" in content, virtual[end + 5 :]


def read(wire: bytes, cuts: list[int]) -> tuple[bytes, bool, bool, bytes] | None:
    reader = BodyReader()
    edges = sorted(min(c, len(wire)) for c in cuts) + [len(wire)]
    start = 0
    for edge in edges:
        rest = reader.feed(wire[start:edge])
        if rest is not None:
            return reader.body().read(), reader.bare_newline, reader.nul, rest + wire[edge:]
        start = edge
    return None


@given(wires, splits)
def test_data_verdicts_equal_the_reference_under_any_split(wire: bytes, cuts: list[int]) -> None:
    assert read(wire, cuts) == reference(wire)


@given(wires, splits)
def test_text_chunks_verdicts_equal_the_reference_under_any_split(data: bytes, cuts: list[int]) -> None:
    reader = BodyReader()
    edges = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        reader.feed_chunk(data[a:b], binary=False)
    reader.end_chunks()
    alone = data.replace(b"\r\n", b"")
    assert (reader.body().read(), reader.bare_newline, reader.nul) == (data, b"\r" in alone or b"\n" in alone,
                                                                       b"\0" in data)
