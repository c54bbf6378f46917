"""POST /v1/inject at volume on a real ``twistd mqmta``: 5,000 documents in batches of 100 are each
queued once and delivered (to Postfix's smtp-sink), and a kill -9 in the middle of injecting loses
none of the documents whose request was answered 200."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mqtwisted.queue.spool_tables import read_documents
from tests.conftest import block_until, free_port, wait_port
from tests.realmta import MTAProcess, spool_stats

MIME = "From: app@example.org\r\nTo: {to}\r\nSubject: batch\r\n\r\nHello from the API.\r\n"
TOTAL, BATCH = 5000, 100


def post(base: str, docs: list[dict[str, Any]]) -> tuple[int, Any]:
    request = urllib.request.Request(base + "/v1/inject", data=json.dumps(docs).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def batch(start: int) -> list[dict[str, Any]]:
    return [{"envelope": "app@example.org", "recipient": f"r{i}@example.com", "mime": MIME.format(to=f"r{i}@example.com")}
            for i in range(start, start + BATCH)]


def documents(data_dir: str, queue: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{os.path.join(data_dir, 'spool.sqlite3')}?mode=ro", uri=True)
    try:
        return [doc for _, doc in read_documents(db, queue, 10**9)]
    finally:
        db.close()


@pytest.mark.slow
def test_five_thousand_in_batches_queued_once_and_delivered(tmp_path, smtp_sink):
    www = free_port()
    data = str(tmp_path / "data")
    mta = MTAProcess(data, f"--smarthost=127.0.0.1:{smtp_sink}", f"--www-port={www}", "--smtp-client-security=none",
                     "--max-idle-time=1")
    mta.start()
    try:
        wait_port(www, 60, proc=mta.proc)
        base = f"http://127.0.0.1:{www}"
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda start: post(base, batch(start)), range(0, TOTAL, BATCH)))
        assert [status for status, _ in answers] == [200] * (TOTAL // BATCH)
        queued = [q for _, body in answers for q in body["queued"]]
        assert len({q["id"] for q in queued}) == TOTAL  # one id per document, none reused
        assert sorted(q["recipient"] for q in queued) == sorted(f"r{i}@example.com" for i in range(TOTAL))
        block_until(lambda: spool_stats(data).get("success", 0) >= TOTAL, 240, "every document delivered")
        delivered = [d["recipient"] for d in documents(data, "success")]
        assert sorted(delivered) == sorted(f"r{i}@example.com" for i in range(TOTAL))  # each exactly once
        assert spool_stats(data).get("outbox", 0) == 0
    finally:
        mta.stop()


@pytest.mark.slow
def test_kill9_during_injection_loses_nothing_answered(tmp_path):
    www = free_port()
    data = str(tmp_path / "data")
    mta = MTAProcess(data, f"--www-port={www}")  # delivery off: what was queued stays to be counted
    mta.start()
    answered: list[dict[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        wait_port(www, 60, proc=mta.proc)
        base = f"http://127.0.0.1:{www}"

        def inject(worker: int) -> None:
            n = worker * 1_000_000
            while not stop.is_set():
                try:
                    status, body = post(base, batch(n))
                except OSError:
                    return  # the MTA is gone: this request was never answered
                if status == 200:
                    with lock:
                        answered.extend(body["queued"])
                n += BATCH

        threads = [threading.Thread(target=inject, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        block_until(lambda: len(answered) >= 1500, 120, "some batches answered")
        os.kill(mta.proc.pid, signal.SIGKILL)
        mta.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(60)
        stored = {d["recipient"] for d in documents(data, "outbox")}
        lost = [q["recipient"] for q in answered if q["recipient"] not in stored]
        assert not lost, f"{len(lost)} of {len(answered)} answered documents lost, e.g. {lost[:3]}"
        assert len(stored) >= len(answered)
    finally:
        stop.set()
        mta.kill()
