"""Tests of plugins/allowlist.py and plugins/tagger.py, for trial and for pytest.

Run from the project's root: ``python -m twisted.trial tests.test_plugin_harness_trial``.
"""

import os

from twisted.trial import unittest

from mqtwisted import api as mq
from mqtwisted import testing
from plugins import allowlist, tagger

MESSAGE = "From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


class AllowlistTests(unittest.TestCase):
    def setUp(self):
        listed = self.mktemp()
        with open(listed, "w") as f:
            f.write("b@example.com\n@example.org\n")
        # the plugin reads its list in mq_initialize, from the file this variable names
        self.patch(os, "environ", {**os.environ, "MQ_ALLOWLIST": listed})

    async def test_rcptto_refuses_a_recipient_not_listed(self):
        runner = testing.hook_runner([allowlist])
        self.addCleanup(runner.stop)
        conn = testing.test_connection(remote_ip="192.0.2.1")
        reply = await runner.run("mq_smtp_in_rcptto", conn, "<c@example.net>")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.7.1"))
        self.assertIsNone(await runner.run("mq_smtp_in_rcptto", conn, "<anyone@example.org>"))
        runner.connection_closed(conn)

    async def test_the_mta_queues_only_listed_recipients(self):
        mta = await testing.start_mta(self.mktemp(), plugins=[allowlist])
        self.addCleanup(mta.stop)
        refused = await mta.send("a@example.com", ["b@example.com", "c@example.net"], MESSAGE)
        self.assertEqual(list(refused), ["c@example.net"])
        self.assertEqual(refused["c@example.net"][0], 550)
        documents = await mta.documents("outbox")
        self.assertEqual([d["recipient"] for d in documents], ["b@example.com"])


class TaggerTests(unittest.TestCase):
    async def test_message_hook_tags_the_json_and_adds_a_header(self):
        runner = testing.hook_runner([tagger])
        self.addCleanup(runner.stop)
        conn = testing.test_connection()
        document = {"recipient": "b@example.com", "hostname": "mx.test", "mime": MESSAGE}
        message = testing.incoming_message(document)
        self.assertIsNone(await runner.run("mq_smtp_in_message", conn, message))
        self.assertEqual(mq.MQ_json(message)["tags"], ["via-mqmta"])
        self.assertEqual(mq.MQ_mime(message), b"X-MQ-Received-By: mx.test\r\n" + MESSAGE.encode())
        runner.connection_closed(conn)
