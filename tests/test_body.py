"""The DATA reader: end marker, dot-unstuffing, limits, under every packet split."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mqtwisted.smtp.body import BodyReader


def feed_split(reader: BodyReader, wire: bytes, cuts: list[int]) -> bytes | None:
    rest = None
    points = sorted({c % (len(wire) + 1) for c in cuts}) + [len(wire)]
    start = 0
    for p in points:
        if p <= start:
            continue
        rest = reader.feed(wire[start:p])
        start = p
        if rest is not None:
            return rest + wire[start:]
    return rest


def stuff(body: bytes) -> bytes:
    """What a correct client sends for ``body`` (CRLF lines)."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


lines = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")) | st.sampled_from([b".", b"..", b".x", b""]),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(lines, st.lists(st.integers(min_value=0, max_value=5000), max_size=8))
def test_unstuffed_body_equals_what_client_meant_under_any_split(body_lines, cuts):
    body = b"".join(line + b"\r\n" for line in body_lines)
    wire = stuff(body[:-2]) + b"\r\n" + b".\r\n" if body else b".\r\n"
    reader = BodyReader()
    rest = feed_split(reader, wire + b"NEXT", cuts)
    assert rest == b"NEXT"
    assert reader.body().read() == body
    assert not reader.bare_newline and not reader.long_line


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_no_end_is_ever_found_except_crlf_dot_crlf(junk, cuts):
    wire = junk + b"\r\n.\r\n"
    # the first end marker, counting the virtual CRLF before the first line
    assume((b"\r\n" + wire).find(b"\r\n.\r\n") == len(junk) + 2)
    reader = BodyReader()
    rest = feed_split(reader, wire, cuts)
    assert rest == b""
    assert reader.body().read() == (b"\r\n" + junk).replace(b"\r\n.", b"\r\n")[2:] + b"\r\n"


def test_bare_lf_and_bare_cr_are_flagged():
    for body in (b"a\nb\r\n", b"a\rb\r\n", b"\n\r\n", b"a\r\r\n"):
        reader = BodyReader()
        assert reader.feed(body + b".\r\n") == b""
        assert reader.bare_newline, body


def test_smuggled_end_is_content_not_an_end():
    reader = BodyReader()
    rest = reader.feed(b"x\r\n\n.\r\nMAIL FROM:<e@x>\r\n")
    assert rest is None and reader.bare_newline


def test_long_line_flagged_across_chunks():
    reader = BodyReader(max_line=1000)
    reader.feed(b"a" * 600)
    reader.feed(b"a" * 397 + b"\r\n")  # 997 + CRLF = 999 octets: fine
    assert not reader.long_line
    reader.feed(b"b" * 999)
    reader.feed(b"\r\n.\r\n")  # 1001 octets
    assert reader.long_line


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=14), max_size=12),
       st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_a_line_is_long_exactly_when_it_and_its_crlf_pass_the_limit(lengths, cuts):
    # Lines of every length around the limit, stuffed dots among them, cut anywhere: what the
    # reader says is what counting each line with its CRLF says.
    body = b"".join((b"." if n % 3 == 0 else b"x") * n + b"\r\n" for n in lengths)
    reader = BodyReader(max_line=10)
    assert feed_split(reader, stuff(body) + b".\r\n", cuts) == b""
    assert reader.long_line == any(len(line) + 2 > 10 for line in stuff(body).split(b"\r\n")[:-1])
    assert not reader.bare_newline and reader.body().data == body


def test_only_cr_and_lf_break_lines():
    # Vertical tab, form feed, the file/group/record separators and NEL end lines for str, not
    # for SMTP: a line holding them is one line, and its length counts them.
    reader = BodyReader(max_line=10)
    assert reader.feed(b"ab\x0b\x0c\x1c\x1d\x1e\x85cd\r\n.\r\n") == b""
    assert reader.long_line and not reader.bare_newline


def test_size_limit_stops_keeping_bytes():
    reader = BodyReader(max_size=1000)
    for _ in range(100):
        reader.feed(b"x" * 98 + b"\r\n")
    assert reader.too_big
    assert reader.feed(b".\r\n") == b""
    assert reader._parts == []


def test_large_body_spills_to_a_file(tmp_path):
    reader = BodyReader(spill_size=1000, spill_dir=str(tmp_path))
    chunk = (b"y" * 98 + b"\r\n") * 100
    for _ in range(5):
        reader.feed(chunk)
    reader.feed(b".\r\n")
    body = reader.body()
    assert body.path is not None and body.read() == chunk * 5
    reader.discard()
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.binary(max_size=60), st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_a_nul_anywhere_is_flagged_under_any_split(before, after, cuts):
    body = (before + b"\0" + after).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
    reader = BodyReader()
    assert feed_split(reader, stuff(body[:-2]) + b"\r\n.\r\n", cuts) == b""
    assert reader.nul


def test_a_body_without_nul_is_not_flagged():
    reader = BodyReader()
    assert reader.feed(b"a\r\n\x01\x7f\xff\r\n.\r\n") == b""
    assert not reader.nul


@settings(max_examples=200, deadline=None)
@given(lines, st.lists(st.integers(min_value=0, max_value=5000), max_size=8))
def test_chunks_are_kept_as_sent_under_any_split(body_lines, cuts):
    body = b"".join(line + b"\r\n" for line in body_lines)
    reader = BodyReader()
    points = sorted({c % (len(body) + 1) for c in cuts}) + [len(body)]
    start = 0
    for p in points:
        reader.feed_chunk(body[start:p], binary=False)
        start = p
    reader.end_chunks()
    assert reader.body().read() == body  # no dot-unstuffing: BDAT has no stuffing
    assert not reader.bare_newline and not reader.long_line


def test_chunk_checks_bare_newlines_nul_and_lines_across_chunk_edges():
    reader = BodyReader(max_line=10)
    reader.feed_chunk(b"abc\r", binary=False)
    reader.feed_chunk(b"\ndef\r\n", binary=False)  # CRLF split over two chunks: fine
    assert not reader.bare_newline
    reader.feed_chunk(b"x\r", binary=False)
    reader.end_chunks()  # a CR at the very end: bare
    assert reader.bare_newline
    reader = BodyReader(max_line=10)
    reader.feed_chunk(b"12345", binary=False)
    reader.feed_chunk(b"678901\r\n", binary=False)
    assert reader.long_line
    reader = BodyReader()
    reader.feed_chunk(b"a\x00b\r\n", binary=False)
    assert reader.nul


def test_binary_chunks_are_not_judged_as_text():
    reader = BodyReader(max_line=10)
    data = bytes(range(256)) * 4
    reader.feed_chunk(data, binary=True)
    reader.end_chunks()
    assert not (reader.bare_newline or reader.long_line or reader.nul)
    assert reader.body().read() == data
