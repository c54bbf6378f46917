"""mqtwisted.testing's direct hook calls, as a plugin author would use them."""

from __future__ import annotations

import pytest_twisted

from mqtwisted.testing import hook_runner, incoming_message, outgoing_message, test_connection
from plugins import allowlist, tagger


@pytest_twisted.inlineCallbacks
def test_allowlist_refuses_unknown_recipient_directly():
    runner = hook_runner([allowlist])
    try:
        conn = test_connection(remote_ip="192.0.2.1")
        reply = yield runner.run("mq_smtp_in_rcptto", conn, "nobody@nowhere.invalid")
        assert reply is not None and reply.code >= 500
        runner.connection_closed(conn)
    finally:
        yield runner.stop()


@pytest_twisted.inlineCallbacks
def test_tagger_edits_incoming_json_not_outgoing_wire():
    runner = hook_runner([tagger])
    try:
        conn = test_connection()
        handle = incoming_message({"recipient": "a@example.com", "tags": [], "mime": "Subject: x\\r\\n\\r\\nhi\\r\\n"})
        reply = yield runner.run("mq_smtp_in_message", conn, handle)
        assert reply is None
        assert handle.document["tags"]
        assert outgoing_message({}).outgoing is True
        runner.connection_closed(conn)
    finally:
        yield runner.stop()
