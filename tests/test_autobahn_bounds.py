"""Tests for ``pushtwisted._autobahn_bounds``: what one hostile WebSocket peer can cost.

Real Autobahn protocol objects through ``PushServerFactory``; bytes in through
``dataReceived``, out through ``StringTransport`` or, where the unsent output
matters, a real ``FileDescriptor`` write buffer whose peer reads only when told.
Timers run on the node's ``Clock``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted._autobahn_bounds import BoundedServerProtocol, unsent_bytes
from pushtwisted.config import Config
from pushtwisted.ids import normalize_id
from pushtwisted.storage.interface import UpdateOutcome
from pushtwisted.testing import make_node
from pushtwisted.websocket import PushServerFactory, PushServerProtocol
from tests.test_websocket import Connection, client_frame, close_code, server_frames, ws_config

_PEER = IPv4Address("TCP", "127.0.0.1", 40001)
_HELLO = b'{"messageType":"hello","channelIDs":[]}'
_CHID = "01234567-89ab-cdef-0123-456789abcdef"
_HEAD = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def _dropped(conn: Any, reason: str) -> float:
    """Return ``connections_dropped{reason}`` as counted on ``conn``'s node."""
    count: float = conn.node.metrics.count("connections_dropped", reason=reason)
    return count


class _Socket(FileDescriptor):
    """Twisted's real write buffer (``FileDescriptor``) over a peer that reads only when told.

    ``writeSomeData`` is what the kernel would take: nothing until
    ``reading`` is set, then everything (kept in ``received``).
    """

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = 1
        self.reading = False
        self.received = bytearray()
        self.aborted = False
        self.protocol: Any = None

    def writeSomeData(self, data: bytes) -> int:
        if not self.reading:
            return 0
        self.received += data
        return len(data)

    def drain(self) -> None:
        """Let the peer read everything written so far."""
        self.reading = True
        self.doWrite()

    def abortConnection(self) -> None:
        self.aborted = True
        self.connected = 0
        self.protocol.connectionLost(Failure(ConnectionAborted()))

    def getPeer(self) -> IPv4Address:
        return _PEER

    def getHost(self) -> IPv4Address:
        return _PEER


class _SocketConnection:
    """One ``PushServerProtocol`` on a ``_Socket``, handshake done."""

    def __init__(self, config: Config) -> None:
        self.node = make_node(config=config)
        self.factory = PushServerFactory(self.node)
        self.factory.openHandshakeTimeout = 0
        self.factory.closeHandshakeTimeout = 0
        self.protocol: PushServerProtocol = self.factory.buildProtocol(_PEER)
        self.socket = _Socket()
        self.socket.protocol = self.protocol
        self.protocol.makeConnection(self.socket)
        self.socket.reading = True
        self.protocol.dataReceived(_HEAD + b"\r\n")
        self.socket.doWrite()
        assert self.socket.received.startswith(b"HTTP/1.1 101 "), self.socket.received
        self.socket.received.clear()

    def hello(self) -> str:
        """Say hello (the peer reads the reply); return the UAID."""
        self.protocol.dataReceived(client_frame(_HELLO))
        self.socket.doWrite()
        [(_, reply, _)] = server_frames(bytes(self.socket.received))
        self.socket.received.clear()
        uaid: str = json.loads(reply)["uaid"]
        return uaid


