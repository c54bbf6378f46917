"""``/metrics`` and ``/status`` on a real port after real SMTP traffic; the scrape is parsed with
prometheus_client's own parser."""

from __future__ import annotations

import json
import smtplib
import urllib.request

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads

from mqtwisted.metrics import METRICS
from mqtwisted.testing import start_mta
from tests.test_plugins_support import write_plugins

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"

PLUGIN = """
def mq_smtp_in_rcptto(ctx, conn, address):
    if address.startswith("refuse"):
        mq.MQ_setResponse(conn, 550, "no such user", "5.1.1")
        return False
    time.sleep(0.002)
    return False

async def mq_smtp_in_data(ctx, conn, mime):
    return False
"""


def send_all(port: int) -> None:
    """Three accepted messages, one refused at end of DATA (too big), one refused recipient."""
    with smtplib.SMTP("127.0.0.1", port) as s:
        for _ in range(3):
            s.sendmail("a@example.com", ["b@example.com"], MSG)
        # No SIZE parameter, so the limit bites at the end of DATA (a message refused there).
        s.mail("a@example.com")
        s.rcpt("b@example.com")
        code, _ = s.data(MSG + b"x" * 3000 + b"\r\n")
        assert code == 552
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@example.com", ["refuse@example.com"], MSG)


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers["content-type"], r.read().decode()


@pytest_twisted.inlineCallbacks
def test_metrics_and_status_after_traffic(tmp_path):
    plugins = write_plugins(tmp_path / "plugins", {"timing.py": PLUGIN})
    METRICS.reset()
    mta = yield start_mta(
        str(tmp_path / "data"), www_port="0", plugin_directory=str(plugins), threads="2", smtp_maxsize="2000"
    )
    try:
        yield threads.deferToThread(send_all, mta.port)
        base = f"http://127.0.0.1:{mta.service.web.listening_port}"
        ctype, text = yield threads.deferToThread(get, base + "/metrics")
        assert ctype.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(text)}

        def samples(name: str) -> dict:
            return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}

        assert samples("mqmta_smtp_messages")[(("code", "250"), ("result", "accepted"))] == 3
        assert samples("mqmta_smtp_messages")[(("code", "552"), ("result", "refused"))] == 1
        assert samples("mqmta_queue_depth")[(("queue", "outbox"),)] == 3
        # An empty queue is a depth of 0, not a missing gauge (the spool counts only non-empty ones).
        assert samples("mqmta_queue_depth")[(("queue", "failure"),)] == 0
        assert families["mqmta_smtp_connections"].samples[0].value >= 1
        assert families["mqmta_smtp_connections_open"].samples[0].value >= 0
        hook = {
            (s.labels["plugin"], s.labels["hook"], s.name): s.value
            for s in families["mqmta_plugin_hook_duration_seconds"].samples
            if "le" not in s.labels
        }
        assert hook[("timing", "mq_smtp_in_rcptto", "mqmta_plugin_hook_duration_seconds_count")] == 5
        assert hook[("timing", "mq_smtp_in_rcptto", "mqmta_plugin_hook_duration_seconds_sum")] >= 0.008
        assert hook[("timing", "mq_smtp_in_data", "mqmta_plugin_hook_duration_seconds_count")] == 3  # not for the 552
        assert families["mqmta_plugin_threads"].samples[0].value == 2
        assert families["mqmta_plugin_threads_busy"].samples[0].value == 0
        assert "mqmta_process_resident_memory_bytes" in families or "mqmta_process_start_time_seconds" in families

        ctype, body = yield threads.deferToThread(get, base + "/status")
        assert ctype == "application/json"
        status = json.loads(body)
        assert status["messages"]["accepted"] == 3
        assert status["messages"]["refused_by_code"] == {"552": 1}
        assert status["queues"]["outbox"] == 3
        assert status["queues"]["success"] == 0
        assert status["connections"]["total"] >= 1
        assert status["plugins"]["loaded"] == ["timing"]
        assert {h["hook"] for h in status["plugins"]["hooks"]} == {"mq_smtp_in_rcptto", "mq_smtp_in_data"}
        assert status["sessions"].get("quit") == 1
    finally:
        yield mta.stop()


@pytest_twisted.inlineCallbacks
def test_web_port_is_off_by_default_in_tests_and_pickles(tmp_path):
    import pickle

    mta = yield start_mta(str(tmp_path / "a"))
    try:
        assert mta.service.web is None
    finally:
        yield mta.stop()
    mta = yield start_mta(str(tmp_path / "b"), www_port="0")
    try:
        clone = pickle.loads(pickle.dumps(mta.service))
        assert clone.web._port is None and clone.web.port == 0
        assert clone.web.mta is clone
    finally:
        yield mta.stop()
