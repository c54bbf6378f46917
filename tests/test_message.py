"""The incoming JSON model: Message-ID, x-mq-* properties (smtp-extract) and DSN fields."""

from __future__ import annotations

from mqtwisted.message import dsn_fields, extract_properties, header_block, message_id

MIME = (
    b"Subject: hi\r\nX-MQ-MaxDeliverTime: 3600\r\nX-Mq-Tags: [\"a\", \"b\"]\r\n"
    b"Message-ID:\r\n <m1@test>\r\n\r\nX-MQ-NotAHeader: body\r\n"
)


def test_header_block_stops_at_the_blank_line_crlf_or_lf():
    assert header_block(MIME).endswith(b"<m1@test>\r\n")
    assert header_block(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\nB: 2\n"
    assert header_block(b"no blank line") == b"no blank line"


def test_message_id_unfolded():
    assert message_id(header_block(MIME)) == "<m1@test>"
    assert message_id(b"Subject: x\r\n") is None


def test_x_mq_headers_become_properties_and_leave_the_mime():
    props, stripped = extract_properties(MIME, header_block(MIME))
    assert props == {"maxdelivertime": 3600, "tags": ["a", "b"]}
    assert b"X-MQ-MaxDeliverTime" not in stripped and b"X-Mq-Tags" not in stripped
    assert stripped.endswith(b"\r\n\r\nX-MQ-NotAHeader: body\r\n")  # the body is not headers
    plain = b"Subject: x\r\n\r\nbody\r\n"
    assert extract_properties(plain, header_block(plain)) == ({}, plain)


def test_dsn_fields_decode_xtext():
    assert dsn_fields({"RET": "hdrs", "ENVID": "a+2Bb"}, {"NOTIFY": "failure", "ORCPT": "rfc822;x+40y"}) == {
        "ret": "HDRS", "envid": "a+b", "notify": "FAILURE", "orcpt": "rfc822;x@y",
    }


def test_xtext_encode_and_decode_are_inverse():
    from mqtwisted.xtext import is_xtext, xtext_decode, xtext_encode

    for text in ("a+b=c d", "plain@example.com", "tab\there", "~!"):
        encoded = xtext_encode(text)
        assert is_xtext(encoded) and xtext_decode(encoded) == text
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert not is_xtext("a+b") and not is_xtext("a=b") and not is_xtext("a b")


def test_hook_registry_orders_a_session_and_names_each_hook_once():
    from mqtwisted import hooks

    assert hooks.ALL_HOOKS[0] == hooks.VERSION
    assert len(set(hooks.ALL_HOOKS)) == len(hooks.ALL_HOOKS)
    assert hooks.IN_HOOKS[0] == hooks.IN_CONNECT and hooks.IN_HOOKS[-1] == hooks.IN_CLOSE
    assert set(hooks.CONNECTION_HOOKS) == set(hooks.IN_HOOKS) | set(hooks.OUT_HOOKS)
    assert all(h.startswith("mq_smtp_in_") for h in hooks.IN_HOOKS)
    assert all(h.startswith("mq_smtp_out_") for h in hooks.OUT_HOOKS)