class UnsentBytesTests(SynchronousTestCase):
    """``unsent_bytes`` reads Twisted's write buffer."""

    def test_file_descriptor(self) -> None:
        """When writes wait in a FileDescriptor, all of them count, minus what was sent."""
        socket = _Socket()
        self.assertEqual(unsent_bytes(socket), 0)
        socket.write(b"a" * 100)
        socket.write(b"b" * 50)
        self.assertEqual(unsent_bytes(socket), 150)
        socket.doWrite()  # the peer reads nothing: moved to dataBuffer, still unsent
        self.assertEqual(unsent_bytes(socket), 150)
        socket.write(b"c" * 7)
        self.assertEqual(unsent_bytes(socket), 157)
        socket.drain()
        self.assertEqual(unsent_bytes(socket), 0)

    def test_partial_send(self) -> None:
        """When the kernel takes part of the buffer, the rest counts (dataBuffer from offset)."""
        socket = _Socket()
        socket.write(b"x" * 1000)
        socket.writeSomeData = lambda data: 400  # type: ignore[method-assign]
        socket.doWrite()
        self.assertEqual(unsent_bytes(socket), 600)

    def test_through_wrapper(self) -> None:
        """When the protocol's transport wraps another (TLS), the inner buffer counts."""
        socket = _Socket()
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.makeConnection(socket)
        socket.write(b"x" * 42)
        self.assertEqual(unsent_bytes(wrapper), 42)

    def test_server_transports_measured(self) -> None:
        """The transports the server runs on are the kinds measured: TCP (and UNIX)
        connections are FileDescriptors, TLS is a ProtocolWrapper over one."""
        self.assertTrue(issubclass(tcp.Server, FileDescriptor))
        self.assertTrue(issubclass(unix.Server, FileDescriptor))
        self.assertTrue(issubclass(TLSMemoryBIOProtocol, ProtocolWrapper))
        self.assertIsInstance(_Socket()._tempDataLen, int)

    def test_unknown_transport(self) -> None:
        """When the transport has no such buffer (a test transport), nothing counts."""
        transport = StringTransport()
        transport.write(b"x" * 10)
        self.assertEqual(unsent_bytes(transport), 0)
        self.assertEqual(unsent_bytes(None), 0)


class ControlFrameTests(SynchronousTestCase):
    """Pings and unsolicited pongs take tokens from a per-connection bucket."""

    def test_ping_flood_closed(self) -> None:
        """When a client sends 31 pings at once, 30 are answered, then close 1008; counted."""
        conn = Connection(ws_config())
        conn.handshake()
        conn.protocol.dataReceived(b"".join(client_frame(b"p%d" % i, 9) for i in range(31)))
        frames = server_frames(conn.take())
        self.assertEqual([f[0] for f in frames], [10] * 30 + [8])
        self.assertEqual(close_code(frames[-1]), 1008)
        self.assertEqual(_dropped(conn, "control_frames"), 1)
        # More pings while closing: no pong, and the TCP connection is dropped.
        self.assertEqual(conn.send(b"more", opcode=9), [])
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(_dropped(conn, "control_frames"), 1)

    def test_non_reading_flooder_aborted(self) -> None:
        """When a flooder reads nothing, so its close frame cannot be flushed, the
        connection is aborted 2 s later, not held open."""
        conn = _SocketConnection(ws_config())
        conn.socket.reading = False
        conn.protocol.dataReceived(b"".join(client_frame(b"p", 9) for _ in range(31)))
        self.assertTrue(conn.socket.disconnecting)
        self.assertFalse(conn.socket.aborted)
        conn.node.clock.advance(3)
        self.assertTrue(conn.socket.aborted)
        self.assertEqual(_dropped(conn, "control_frames"), 1)

    def test_rate_refills(self) -> None:
        """When the burst is spent, max_control_frames_per_second come back each second."""
        conn = Connection(ws_config(max_control_frames_per_second=4.0, max_control_frames_burst=8))
        conn.handshake()
        for _ in range(8):
            self.assertEqual(conn.send(b"x", opcode=9), [(10, b"x", True)])
        conn.node.clock.advance(1.0)
        for _ in range(4):
            self.assertEqual(conn.send(b"y", opcode=9), [(10, b"y", True)])
        [frame] = conn.send(b"z", opcode=9)
        self.assertEqual(close_code(frame), 1008)

    def test_large_clock(self) -> None:
        """When the clock reads an epoch time, a full burst is still allowed (no rounding loss)."""
        config = ws_config(max_control_frames_per_second=10.0, max_control_frames_burst=30)
        conn = Connection(config)
        conn.node.clock.advance(1_765_000_000.7)
        conn.handshake()
        conn.protocol.dataReceived(b"".join(client_frame(b"p", 9) for _ in range(30)))
        self.assertEqual([f[0] for f in server_frames(conn.take())], [10] * 30)

    def test_answer_to_auto_ping_free(self) -> None:
        """When the budget is spent, the pong answering the server's ping still passes;
        an unsolicited pong then closes with 1008."""
        config = ws_config(
            auto_ping_interval=10.0,
            auto_ping_timeout=5.0,
            max_control_frames_per_second=0.01,
            max_control_frames_burst=1,
        )
        conn = Connection(config)
        conn.handshake()
        self.assertEqual(conn.send(b"mine", opcode=9), [(10, b"mine", True)])
        conn.node.clock.advance(11)
        [(opcode, ping, _)] = server_frames(conn.take())
        self.assertEqual(opcode, 9)
        self.assertEqual(conn.send(ping, opcode=10), [])
        conn.node.clock.advance(6)
        self.assertFalse(conn.transport.disconnecting)
        [frame] = conn.send(b"unsolicited", opcode=10)
        self.assertEqual(close_code(frame), 1008)

    def test_close_frame_free(self) -> None:
        """When the budget is spent, the client's close is still answered 1000."""
        conn = Connection(ws_config(max_control_frames_burst=1))
        conn.handshake()
        conn.send(b"p", opcode=9)
        [frame] = conn.send(b"\x03\xe8", opcode=8)
        self.assertEqual(close_code(frame), 1000)

    def test_off(self) -> None:
        """When max_control_frames_per_second is 0, pings are not limited."""
        conn = Connection(ws_config(max_control_frames_per_second=0.0))
        conn.handshake()
        conn.protocol.dataReceived(b"".join(client_frame(b"p", 9) for _ in range(500)))
        self.assertEqual([f[0] for f in server_frames(conn.take())], [10] * 500)


