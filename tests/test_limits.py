"""Limits of a real ``twistd mqmta`` process, over real TCP.

Connections in total and per client IP, recipients per message, errors per session, the idle
timeout against slow-drip clients (in commands and in DATA), SIZE, and memory: a DATA larger than
``--smtp-maxsize`` is refused without being buffered, and a 50 MB message is accepted while the
server's peak RSS grows by a small fraction of its size (the body streams to a file, then into the
spool in chunks).  The memory figures are printed (``pytest -s``) and quoted in README.rst.

Client IPs: every 127.0.0.0/8 address is local on Linux, so binding the client socket to
127.0.0.2, 127.0.0.3 … gives each test its own "client IP" against the per-IP limit.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.realmta import MTAProcess

pytestmark = pytest.mark.slow

TIMEOUT = 2.0


def connect(port: int, source_ip: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source_ip, 0))
    return s


def read_reply(s: socket.socket) -> tuple[int, bytes]:
    """One complete (possibly multi-line) reply; (0, b'') when the server closed first."""
    data = b""
    while True:
        lines = data.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) >= 4 and line[3:4] == b" " or len(line) == 3:
                return int(line[:3]), data
        chunk = s.recv(65536)
        if not chunk:
            return 0, data
        data += chunk


def command(s: socket.socket, line: bytes) -> int:
    s.sendall(line + b"\r\n")
    return read_reply(s)[0]


def closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One MTA with small limits and a 2 s idle timeout, shared by the limit tests (each test
    uses its own client IPs and closes its connections, so they do not interfere)."""
    mta = MTAProcess(
        str(tmp_path_factory.mktemp("limits")),
        "--delivery=off", "--smtp-connections=8", "--smtp-connections-per-ip=3",
        "--smtp-max-recipients=3", "--smtp-max-errors=3", f"--smtp-timeout={TIMEOUT}",
        "--smtp-maxsize=100000",
    ).start()
    yield mta
    mta.stop()


def _open(port: int, ip: str, n: int) -> list[tuple[socket.socket, int]]:
    out = []
    for _ in range(n):
        s = connect(port, ip)
        out.append((s, read_reply(s)[0]))
    return out


def test_connections_per_ip(limited):
    conns = _open(limited.port, "127.0.0.2", 4)
    try:
        assert [code for _, code in conns] == [220, 220, 220, 421]
        assert closed_by_server(conns[3][0], 2)
        # another client IP is not affected
        (other, code), = _open(limited.port, "127.0.0.3", 1)
        assert code == 220
        other.close()
        # and a slot is free again once one of the three leaves
        assert command(conns[0][0], b"QUIT") == 221
        # the server closes after 221, and its count drops as it does
        assert closed_by_server(conns[0][0], 10)
        conns[0][0].close()
        (again, code), = _open(limited.port, "127.0.0.2", 1)
        assert code == 220
        again.close()
    finally:
        for s, _ in conns:
            s.close()


def test_connections_in_total(limited):
    # Connections of earlier tests are released: their closes reached the server before this
    # session's, and the server has counted a session it closed itself off (QUIT, then EOF).
    (probe, code), = _open(limited.port, "127.0.9.1", 1)
    assert code == 220 and command(probe, b"QUIT") == 221 and closed_by_server(probe, 10)
    probe.close()
    conns = []
    try:
        for i in range(8):
            conns += _open(limited.port, f"127.0.1.{i}", 1)
        assert [code for _, code in conns] == [220] * 8
        (extra, code), = _open(limited.port, "127.0.2.1", 1)
        assert code == 421 and closed_by_server(extra, 2)
        extra.close()
        # the sessions that got in still work
        assert command(conns[0][0], b"EHLO c.test") == 250
    finally:
        for s, _ in conns:
            s.close()


def test_recipients_per_message(limited):
    (s, _), = _open(limited.port, "127.0.3.1", 1)
    with s:
        assert command(s, b"EHLO c.test") == 250
        assert command(s, b"MAIL FROM:<a@example.com>") == 250
        codes = [command(s, f"RCPT TO:<r{i}@example.com>".encode()) for i in range(5)]
        assert codes == [250, 250, 250, 452, 452]
        # the message still goes through with the three it has
        assert command(s, b"DATA") == 354
        assert command(s, b"Subject: x\r\n\r\nhi\r\n.") == 250


def test_errors_per_session_then_disconnect(limited):
    (s, _), = _open(limited.port, "127.0.3.2", 1)
    with s:
        codes = [command(s, b"BOGUS") for _ in range(4)]
        assert codes == [500, 500, 500, 421]
        assert closed_by_server(s, 2)


