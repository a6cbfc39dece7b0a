"""Tests for ``pushtwisted.collector`` and what it relies on: a connection leaves no cycle.

``FreezeSurvivors`` moves long-lived objects out of the collector's reach,
so a connection that ends must be freed by reference counting alone.  The
lifecycle tests run real ``PushServerProtocol`` connections with the
collector disabled and check that nothing of them is left once they end,
however they end.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.collector import FreezeSurvivors
from pushtwisted.config import ClientConfig, Config
from pushtwisted.metrics import NullMetrics
from pushtwisted.session import Session
from pushtwisted.storage.interface import NewMessage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import HoldingStorage, make_node
from pushtwisted.websocket import PushServerFactory, PushServerProtocol
from tests.test_websocket import client_frame, ws_config

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_HEAD = (
    "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
CHID = "0123456789abcdef0123456789abcdef"
HELLO = b'{"messageType":"hello","channelIDs":[]}'
WEBPUSH_HELLO = b'{"messageType":"hello","use_webpush":true}'
REGISTER = b'{"messageType":"register","channelID":"' + CHID.encode() + b'"}'


class FreezeSurvivorsTests(SynchronousTestCase):
    """Collect, then freeze, at start and every interval."""

    def test_runs(self) -> None:
        """When started it runs at once, then every interval, collecting before freezing."""
        clock = Clock()
        calls: list[str] = []
        survivors = FreezeSurvivors(
            clock,
            1.0,
            collect=lambda: calls.append("collect") or 0,
            freeze=lambda: calls.append("freeze"),
        )
        survivors.start()
        self.assertEqual(calls, ["collect", "freeze"])
        clock.advance(0.5)
        self.assertEqual(len(calls), 2)
        clock.advance(0.5)
        clock.advance(1.0)
        self.assertEqual(calls, ["collect", "freeze"] * 3)
        self.assertGreaterEqual(survivors.longest, 0.0)
        survivors.stop()
        clock.advance(5)
        self.assertEqual(len(calls), 6)
        survivors.stop()

    def test_young_threshold(self) -> None:
        """``young`` sets the young generation's threshold from start to stop, keeping
        the older generations' thresholds, and puts the old ones back at stop."""
        before = gc.get_threshold()
        set_to: list[tuple[int, ...]] = []
        survivors = FreezeSurvivors(
            Clock(),
            collect=lambda: 0,
            freeze=lambda: None,
            young=12_345,
            set_threshold=lambda *t: set_to.append(t),
        )
        survivors.start()
        self.assertEqual(set_to, [(12_345, *before[1:])])
        survivors.stop()
        survivors.stop()
        self.assertEqual(set_to, [(12_345, *before[1:]), before])

    def test_thresholds_left_alone_by_default(self) -> None:
        """Without ``young`` the thresholds are not touched."""
        set_to: list[tuple[int, ...]] = []
        survivors = FreezeSurvivors(
            Clock(), collect=lambda: 0, freeze=lambda: None, set_threshold=set_to.append
        )
        survivors.start()
        survivors.stop()
        self.assertEqual(set_to, [])

    def test_full_run(self) -> None:
        """Every ``full_interval`` a run also unfreezes and collects everything once, and
        counts what that second collection found."""
        clock = Clock()
        calls: list[str] = []
        found = iter([3, 0, 0, 2, 0, 0, 5])

        def collect() -> int:
            calls.append("collect")
            return next(found)

        survivors = FreezeSurvivors(
            clock,
            1.0,
            full_interval=2.0,
            collect=collect,
            freeze=lambda: calls.append("freeze"),
            unfreeze=lambda: calls.append("unfreeze"),
        )
        survivors.start()
        clock.advance(1.0)
        self.assertEqual(calls, ["collect", "freeze"] * 2)
        del calls[:]
        clock.advance(1.0)
        self.assertEqual(calls, ["collect", "unfreeze", "collect", "freeze"])
        self.assertEqual(survivors.frozen_garbage, 2)
        del calls[:]
        clock.advance(1.0)
        self.assertEqual(calls, ["collect", "freeze"])
        clock.advance(1.0)
        self.assertEqual(survivors.frozen_garbage, 2 + 5)
        survivors.stop()

    def test_full_runs_off(self) -> None:
        """With ``full_interval`` 0 nothing is ever unfrozen."""
        clock = Clock()
        calls: list[str] = []
        survivors = FreezeSurvivors(
            clock,
            1.0,
            full_interval=0,
            collect=lambda: calls.append("collect") or 0,
            freeze=lambda: None,
            unfreeze=lambda: calls.append("unfreeze"),
        )
        survivors.start()
        clock.advance(10_000)
        self.assertNotIn("unfreeze", calls)
        survivors.stop()


class _TcpLikeTransport(StringTransport):
    """A ``StringTransport`` that, like Twisted's TCP transport, drops its protocol when lost."""

    def __init__(self) -> None:
        super().__init__(peerAddress=_PEER)
        self.protocol: Any = None

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def lose(self) -> None:
        """The TCP connection is gone: tell the protocol, then let go of it."""
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost()


def _config(**websocket: Any) -> Config:
    client = ClientConfig(min_ping_interval=0, max_messages_per_second=0, hello_timeout=30)
    return dataclasses.replace(ws_config(**websocket), client=client)