class OutputBufferTests(SynchronousTestCase):
    """A peer that does not read: its unsent output is bounded."""

    def config(self, **changes: Any) -> Config:
        return ws_config(max_output_buffer=4096, max_control_frames_per_second=0.0, **changes)

    def test_unread_pongs_abort(self) -> None:
        """When pongs pile up unread past max_output_buffer, the connection is aborted,
        counted, and nothing more is written."""
        conn = _SocketConnection(self.config())
        uaid = conn.hello()
        conn.socket.reading = False
        ping = client_frame(b"x" * 125, 9)
        for _ in range(200):
            conn.protocol.dataReceived(ping)
        self.assertTrue(conn.socket.aborted)
        self.assertEqual(_dropped(conn, "output_buffer"), 1)
        # Aborted once the buffer was over 4096: at most one pong (127 bytes) more.
        self.assertGreater(unsent_bytes(conn.socket), 4096)
        self.assertLessEqual(unsent_bytes(conn.socket), 4096 + 127)
        self.assertIsNone(conn.node.registry.get(uaid))

    def test_reading_peer_not_aborted(self) -> None:
        """When the peer reads, any number of pongs is fine."""
        conn = _SocketConnection(self.config())
        for _ in range(200):
            conn.protocol.dataReceived(client_frame(b"x" * 125, 9))
            conn.socket.doWrite()
        self.assertFalse(conn.socket.aborted)
        self.assertEqual(len(server_frames(bytes(conn.socket.received))), 200)

    def test_large_message_written_whole(self) -> None:
        """When one message is larger than the bound, it is still written: the bound is
        checked before a write, on what earlier writes left unsent."""
        conn = _SocketConnection(self.config(max_message_size=100000))
        conn.socket.reading = False
        self.assertTrue(conn.protocol.send_text("x" * 10000))
        self.assertFalse(conn.socket.aborted)
        self.assertGreater(unsent_bytes(conn.socket), 10000)

    def test_not_draining_refused_then_sent(self) -> None:
        """When a quarter of the bound is unsent, updates are refused (False: the
        endpoint answers 202); once the peer reads, the stored update is sent."""
        conn = _SocketConnection(self.config())
        uaid = conn.hello()
        conn.protocol.dataReceived(
            client_frame(json.dumps({"messageType": "register", "channelID": _CHID}).encode())
        )
        conn.socket.doWrite()
        conn.socket.received.clear()
        conn.socket.reading = False
        session = conn.protocol.session
        assert session is not None
        self.assertTrue(conn.protocol.send_text("y" * 1100))  # over 4096 / 4 now
        stored = self.successResultOf(conn.node.storage.update(uaid, normalize_id(_CHID), 7, None))
        self.assertEqual(stored.outcome, UpdateOutcome.STORED)
        self.assertFalse(session.deliver(_CHID, 7, None))
        self.assertFalse(conn.protocol.send_text("{}"))
        conn.node.clock.advance(3)  # still not read: nothing sent, nothing dropped
        self.assertEqual(conn.socket.received, b"")
        self.assertEqual(_dropped(conn, "output_buffer"), 0)
        conn.socket.drain()
        conn.socket.received.clear()
        conn.node.clock.advance(3)
        conn.socket.doWrite()
        [(_, text, _)] = server_frames(bytes(conn.socket.received))
        message = json.loads(text)
        self.assertEqual(message["messageType"], "notification")
        self.assertEqual(message["updates"], [{"channelID": _CHID, "version": 7}])
        self.assertTrue(session.deliver(_CHID, 8, None))

    def test_off(self) -> None:
        """When max_output_buffer is 0, nothing is bounded."""
        conn = _SocketConnection(ws_config(max_output_buffer=0, max_control_frames_per_second=0.0))
        conn.socket.reading = False
        for _ in range(200):
            conn.protocol.dataReceived(client_frame(b"x" * 125, 9))
        self.assertFalse(conn.socket.aborted)
        self.assertTrue(conn.protocol.send_text("{}"))


