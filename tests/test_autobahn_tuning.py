"""Tests for ``pushtwisted._autobahn_tuning``: the tunings are in place and Autobahn still works.

Real Autobahn protocol objects on ``StringTransport``; timers on a ``Clock``.
"""

from __future__ import annotations

import gc
import json
import os
import types

import autobahn.twisted.websocket as tx_websocket
import autobahn.util
import autobahn.websocket.protocol as ws_protocol
import txaio
from autobahn.nvx._xormasker import create_xor_masker as native_xor_masker
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pushtwisted import _autobahn_frames as frames
from pushtwisted import _autobahn_patches as patches
from pushtwisted import _autobahn_tuning as tuning
from pushtwisted.metrics import NullMetrics
from pushtwisted.testing import make_node
from pushtwisted.websocket import PushServerFactory, PushServerProtocol
from tests.test_websocket import Connection, client_frame, close_code, server_frames, ws_config

HELLO = b'{"messageType":"hello","channelIDs":[]}'


class _Events:
    """Collects log events from the global publisher while in a ``with`` block."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __enter__(self) -> _Events:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class VersionTests(SynchronousTestCase):
    """The Autobahn release check."""

    def test_installed_is_tested(self) -> None:
        """When the suite runs, the installed Autobahn is the one the tunings were tested with.

        On an upgrade this fails first: re-check the tunings and bump TESTED_AUTOBAHN.
        """
        self.assertEqual(patches.installed_autobahn(), patches.TESTED_AUTOBAHN)

    def test_other_version_logged(self) -> None:
        """When another Autobahn is installed, a warning names both versions."""
        with _Events() as log:
            self.assertFalse(patches.check_version("99.1.1"))
        [text] = log.texts()
        self.assertIn("99.1.1", text)
        self.assertIn(patches.TESTED_AUTOBAHN, text)
        self.assertEqual(log.events[0]["log_level"], LogLevel.warn)

    def test_tested_version_silent(self) -> None:
        """When the tested Autobahn is installed, nothing is logged."""
        with _Events() as log:
            self.assertTrue(patches.check_version(patches.TESTED_AUTOBAHN))
        self.assertEqual(log.events, [])


class LazyFormattingTests(SynchronousTestCase):
    """Autobahn's debug-only formatting is deferred until a log event is rendered."""

    def setUp(self) -> None:
        patches.apply()

    def test_applied(self) -> None:
        """When applied, Autobahn's modules hold lazy stand-ins for pformat, hltype and hlval."""
        for module, name, original in (
            (ws_protocol, "pformat", __import__("pprint").pformat),
            (ws_protocol, "hltype", autobahn.util.hltype),
            (ws_protocol, "hlval", autobahn.util.hlval),
            (tx_websocket, "hltype", autobahn.util.hltype),
            (tx_websocket, "hlval", autobahn.util.hlval),
        ):
            current = getattr(module, name)
            self.assertIsNot(current, original, name)
            self.assertIs(current.__wrapped__, original, name)

    def test_applied_quietly(self) -> None:
        """When applied, the list of what was replaced is logged at debug, not at info."""
        for module, name, original, _ in patches._TARGETS:
            setattr(module, name, original)
        self.addCleanup(patches.apply)
        with _Events() as log:
            self.assertTrue(patches.apply())
        self.assertEqual([t for t in log.texts() if "tuning applied" in t], [])
        events: list[LogEvent] = []
        for module, name, original, _ in patches._TARGETS:
            setattr(module, name, original)
        self.patch(patches, "_log", Logger(observer=events.append))
        patches.apply()
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug])

    def test_idempotent(self) -> None:
        """When applied again, nothing more is replaced."""
        self.assertEqual(patches.apply(), [])

    def test_lazy(self) -> None:
        """When a stand-in is called, the wrapped function is not; str() calls it."""
        calls: list[object] = []

        class Probe:
            def __str__(self) -> str:
                calls.append(self)
                return "probe"

            __repr__ = __str__

        value = ws_protocol.hlval(Probe())
        pretty = ws_protocol.pformat([("a", Probe())])
        self.assertEqual(calls, [])
        self.assertEqual(str(value), autobahn.util.hlval("probe"))
        self.assertEqual(f"{value}", str(value))
        self.assertEqual(repr(value), str(value))
        self.assertEqual(str(pretty), "[('a', probe)]")
        self.assertEqual(str(tx_websocket.hltype(self.setUp)), autobahn.util.hltype(self.setUp))

    def test_unexpected_target_skipped(self) -> None:
        """When a target name is not the expected function, it is left alone with a warning."""

        def original() -> None:
            """The expected function."""

        def other() -> None:
            """What the module really holds."""

        module = types.SimpleNamespace(__name__="fake", f=other)
        with _Events() as log:
            replaced = patches._replace(((module, "f", original, lambda: None),))
        self.assertEqual(replaced, [])
        self.assertIs(module.f, other)
        self.assertIn("fake.f", log.texts()[0])

    def test_debug_log_readable(self) -> None:
        """When Autobahn's debug logging is on, its messages still read as plain text."""
        logger = WebSocketServerProtocol.log
        logger.set_log_level("debug")
        self.addCleanup(logger.set_log_level, txaio.get_global_log_level(), False)
        conn = Connection()
        with _Events() as log:
            conn.handshake()
            conn.send(HELLO)
        texts = log.texts()
        received = [t for t in texts if "received" in t and "bytes for peer" in t]
        self.assertTrue(received, texts)
        self.assertIn("LeanServerProtocol.dataReceived>", received[0])
        self.assertIn('peer="tcp4:127.0.0.1:40000"', received[0])
        self.assertFalse([t for t in texts if "LazyFormat" in t or "Unable to format" in t], texts)


