"""The edges with real parts: HAProxy sending PROXY v2 in front of a real mqmta, and a data
directory on a small tmpfs that fills up under load."""

from __future__ import annotations

import os
import smtplib
import subprocess
import threading

import pytest

from tests.conftest import MSG, need, wait_port
from tests.realmta import MTAProcess, spool_documents, spool_stats


@pytest.fixture
def haproxy(tmp_path):
    """HAProxy on a free port, relaying TCP to the port ``mta`` gives it, with send-proxy-v2."""
    from tests.conftest import free_port

    binary = need("haproxy")
    procs = []

    def start(backend_port: int) -> int:
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "global\n  maxconn 100\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            f"frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend mta\n"
            f"backend mta\n  server mqmta 127.0.0.1:{backend_port} send-proxy-v2\n"
        )
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        wait_port(port, 20, proc=proc)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_behind_haproxy_the_json_shows_the_real_client(tmp_path, haproxy):
    from tests.conftest import free_port

    proxy_port = free_port()
    mta = MTAProcess(str(tmp_path / "d"), f"--smtp-proxy-ports={proxy_port}", "--smtp-proxy-from=127.0.0.1/32",
                     "--local-domains=local.test").start()
    try:
        wait_port(proxy_port, 30)
        front = haproxy(proxy_port)
        with smtplib.SMTP("127.0.0.1", front, timeout=20, source_address=("127.0.0.5", 0)) as s:
            s.sendmail("a@example.com", ["b@local.test"], MSG)
        # the direct port still works, and takes no header
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20, source_address=("127.0.0.6", 0)) as s:
            s.sendmail("a@example.com", ["c@local.test"], MSG)
        # a PROXY header from outside smtp-proxy-from: refused before anything is read
        with smtplib.SMTP(timeout=20, source_address=("127.0.0.9", 0)) as s:
            code, text = s.connect("127.0.0.1", proxy_port)
            assert (code, text) == (421, b"4.7.0 PROXY protocol not accepted from this address")
    finally:
        mta.stop()
    docs = {d["recipient"]: d for d in spool_documents(mta.data_dir, "local")}
    assert docs["b@local.test"]["connection"]["remote-ip"] == "127.0.0.5"
    assert docs["c@local.test"]["connection"]["remote-ip"] == "127.0.0.6"
    assert "127.0.0.9" in mta.output() and "smtp-proxy-from" in mta.output()


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_filling_disk_refuses_at_mail_with_452_keeps_every_250_and_recovers(small_fs):
    data_dir = small_fs / "data"
    # The margin covers the messages in flight and SQLite's write-ahead log, which a checkpoint
    # copies into the spool at once (up to about 4 MiB): 12 MiB, with 16 MiB left free.
    mta = MTAProcess(str(data_dir), "--queue-minfree=12582912", "--local-domains=local.test").start()
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - 16 * 1024 * 1024))  # leave about 4 MiB above the limit
    body = MSG + b"x" * 76 + (b"\r\n" + b"y" * 76) * 2000  # about 156 kB
    accepted, refusals = [], []
    lock = threading.Lock()

    def client(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as s:
            for i in range(60):
                try:
                    s.sendmail("a@example.com", [f"r{n}-{i}@local.test"], body)
                except smtplib.SMTPSenderRefused as e:
                    with lock:
                        refusals.append(("MAIL", e.smtp_code))
                    s.rset()
                except smtplib.SMTPDataError as e:
                    with lock:
                        refusals.append(("DATA", e.smtp_code))
                else:
                    with lock:
                        accepted.append(f"r{n}-{i}@local.test")

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert accepted and refusals
        assert {r for r in refusals} == {("MAIL", 452)}
        filler.unlink()
        import time

        time.sleep(1.5)  # the free-space answer is cached for a second
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as s:
            s.sendmail("a@example.com", ["after@local.test"], body)
    finally:
        mta.stop()
    stored = {d["recipient"] for d in spool_documents(str(data_dir), "local")}
    assert stored == {*accepted, "after@local.test"}
    assert spool_stats(str(data_dir)).get("local") == len(accepted) + 1


def _read_reply(f) -> tuple[int, list[bytes]]:
    lines = []
    while True:
        line = f.readline()
        assert line.endswith(b"\r\n"), f"connection closed after {lines!r}"
        lines.append(line[4:-2])
        if line[3:4] == b" ":
            return int(line[:3]), lines


def test_bdat_from_a_raw_client_chunks_of_1_byte_to_1_mb_pipelined_binary_stored_byte_for_byte(tmp_path):
    import random
    import socket

    rng = random.Random(3030)
    body = bytes(rng.getrandbits(8) for _ in range(1 << 20)) + b"\r\n.\r\n\x00" * 3
    sizes, left = [1, 1, 2, 7, 1000, 65536, 1 << 20], len(body)
    chunks = []
    for size in sizes:
        take = min(size, left - len(chunks))  # keep at least one octet per later chunk
        chunks.append(body[sum(map(len, chunks)):sum(map(len, chunks)) + take])
    chunks[-1] = body[sum(map(len, chunks[:-1])):]
    assert b"".join(chunks) == body
    mta = MTAProcess(str(tmp_path / "d"), "--local-domains=local.test", "--smtp-maxsize=4194304").start()
    try:
        with socket.create_connection(("127.0.0.1", mta.port), timeout=30) as sock, sock.makefile("rb") as f:
            assert _read_reply(f)[0] == 220
            sock.sendall(b"EHLO raw.test\r\n")
            code, lines = _read_reply(f)
            assert b"CHUNKING" in lines and b"BINARYMIME" in lines
            wire = b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@local.test>\r\n"
            for i, chunk in enumerate(chunks):
                wire += f"BDAT {len(chunk)}{' LAST' if i == len(chunks) - 1 else ''}\r\n".encode() + chunk
            sock.sendall(wire)  # everything pipelined at once
            codes = [_read_reply(f)[0] for _ in range(2 + len(chunks))]
            assert codes == [250] * (2 + len(chunks))
            sock.sendall(b"QUIT\r\n")
    finally:
        mta.stop()
    [doc] = spool_documents(mta.data_dir, "local")
    from mqtwisted.jsonvalues import mime_bytes

    stored = mime_bytes(doc["mime"])
    assert len(stored) == len(body)
    assert stored == body