class NonReadingPeerTests(SynchronousTestCase):
    """Only a pong answers the server's ping."""

    def test_writing_peer_dropped(self) -> None:
        """When a client keeps sending messages but never answers pings, it is dropped
        within auto_ping_interval + auto_ping_timeout (plus the timer's second), and counted."""
        conn = Connection(ws_config(auto_ping_interval=10.0, auto_ping_timeout=5.0))
        conn.handshake()
        conn.send(_HELLO)
        elapsed = 0.0
        while not conn.transport.disconnecting and elapsed < 60:
            conn.protocol.dataReceived(client_frame(b'{"messageType":"purge"}'))
            conn.node.clock.advance(0.5)
            elapsed += 0.5
        self.assertTrue(conn.transport.disconnecting)
        self.assertLessEqual(elapsed, 10 + 5 + 2)
        self.assertEqual(_dropped(conn, "ping_timeout"), 1)

    def test_factory_option(self) -> None:
        """When the factory is built, Autobahn's restart-on-any-traffic is off."""
        factory = PushServerFactory(make_node(config=ws_config()))
        self.assertFalse(factory.autoPingRestartOnAnyTraffic)


class FragmentTests(SynchronousTestCase):
    """Fragments per message are bounded and cost no object each."""

    def fragments(self, message: bytes, count: int) -> bytes:
        """Return ``message`` as ``count`` frames (one byte each, then empty ones)."""
        pieces = [message[i : i + 1] for i in range(len(message))]
        pieces += [b""] * (count - len(pieces))
        frames = [client_frame(pieces[0], 1, fin=False)]
        frames += [client_frame(p, 0, fin=False) for p in pieces[1:-1]]
        frames.append(client_frame(pieces[-1], 0, fin=True))
        return b"".join(frames)

    def test_at_limit(self) -> None:
        """When a hello comes in 1,000 fragments, it is answered."""
        conn = Connection(ws_config())
        conn.handshake()
        conn.protocol.dataReceived(self.fragments(_HELLO, 1000))
        [(_, reply, _)] = server_frames(conn.take())
        self.assertEqual(json.loads(reply)["status"], 200)

    def test_over_limit(self) -> None:
        """When a message has 1,001 fragments, the server closes with 1009; counted once."""
        conn = Connection(ws_config())
        conn.handshake()
        conn.protocol.dataReceived(self.fragments(_HELLO, 1001))
        [frame] = server_frames(conn.take())
        self.assertEqual(close_code(frame), 1009)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(_dropped(conn, "fragments"), 1)
        self.assertIsNone(conn.protocol.session and conn.protocol.session.uaid)

    def test_one_buffer_per_message(self) -> None:
        """When a message arrives in many fragments, its pieces are one buffer, not one each."""
        conn = Connection(ws_config())
        conn.handshake()
        conn.protocol.dataReceived(client_frame(b"a", 1, fin=False))
        for _ in range(99):
            conn.protocol.dataReceived(client_frame(b"b", 0, fin=False))
        self.assertEqual(len(conn.protocol.message_data), 1)
        self.assertEqual(bytes(conn.protocol.message_data[0]), b"a" + b"b" * 99)

    def test_frame_in_many_reads(self) -> None:
        """When one frame arrives a byte at a time, it is still one buffer, and intact."""
        conn = Connection(ws_config())
        conn.handshake()
        frame = client_frame(_HELLO)
        for i in range(len(frame) - 1):
            conn.protocol.dataReceived(frame[i : i + 1])
        self.assertLessEqual(len(conn.protocol.message_data), 1)
        conn.protocol.dataReceived(frame[-1:])
        [(_, reply, _)] = server_frames(conn.take())
        self.assertEqual(json.loads(reply)["status"], 200)

    def test_off(self) -> None:
        """When maxFragments is 0, a message may have any number of fragments."""
        conn = Connection(ws_config())
        conn.factory.setBounds(maxFragments=0)
        conn.handshake()
        conn.protocol.dataReceived(self.fragments(_HELLO, 3000))
        [(_, reply, _)] = server_frames(conn.take())
        self.assertEqual(json.loads(reply)["status"], 200)


