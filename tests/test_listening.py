"""A port already in use stops the start with one line naming the option (not a traceback)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.realmta import ROOT, TWISTD, env


@pytest.fixture
def taken_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _start(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "mqmta", f"--data-dir={tmp_path}",
           "--delivery=off", *args]
    return subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("option", ["smtp-port", "smtp-secure-port", "www-port"])
def test_port_in_use_is_one_line_naming_the_option(tmp_path, taken_port, option):
    from tests.conftest import free_port

    ports = {"smtp-port": str(free_port()), "www-port": "", option: str(taken_port)}
    args = [f"--{name}={value}" for name, value in ports.items()]
    done = _start(tmp_path, *args)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"mqmta: --{option}: cannot listen on 127.0.0.1:{taken_port}: Address already in use" in out
    assert "Traceback" not in out
