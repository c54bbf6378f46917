"""write_now: bytes reach the peer in the order they were written, whether they went straight to
the socket or through Twisted's buffer (the upstream behaviour has_queued_output relies on)."""

from __future__ import annotations

import socket

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Protocol

from mqtwisted.smtp.wire import has_queued_output, write_now


def _pair() -> tuple[tcp.Connection, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    # Small kernel buffers so a modest write cannot be taken in one go.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    t = tcp.Connection(ours, Protocol(), reactor)
    t.connected = 1
    return t, peer


def _drain(t: tcp.Connection, peer: socket.socket) -> bytes:
    received = bytearray()
    for _ in range(100000):
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            chunk = b""
        received += chunk
        if has_queued_output(t):
            t.doWrite()
        elif not chunk:
            break
    return bytes(received)


def test_queued_output_is_seen_and_later_writes_wait_behind_it() -> None:
    t, peer = _pair()
    try:
        first = b"a" * (1 << 18)
        write_now(t, first)
        # Upstream contract: what the kernel did not take is queued, and the transport is a writer.
        assert has_queued_output(t)
        write_now(t, b"b" * 10)
        assert _drain(t, peer) == first + b"b" * 10
        assert not has_queued_output(t)
    finally:
        if t in reactor.getWriters():
            reactor.removeWriter(t)
        t.socket.close()
        peer.close()


def test_nothing_queued_goes_straight_to_the_socket() -> None:
    t, peer = _pair()
    try:
        write_now(t, b"250 ok\r\n")
        assert not has_queued_output(t)
        assert peer.recv(100) == b"250 ok\r\n"
    finally:
        t.socket.close()
        peer.close()


def test_what_write_now_says_lets_a_sole_writer_skip_the_look_at_the_writers() -> None:
    # The server passes back what the last call said: False means nothing waits, True means the
    # next call must look.  Order holds either way.
    t, peer = _pair()
    try:
        assert write_now(t, b"220 hi\r\n", maybe_queued=False) is False
        queued = write_now(t, b"a" * (1 << 18), maybe_queued=False)
        assert queued is True and has_queued_output(t)
        queued = write_now(t, b"b" * 10, maybe_queued=queued)
        assert queued is True
        assert _drain(t, peer) == b"220 hi\r\n" + b"a" * (1 << 18) + b"b" * 10
        assert write_now(t, b"250 ok\r\n", maybe_queued=queued) is False
        assert peer.recv(100) == b"250 ok\r\n"
    finally:
        if t in reactor.getWriters():
            reactor.removeWriter(t)
        t.socket.close()
        peer.close()