class HandshakeHeadTests(SynchronousTestCase):
    """The opening handshake's request head is bounded."""

    def test_endless_head(self) -> None:
        """When a head passes 16 KiB without its blank line, the answer is 431 and close."""
        conn = Connection(ws_config())
        conn.protocol.dataReceived(_HEAD)
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        sent = len(_HEAD)
        while sent <= 16384:
            self.assertEqual(conn.transport.value(), b"")
            conn.protocol.dataReceived(line)
            sent += len(line)
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(_dropped(conn, "handshake_head"), 1)
        self.assertEqual(conn.protocol.data, b"")

    def test_large_complete_head(self) -> None:
        """When a complete head over 16 KiB arrives in one read, the answer is 431."""
        conn = Connection(ws_config())
        conn.protocol.dataReceived(_HEAD + b"X-Filler: " + b"a" * 17000 + b"\r\n\r\n")
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 431 "))

    def test_head_at_limit(self) -> None:
        """When the head is exactly 16 KiB, the handshake succeeds."""
        filler = 16384 - len(_HEAD) - len(b"X-Filler: \r\n\r\n")
        head = _HEAD + b"X-Filler: " + b"a" * filler + b"\r\n\r\n"
        self.assertEqual(len(head), 16384)
        conn = Connection(ws_config())
        conn.protocol.dataReceived(head)
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 101 "))

    def test_byte_at_a_time(self) -> None:
        """When the head arrives one byte per read (the blank line split too), it is found."""
        conn = Connection(ws_config())
        head = _HEAD + b"\r\n"
        for i in range(len(head)):
            conn.protocol.dataReceived(head[i : i + 1])
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 101 "))
        conn.send(_HELLO)
        self.assertIsNotNone(conn.protocol.session and conn.protocol.session.uaid)

    def test_head_and_frame_in_one_read(self) -> None:
        """When the head and the first frame arrive together, both are handled."""
        conn = Connection(ws_config())
        conn.protocol.dataReceived(_HEAD + b"\r\n" + client_frame(_HELLO))
        head, _, frames = conn.take().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "))
        [(_, reply, _)] = server_frames(frames)
        self.assertEqual(json.loads(reply)["status"], 200)


class SlotsTests(SynchronousTestCase):
    """The bounds keep an idle connection as small as before."""

    def test_two_slots(self) -> None:
        """When the bounds are added, a connection gains two slots and no ``__dict__``."""
        self.assertEqual(BoundedServerProtocol.__slots__, ("_control_tat", "_fragments"))
        conn = Connection(ws_config())
        conn.handshake()
        conn.send(_HELLO)
        conn.send(b"p", opcode=9)
        self.assertEqual(vars(conn.protocol), {})