class NoCycleTests(SynchronousTestCase):
    """However a connection ends, reference counting alone frees it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryStorage(self.clock)
        self.storage: Any = self.memory
        self.config = _config(auto_ping_interval=300.0, auto_ping_timeout=30.0)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def factory(self) -> PushServerFactory:
        node = make_node(
            config=self.config, storage=self.storage, clock=self.clock, metrics=NullMetrics()
        )
        factory = PushServerFactory(node)
        factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=1)
        return factory

    def open(
        self, factory: PushServerFactory, hello: bool = True, first: bytes = HELLO
    ) -> _TcpLikeTransport:
        transport = _TcpLikeTransport()
        protocol: PushServerProtocol = factory.buildProtocol(_PEER)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(_HEAD)
        if hello:
            protocol.dataReceived(client_frame(first) + client_frame(REGISTER))
        return transport

    def assertFreed(self, factory: PushServerFactory, end: Any, first: bytes = HELLO) -> None:
        """Open a connection, end it with ``end(transport)``; nothing of it may stay."""
        sessions = _count(Session)
        transport = self.open(factory, first=first)
        protocol = weakref.ref(transport.protocol)
        end(transport)
        transport.lose()
        self.clock.advance(400)  # every timeout of the connection has fired or gone
        del transport
        self.assertIsNone(protocol())
        self.assertEqual(_count(Session), sessions)
        self.assertEqual(len(factory.node.registry), 0)

    def test_lost_with_unacked_update(self) -> None:
        """When the TCP connection drops with an update unacked (retry timer set), all is freed."""
        factory = self.factory()

        def end(transport: _TcpLikeTransport) -> None:
            session = transport.protocol.session
            self.assertTrue(factory.node.router.deliver_here(session.uaid, CHID, 3, None))

        self.assertFreed(factory, end)

    def test_webpush_lost_with_unacked_message(self) -> None:
        """When a WebPush connection drops with a message unacked (timer set), all is freed."""
        factory = self.factory()

        def end(transport: _TcpLikeTransport) -> None:
            session = transport.protocol.session
            new = NewMessage(chid=CHID, ttl=60, data="ZGF0YQ", headers={"encoding": "aes128gcm"})
            stored = self.successResultOf(self.memory.store_message(session.uaid, new, 0))
            assert stored.message is not None
            self.assertTrue(session.deliver_message(stored.message))
            self.assertTrue(self.clock.getDelayedCalls())

        self.assertFreed(factory, end, first=WEBPUSH_HELLO)

    def test_acked_update(self) -> None:
        """When the update was acked (the retry timer still set, idle), all is freed."""
        factory = self.factory()

        def end(transport: _TcpLikeTransport) -> None:
            session = transport.protocol.session
            factory.node.router.deliver_here(session.uaid, CHID, 3, None)
            ack = b'{"messageType":"ack","updates":[{"channelID":"%s","version":3}]}' % (
                CHID.encode()
            )
            transport.protocol.dataReceived(client_frame(ack))

        self.assertFreed(factory, end)

    def test_client_closes(self) -> None:
        """When the client starts the closing handshake, all is freed."""
        self.assertFreed(
            self.factory(), lambda t: t.protocol.dataReceived(client_frame(b"\x03\xe8", opcode=8))
        )

    def test_server_closes(self) -> None:
        """When the server closes and the client never answers, all is freed."""
        self.assertFreed(self.factory(), lambda t: t.protocol.session.shutdown())

    def test_replaced(self) -> None:
        """When a newer connection takes the UAID, the older one is freed."""
        factory = self.factory()
        newer: list[_TcpLikeTransport] = []

        def end(transport: _TcpLikeTransport) -> None:
            uaid = transport.protocol.session.uaid
            other = self.open(factory, hello=False)
            hello = b'{"messageType":"hello","uaid":"%s","channelIDs":[]}' % uaid.encode()
            other.protocol.dataReceived(client_frame(hello))
            newer.append(other)

        self.assertFreed(factory, lambda t: None)  # warm-up: same path without the newer one
        sessions = _count(Session)
        transport = self.open(factory)
        protocol = weakref.ref(transport.protocol)
        end(transport)
        transport.lose()
        self.clock.advance(400)
        del transport
        self.assertIsNone(protocol())
        newer.pop().lose()
        self.clock.advance(400)
        self.assertEqual(_count(Session), sessions)

    def test_hello_timeout(self) -> None:
        """When the client never says hello, the timed-out connection is freed."""
        factory = self.factory()
        sessions = _count(Session)
        transport = self.open(factory, hello=False)
        protocol = weakref.ref(transport.protocol)
        self.clock.advance(31)
        transport.lose()
        self.clock.advance(400)
        del transport
        self.assertIsNone(protocol())
        self.assertEqual(_count(Session), sessions)

    def test_lost_during_storage(self) -> None:
        """When the connection drops while its storage call waits, all is freed once it answers."""
        holding = HoldingStorage(self.memory, ["register"])
        self.storage = holding
        factory = self.factory()
        sessions = _count(Session)
        transport = self.open(factory)
        protocol = weakref.ref(transport.protocol)
        transport.lose()
        holding.next().release()
        self.clock.advance(400)
        del transport
        self.assertIsNone(protocol())
        self.assertEqual(_count(Session), sessions)

    def test_plain_http(self) -> None:
        """When a plain GET is handed to the web site, the protocol and the channel are freed."""
        factory = self.factory()
        transport = _TcpLikeTransport()
        protocol = factory.buildProtocol(_PEER)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        ref = weakref.ref(protocol)
        del protocol
        transport.lose()
        self.clock.advance(400)
        self.assertIsNone(ref())

    def test_closed_for_a_bound(self) -> None:
        """When a connection is closed for passing a bound (too many fragments), it is freed."""
        factory = self.factory()
        factory.setBounds(maxFragments=3)

        def end(transport: _TcpLikeTransport) -> None:
            for _ in range(4):
                transport.protocol.dataReceived(client_frame(b"x", fin=False))

        self.assertFreed(factory, end)


def _count(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)
