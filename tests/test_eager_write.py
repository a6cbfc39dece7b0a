"""``pushtwisted._eager_write``: writes sent at once while nothing waits, in order otherwise.

The transport under test owns one end of a local ``socketpair``; the
reactor it registers with is a ``MemoryReactor``, so what the tests see is
whether it asked to be watched for writability, never a reactor turn.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted._eager_write import EagerServer, eager_writes


class _Port:
    """What ``tcp.Server`` reads of its listening port."""

    _realPortNumber = 0


class EagerServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.reactor = MemoryReactorClock()
        self.protocol = Protocol()
        self.transport = EagerServer(
            self.ours,
            self.protocol,
            ("127.0.0.1", 1),
            _Port(),
            1,
            self.reactor,  # type: ignore[arg-type]
        )
        self.protocol.makeConnection(self.transport)

    def received(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 16)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def watched(self) -> bool:
        return self.transport in self.reactor.getWriters()

    def test_write_goes_out_at_once(self) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\n\r\n{}")
        self.assertEqual(self.received(), b"HTTP/1.1 200 OK\r\n\r\n{}")
        self.assertFalse(self.watched())

    def test_write_sequence_is_one_write(self) -> None:
        self.transport.writeSequence([b"head ", b"and ", b"body"])
        self.assertEqual(self.received(), b"head and body")
        self.assertFalse(self.watched())

    def test_empty_write_sends_nothing(self) -> None:
        self.transport.write(b"")
        self.assertEqual(self.received(), b"")
        self.assertFalse(self.watched())

    def test_what_the_socket_refuses_is_buffered_and_order_kept(self) -> None:
        big = bytes(range(256)) * 16384  # 4 MiB: more than a socket buffer holds
        self.transport.write(big)
        self.assertTrue(self.watched())
        self.transport.write(b"after")  # earlier bytes wait: this one must queue behind them
        got = []
        while self.watched():
            got.append(self.received())
            result = self.transport.doWrite()
            self.assertIsNone(result)
            if self.transport.offset == len(self.transport.dataBuffer) and not (
                self.transport._tempDataBuffer
            ):
                self.transport.stopWriting()
        got.append(self.received())
        self.assertEqual(b"".join(got), big + b"after")

    def test_error_left_to_twisted(self) -> None:
        lost: list[Any] = []
        self.protocol.connectionLost = lost.append  # type: ignore[method-assign]
        self.peer.close()
        self.transport.write(b"x" * 100)
        # The failed send did not raise; the bytes wait for Twisted's own write.
        self.assertTrue(self.watched())
        result = self.transport.doWrite()
        self.assertIsNotNone(result)  # Twisted closes the connection on this result
        self.transport.connectionLost(Failure(result))
        self.assertEqual(len(lost), 1)

    def test_a_closed_connection_writes_nothing(self) -> None:
        self.transport.connectionLost(Failure(ConnectionDone()))
        self.transport.write(b"late")  # no send on the closed socket, no error
        self.assertFalse(self.watched())
        self.assertEqual(self.transport._tempDataBuffer, [])

    def test_started_tls_is_left_to_twisted(self) -> None:
        self.transport.TLS = True
        self.assertFalse(self.transport._nothing_waiting())


class EagerWritesTests(SynchronousTestCase):
    def test_tcp_port_builds_eager_connections(self) -> None:
        port = tcp.Port(0, Factory(), reactor=MemoryReactorClock())
        eager_writes(port)
        self.assertIs(port.transport, EagerServer)

    def test_other_transports_are_kept(self) -> None:
        class Custom(tcp.Server):
            pass

        port = tcp.Port(0, Factory(), reactor=MemoryReactorClock())
        port.transport = Custom
        eager_writes(port)
        self.assertIs(port.transport, Custom)

    def test_other_ports_are_left_alone(self) -> None:
        fake = MemoryReactorClock().listenTCP(0, Factory())
        eager_writes(fake)
        self.assertFalse(hasattr(fake, "transport"))
