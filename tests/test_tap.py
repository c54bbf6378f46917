"""TAP files and ``twist``: ``mqmta mktap`` writes a TAP, ``twistd -n -f`` runs it as a real
process, SIGTERM makes twistd save ``mqmta-shutdown.tap``, and that file runs the MTA again."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import block_until, free_port, send_mail, wait_port
from tests.realmta import MTAProcess, env, spool_documents

MSG = b"From: a@example.com\r\nSubject: tap\r\n\r\nHello.\r\n"

PLUGIN = """\
from mqtwisted import api as mq

def mq_version():
    return mq.MQ_API_VERSION

def mq_smtp_in_message(ctx, conn, message):
    mq.MQ_json(message).setdefault("tags", []).append("tap-plugin")
    return False
"""

pytestmark = pytest.mark.slow


def mqmta(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from mqtwisted.cli import main; raise SystemExit(main())", *args],
        env=env(), cwd=cwd, capture_output=True, text=True, timeout=60,
    )


def test_mktap_run_stop_and_run_the_shutdown_tap(tmp_path):
    data = tmp_path / "data"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tagger.py").write_text(PLUGIN)
    port, www = free_port(), free_port()
    dead = free_port()  # nothing listens: deliveries fail temporarily and stay queued
    tap = tmp_path / "mqmta.tap"
    made = mqmta(
        "mktap", f"--data-dir={data}", f"--smtp-port={port}", f"--www-port={www}", "--hostname=mx.test",
        f"--plugin-directory={plugins}", "--threads=2", f"--smarthost=127.0.0.1:{dead}",
        "-o", str(tap), cwd=str(tmp_path),
    )
    assert made.returncode == 0, made.stderr
    assert tap.exists()

    mta = MTAProcess(str(data), port=port)
    mta.start("-f", str(tap), service_args=False)
    try:
        send_mail(port, rcpts=["one@example.com"], msg=MSG, starttls=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{www}/status", timeout=10) as r:
            status = json.load(r)
        assert status["messages"]["accepted"] == 1
        assert status["plugins"]["loaded"] == ["tagger"]
    finally:
        mta.stop()
    # twistd ends by re-raising the signal it stopped for
    assert mta.proc.returncode in (0, -signal.SIGTERM), mta.output()
    shutdown_tap = data / "mqmta-shutdown.tap"  # twistd saves it in its working directory
    assert shutdown_tap.exists(), mta.output()
    assert "Saved." in mta.output()

    again = MTAProcess(str(data), port=port)
    again.start("-f", str(shutdown_tap), service_args=False)
    try:
        send_mail(port, rcpts=["two@example.com"], msg=MSG, starttls=True)
        # let the restored delivery make its first attempt before stopping (it is asynchronous)
        block_until(lambda: all(d.get("results") for d in spool_documents(str(data), "outbox")),
                    what="a delivery attempt for every document", step=0.2)
    finally:
        again.stop()
    assert again.proc.returncode in (0, -signal.SIGTERM), again.output()
    docs = spool_documents(str(data), "outbox")
    assert sorted(d["recipient"] for d in docs) == ["one@example.com", "two@example.com"]
    assert all("tap-plugin" in d["tags"] for d in docs)
    # delivery ran in both processes (and failed against the dead smarthost, so they wait)
    assert all(d.get("results") for d in docs), docs


def test_every_service_pickles_without_live_state(tmp_path):
    """What twistd saves at shutdown: no sockets, reactors, threads or pools in the pickle."""
    from twisted.application import service

    from mqtwisted.options import MQOptions
    from mqtwisted.service import make_service

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tagger.py").write_text(PLUGIN)
    options = MQOptions()
    options.parseOptions([
        f"--data-dir={tmp_path / 'data'}", "--smtp-port=0", "--www-port=0", "--smtp-secure-port=0",
        f"--plugin-directory={plugins}", "--threads=1", "--hostname=mx.test",
    ])
    app = service.Application("mqmta")
    top = make_service(options, signals=True)
    top.setServiceParent(app)
    data = pickle.dumps(app)

    classes: set[tuple[str, str]] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # noqa: ANN201
            classes.add((module, name))
            return super().find_class(module, name)

    clone = Recording(io.BytesIO(data)).load()
    live = ("socket", "_socket", "threading", "sqlite3", "twisted.internet.tcp", "twisted.internet.epollreactor",
            "twisted.python.threadpool", "mqtwisted.contexts", "prometheus_client")
    assert not [c for c in classes if c[0].split(".")[0] in live or c[0] in live], sorted(classes)
    top2 = list(service.IServiceCollection(clone))[0]
    assert [s.name for s in top2 if s.name] == ["queue", "plugins", "delivery", "web"]
    assert top2.factory.hooks is top2.plugins and top2.cleanup.hooks is top2.plugins
    assert top2.plugins.runner.plugins[0].name == "tagger"


def test_twist_runs_mqmta(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    twist = "import sys; sys.argv[0] = 'twist'; from twisted.application.twist._twist import Twist; Twist.main()"
    log = open(data / "twist.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", twist, "mqmta", f"--data-dir={data}", f"--smtp-port={port}", "--www-port=",
         "--hostname=mx.test", "--delivery=off"],
        env=env(), cwd=str(data), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc=proc)
        send_mail(port, rcpts=["twist@example.com"], msg=MSG, starttls=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    output = (data / "twist.log").read_text()
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "shutdown complete" in output
    assert [d["recipient"] for d in spool_documents(str(data))] == ["twist@example.com"]
    assert not os.path.exists(data / "mqmta-shutdown.tap")  # twist saves nothing