def _drip(s: socket.socket, data: bytes, interval: float, budget: float) -> float | None:
    """Send ``data`` one byte per ``interval``; the time until the server closed, or None.

    A real twistd's idle timeout in real time: the closing time, between TIMEOUT and a generous
    margin above it, is the behaviour under test (no clock to move in another process)."""
    start = time.monotonic()
    s.settimeout(interval)
    for i in range(len(data)):
        try:
            s.sendall(data[i:i + 1])
        except OSError:
            return time.monotonic() - start
        try:
            chunk = s.recv(65536)
            if chunk == b"" or b"421" in chunk:
                if chunk == b"" or closed_by_server(s, 1):
                    return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if time.monotonic() - start > budget:
            return None
    return None


def test_slow_drip_command_is_dropped_at_the_timeout(limited):
    """One byte every 0.5 s never completes a line: bytes alone do not keep a session alive."""
    (s, _), = _open(limited.port, "127.0.3.3", 1)
    with s:
        elapsed = _drip(s, b"EHLO " + b"x" * 100, 0.5, TIMEOUT * 4)
    assert elapsed is not None and TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 2, elapsed


def test_slow_drip_data_is_dropped_at_the_timeout(limited):
    """In DATA, complete lines at a trickle do not reset the timer either (only 64 KiB do)."""
    (s, _), = _open(limited.port, "127.0.3.4", 1)
    with s:
        assert command(s, b"EHLO c.test") == 250
        assert command(s, b"MAIL FROM:<a@example.com>") == 250
        assert command(s, b"RCPT TO:<b@example.com>") == 250
        assert command(s, b"DATA") == 354
        elapsed = _drip(s, b"a\r\n" * 100, 0.3, TIMEOUT * 4)
    assert elapsed is not None and TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 2, elapsed


def test_declared_size_refused_at_mail(limited):
    (s, _), = _open(limited.port, "127.0.3.5", 1)
    with s:
        assert command(s, b"EHLO c.test") == 250
        assert command(s, b"MAIL FROM:<a@example.com> SIZE=100001") == 552
        assert command(s, b"NOOP") == 250


# -- memory: real message sizes against one process with a 60 MB limit ----------------------------

LINE = b"x" * 998 + b"\r\n"


def _send_big(port: int, size: int) -> tuple[int, float]:
    """One message of ``size`` bytes of 1000-octet lines; its DATA reply code and duration."""
    block = LINE * 1024  # ~1 MB per sendall
    with connect(port, timeout=120) as s:
        read_reply(s)
        assert command(s, b"EHLO c.test") == 250
        assert command(s, b"MAIL FROM:<a@example.com>") == 250
        assert command(s, b"RCPT TO:<b@example.com>") == 250
        assert command(s, b"DATA") == 354
        start = time.monotonic()
        s.sendall(b"Subject: big\r\n\r\n")
        sent = 0
        while sent < size:
            s.sendall(block)
            sent += len(block)
        s.sendall(b".\r\n")
        code = read_reply(s)[0]
        return code, time.monotonic() - start


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    mta = MTAProcess(str(tmp_path_factory.mktemp("memory")), "--delivery=off", "--smtp-maxsize=60000000").start()
    yield mta
    mta.stop()


def test_oversize_data_refused_without_buffering(roomy):
    pid = roomy.proc.pid
    _send_big(roomy.port, 100_000)  # warm up: imports, first spool write
    before = vm(pid)
    code, took = _send_big(roomy.port, 100 * 1024 * 1024)
    after = vm(pid)
    growth = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"\n100 MiB DATA over a 60 MB limit: {code} after {took:.1f}s; peak RSS "
          f"{before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MiB (+{growth:.1f} MiB)")
    assert code == 552
    assert growth < 20, f"peak RSS grew {growth:.1f} MiB while refusing 100 MiB"


def test_50mb_message_accepted_with_flat_memory(roomy):
    pid = roomy.proc.pid
    _send_big(roomy.port, 100_000)
    before = vm(pid)
    code, took = _send_big(roomy.port, 50 * 1000 * 1000)
    after = vm(pid)
    growth = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"\n50 MB message: {code} after {took:.1f}s; peak RSS {before['VmHWM'] / 1024:.0f} -> "
          f"{after['VmHWM'] / 1024:.0f} MiB (+{growth:.1f} MiB, {growth / 47.7:.0%} of the message)")
    assert code == 250
    assert growth < 12, f"peak RSS grew {growth:.1f} MiB for a 50 MB message"


def test_idle_timeout_does_not_run_while_the_server_decides():
    """Regression: a hook (or the queue) slower than smtp-timeout got the client, which was
    waiting for *our* reply, a 421 and a dropped connection.  The timer now runs only while the
    server waits for the client."""
    from tests.smtpdialog import SlowHooks, ours

    hooks = SlowHooks({"mq_smtp_in_mailfrom"})
    dialog, _ = ours(hooks=hooks, timeout=2)
    dialog.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n")
    dialog.clock.advance(10)  # the plugin takes 10 s
    assert not dialog.closed
    hooks.release_all()
    assert dialog.codes() == [250, 250]
    dialog.clock.advance(1.9)  # a full idle period from our reply on
    assert not dialog.closed
    dialog.clock.advance(0.2)
    assert dialog.codes() == [421] and dialog.closed
