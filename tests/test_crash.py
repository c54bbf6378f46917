"""Crash safety with a real process: kill -9 while clients send; every 250 must be on disk."""

from __future__ import annotations

import smtplib
import threading
import time

from tests.conftest import block_until
from tests.realmta import MTAProcess, spool_documents


def _client(port: int, n: int, acked: list[str], stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c.test")
                while not stop.is_set():
                    i += 1
                    mid = f"<{n}.{i}@crash.test>"
                    msg = f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\n{'x' * 500}\r\n"
                    s.sendmail("a@example.com", ["b@example.com"], msg)
                    acked.append(mid)  # only after the 250
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)  # a client's pause before it reconnects (the MTA is down)


def test_kill_9_during_inbound_loses_no_acknowledged_message(tmp_path):
    data = str(tmp_path / "data")
    mta = MTAProcess(data).start()
    acked: list[str] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_client, args=(mta.port, n, acked, stop)) for n in range(8)]
    for c in clients:
        c.start()
    try:
        block_until(lambda: len(acked) >= 300, 60, "300 messages acknowledged before the kill")
        mta.kill()  # SIGKILL, mid-traffic
        killed_at = len(acked)
    finally:
        stop.set()
        for c in clients:
            c.join(10)
    assert killed_at >= 300, f"only {killed_at} messages acknowledged before the kill"
    stored = {d["message-id"] for d in spool_documents(data)}
    lost = [m for m in acked if m not in stored]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost"
    # and the MTA starts again on the same spool, with everything in it
    again = MTAProcess(data, port=mta.port).start()
    try:
        with smtplib.SMTP("127.0.0.1", again.port, timeout=5) as s:
            s.sendmail("a@example.com", ["b@example.com"], "Message-ID: <after@crash.test>\r\n\r\nx\r\n")
    finally:
        again.stop()
    assert len(spool_documents(data)) >= len(acked) + 1