class MaskerTests(SynchronousTestCase):
    """Small incoming frames are unmasked in Python, identically."""

    def test_same_as_native(self) -> None:
        """When data of any size is unmasked in any chunking, the result is the native masker's."""
        for size in (0, 1, 3, 4, 5, 60, 125, 126, 1000, 1023):
            data = os.urandom(size)
            mask = os.urandom(4)
            expected = native_xor_masker(mask, max(size, 1)).process(data) if size else b""
            for cut in {0, 1, 2, 3, size // 2, size}:
                masker = frames.create_xor_masker(mask, size)
                got = masker.process(data[:cut]) + masker.process(data[cut:])
                self.assertEqual(got, expected, (size, cut))
                self.assertEqual(masker.pointer(), size)
                masker.reset()
                self.assertEqual(masker.pointer(), 0)

    def test_large_frames_native(self) -> None:
        """When a frame is 1 KiB or more, Autobahn's own masker is used."""
        self.assertIsInstance(frames.create_xor_masker(b"abcd", 10), frames.SmallXorMasker)
        self.assertNotIsInstance(frames.create_xor_masker(b"abcd", 4096), frames.SmallXorMasker)


class FactoryOptionTests(SynchronousTestCase):
    """Protocol options live on a per-factory class, not on each connection."""

    def test_options_on_class(self) -> None:
        """When a connection opens, it carries no option of its own."""
        conn = Connection(ws_config(max_message_size=999))
        conn.handshake()
        cls = conn.factory.protocol_class
        self.assertIs(type(conn.protocol), cls)
        self.assertEqual(cls.maxMessagePayloadSize, 999)
        self.assertEqual(conn.protocol.maxMessagePayloadSize, 999)
        self.assertEqual(cls.CONFIG_ATTRS, ())
        self.assertEqual(vars(conn.protocol), {})

    def test_factories_independent(self) -> None:
        """When two factories have different options, each one's connections see their own."""
        small = PushServerFactory(make_node(config=ws_config(max_message_size=10)))
        large = PushServerFactory(make_node(config=ws_config(max_message_size=5000)))
        self.assertEqual(small.buildProtocol(None).maxMessagePayloadSize, 10)
        self.assertEqual(large.buildProtocol(None).maxMessagePayloadSize, 5000)
        self.assertEqual(PushServerProtocol.__dict__.get("maxMessagePayloadSize"), None)

    def test_set_directly(self) -> None:
        """When an option is assigned on the factory, connections read the new value."""
        factory = PushServerFactory(make_node(config=ws_config()))
        protocol = factory.buildProtocol(None)
        factory.openHandshakeTimeout = 7
        factory.setProtocolOptions(autoPingSize=20)
        self.assertEqual(protocol.openHandshakeTimeout, 7)
        self.assertEqual(protocol.autoPingSize, 20)
        self.assertEqual(factory.openHandshakeTimeout, 7)

    def test_function_option(self) -> None:
        """When an option is a function, connections call it as a plain function."""
        factory = PushServerFactory(make_node(config=ws_config()))
        seen: list[object] = []
        factory.setProtocolOptions(perMessageCompressionAccept=lambda offers: seen.append(offers))
        factory.buildProtocol(None).perMessageCompressionAccept(["offer"])
        self.assertEqual(seen, [["offer"]])


@implementer(ITCPTransport)
class _LeanTransport:
    """A transport with no buffers, so object counts show the protocol's own."""

    __slots__ = ("peer", "out", "disconnecting")

    def __init__(self, peer: IPv4Address) -> None:
        self.peer = peer
        self.out = b""
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.out = data

    def writeSequence(self, seq: list[bytes]) -> None:
        self.out = b"".join(seq)

    def loseConnection(self) -> None:
        self.disconnecting = True

    abortConnection = loseConnection

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.peer

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class IdleConnectionTests(SynchronousTestCase):
    """What an open, idle connection keeps."""

    def test_lifecycle_leaves_no_instance_dict(self) -> None:
        """When a connection has handshaked, messaged, pinged and closed, __dict__ is empty.

        Every attribute Autobahn sets has a slot; an Autobahn upgrade adding
        state shows up here.
        """
        conn = Connection(ws_config(max_message_size=100))
        conn.handshake()
        conn.send(HELLO)
        conn.send(b'{"messageType":"ack","x":"' + b"y" * 60 + b'"}')  # fragmented reply
        conn.send(b"\x01\x02", opcode=9)  # client ping
        conn.protocol.sendPing(b"1234")
        conn.send(b"\x03\xe8", opcode=8)  # client close 1000
        conn.protocol.connectionLost()
        self.assertEqual(vars(conn.protocol), {})

    def test_handshake_released(self) -> None:
        """When the handshake is over, its request, headers and helpers are released."""
        conn = Connection()
        conn.handshake({"Sec-WebSocket-Protocol": "push-notification"})
        conn.send(HELLO)
        p = conn.protocol
        self.assertIsNone(p.http_request_data)
        self.assertIsNone(p.http_response_data)
        self.assertEqual(dict(p.http_headers), {})
        self.assertEqual(p.websocket_protocols, ())
        self.assertIsNone(p._transport_details)
        self.assertIsNone(getattr(p, "current_frame_masker", None))
        self.assertIsNone(p.send_queue)
        self.assertIsNone(p.utf8validator)
        self.assertIs(p.trafficStats, tuning._SHARED_TRAFFIC_STATS)
        self.assertEqual(p.websocket_protocol_in_use, "push-notification")
        self.assertEqual(p.http_request_path, "/")
        self.assertEqual(p.peer, "tcp4:127.0.0.1:40000")

    def test_slots_shadow_no_class_default(self) -> None:
        """When a slot name also has a class default in Autobahn or Twisted, __init__ sets it."""
        initialised = {"factory", "transport", "connected", "peer"}
        for name in tuning._SLOTS:
            for base in WebSocketServerProtocol.__mro__:
                if name in vars(base):
                    self.assertIn(name, initialised, (name, base))

    def test_is_open_is_closed_unwatched(self) -> None:
        """When Autobahn fires is_open/is_closed nothing happens; waiting on them fails loudly."""
        conn = Connection()
        conn.handshake()
        conn.protocol.connectionLost()
        with self.assertRaises(AttributeError):
            conn.protocol.is_open.addCallback(print)

    def test_gc_objects_per_connection(self) -> None:
        """When 300 connections are open and idle, each keeps at most 6 objects for the collector.

        Today 5: the protocol, its Session, its auto-ping call, the test
        transport and its address.  Autobahn as shipped kept ~30.
        """
        config = ws_config(auto_ping_interval=300.0, auto_ping_timeout=30.0)
        # NullMetrics: a recording double would keep objects per event.
        node = make_node(config=config, metrics=NullMetrics())
        factory = PushServerFactory(node)
        factory.setProtocolOptions(openHandshakeTimeout=10)
        head = (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        keep = []

        def connect(i: int) -> None:
            peer = IPv4Address("TCP", "127.0.0.1", 1000 + i)
            transport = _LeanTransport(peer)
            protocol = factory.buildProtocol(peer)
            protocol.makeConnection(transport)
            protocol.dataReceived(head)
            protocol.dataReceived(client_frame(HELLO))
            assert b'"status":200' in transport.out
            keep.append(protocol)

        for i in range(20):  # warm caches, interned strings, bucket timers
            connect(i)
        gc.collect()
        before = len(gc.get_objects())
        for i in range(20, 320):
            connect(i)
        gc.collect()
        per_connection = (len(gc.get_objects()) - before) / 300
        self.assertLessEqual(per_connection, 6.0)


class AutobahnBehaviourTests(SynchronousTestCase):
    """Autobahn's behaviour through the tuned classes: timeouts, pings, close codes, framing."""

    def test_open_handshake_timeout(self) -> None:
        """When no handshake arrives within openHandshakeTimeout, the connection is dropped."""
        conn = Connection()
        conn.factory.setProtocolOptions(openHandshakeTimeout=5)
        conn = _reconnect(conn)
        conn.node.clock.advance(6)
        self.assertTrue(conn.transport.disconnecting)

    def test_auto_ping(self) -> None:
        """When auto-ping is on, an idle client is pinged; a missing pong closes the socket."""
        conn = Connection(ws_config(auto_ping_interval=10.0, auto_ping_timeout=5.0))
        conn.handshake()
        conn.send(HELLO)
        conn.node.clock.advance(11)
        [(opcode, payload, _)] = server_frames(conn.take())
        self.assertEqual(opcode, 9)
        conn.send(payload, opcode=10)  # pong
        conn.node.clock.advance(6)
        self.assertFalse(conn.transport.disconnecting)
        conn.node.clock.advance(10)
        [(opcode, _, _)] = server_frames(conn.take())
        self.assertEqual(opcode, 9)
        conn.node.clock.advance(6)  # no pong this time
        self.assertTrue(conn.transport.disconnecting)

    def test_client_close(self) -> None:
        """When the client sends close 1000, the server answers 1000 and drops TCP."""
        conn = Connection()
        conn.handshake()
        [frame] = conn.send(b"\x03\xe8bye", opcode=8)
        self.assertEqual(close_code(frame), 1000)
        self.assertTrue(conn.transport.disconnecting)

    def test_close_answered_in_time(self) -> None:
        """When the server closes and the client answers 0.3 s later, the 1 s close
        timeout has not cut it: the close is clean, whatever the fraction of the second."""
        for start in (0.0, 0.5, 0.9, 0.99):
            conn = Connection()
            conn.factory.closeHandshakeTimeout = 1
            conn.node.clock.advance(start)
            conn.handshake()
            conn.protocol.close(1000, "bye")
            [frame] = server_frames(conn.take())
            self.assertEqual(close_code(frame), 1000)
            conn.node.clock.advance(0.3)
            self.assertFalse(conn.protocol.wasCloseHandshakeTimeout, start)
            conn.send(b"\x03\xe8", opcode=8)
            self.assertTrue(conn.protocol.wasClean, start)
            self.assertFalse(conn.protocol.wasCloseHandshakeTimeout, start)

    def test_client_ping(self) -> None:
        """When the client pings, the server pongs the same payload."""
        conn = Connection()
        conn.handshake()
        self.assertEqual(conn.send(b"hey", opcode=9), [(10, b"hey", True)])

    def test_framing_matches_autobahn(self) -> None:
        """When messages of any length are sent, the bytes are Autobahn's own framing."""
        for size in (0, 1, 125, 126, 65535, 65536, 70000):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            for binary in (False, True):
                conn = Connection(ws_config(max_message_size=100000))
                conn.handshake()
                conn.protocol.sendMessage(payload, binary)
                fast = conn.take()
                WebSocketServerProtocol.sendMessage(conn.protocol, payload, binary)
                self.assertEqual(fast, conn.take(), (size, binary))

    def test_message_listener_fired(self) -> None:
        """When someone listens to the message event, Autobahn's firing still happens."""
        conn = Connection()
        conn.handshake()
        heard: list[bytes] = []
        conn.protocol.on("message", lambda payload, is_binary: heard.append(payload))
        with self.assertRaises(RuntimeError):
            conn.protocol.on("nonsense", print)
        [(_, reply, _)] = conn.send(HELLO)
        self.assertEqual(heard, [HELLO])
        self.assertEqual(json.loads(reply)["status"], 200)

    def test_status_page(self) -> None:
        """When a plain GET arrives, the status page is still served (sendData path)."""
        head = Connection().request("/status")
        self.assertTrue(head.startswith("HTTP/1.1 200 OK"), head)


def _reconnect(conn: Connection) -> Connection:
    """Return a new connection on ``conn``'s factory (after options changed)."""
    fresh = Connection.__new__(Connection)
    fresh.node = conn.node
    fresh.factory = conn.factory
    fresh.protocol = conn.factory.buildProtocol(conn.transport.getPeer())
    fresh.transport = type(conn.transport)(peerAddress=conn.transport.getPeer())
    fresh.protocol.makeConnection(fresh.transport)
    return fresh
