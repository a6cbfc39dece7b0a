"""Tests for ``pushtwisted._autobahn_open``: a lean connection start is Autobahn's.

Differential, like tests/test_autobahn_handshake.py: two connections on the
same kind of transport, one started by ``lean_connection_made`` and one with
it off (``leanOpen = False``: Autobahn's ``connectionMade``), go through
``makeConnection``, the opening handshake, a hello and the close; after each
step every slot, the timers, the connection count, the bytes written, the
log lines and the metrics must be the same.  The one documented difference:
until the connection opens, the lean one has no ``_transport_details``.
Real Autobahn protocol objects on ``StringTransport`` (TLS: real TLS in
memory); timers on a ``Clock``.
"""

from __future__ import annotations

import ast
import errno
import gc
import inspect
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import autobahn.twisted.websocket as tx_websocket
import autobahn.websocket.protocol as ws_protocol
import twisted.test
import txaio
from autobahn.twisted.websocket import WebSocketAdapterProtocol, WebSocketServerFactory
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted._autobahn_open import lean_connection_made
from pushtwisted._autobahn_tuning import LeanServerProtocol
from pushtwisted.metrics import NullMetrics
from pushtwisted.testing import make_node
from pushtwisted.websocket import PushServerFactory
from tests.test_autobahn_handshake import (
    _nothing,
    _plain,
    _Setup,
    _Side,
    _Watched,
    _WatchedFactory,
    whose_code,
)
from tests.test_websocket import _PEER, _Transport, client_frame, ws_config

#: A hello naming its UAID (kept: storage does not know it), so both sides answer alike.
HELLO = b'{"messageType":"hello","uaid":"0123456789abcdef0123456789abcdef","channelIDs":[]}'
CLOSE = client_frame(b"\x03\xe8", opcode=8)
#: What the client sends, step by step, after ``makeConnection``.
_STEPS = {"handshake": _plain(), "hello": client_frame(HELLO), "close": CLOSE}
_PACKAGE = Path(pushtwisted.__file__).parent
_WHOSE_OPEN = {
    lean_connection_made.__code__: "lean",
    WebSocketAdapterProtocol.connectionMade.__code__: "autobahn",
}


class _OpenWatched(_Watched):
    """``_Watched`` noting whose ``connectionMade`` started it."""

    __slots__ = ()
    factory: _OpenFactory

    def _connectionMade(self) -> None:
        self.factory.opens.append(whose_code(_WHOSE_OPEN))
        super()._connectionMade()


class _OpenFactory(_WatchedFactory):
    protocol = _OpenWatched

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: "lean" or "autobahn" for each connection started.
        self.opens: list[str] = []


class _TcpTransport(_Transport):
    """A test transport that, like a TCP connection, takes ``setTcpNoDelay``."""

    def __init__(self, peer: IPv4Address | IPv6Address | UNIXAddress) -> None:
        super().__init__(peerAddress=peer)
        self.no_delay: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay.append(enabled)


class _UnixTransport(_TcpTransport):
    """A test transport that, like a UNIX socket, refuses ``setTcpNoDelay``."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        super().setTcpNoDelay(enabled)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


#: The plain transports the lean start takes, by name.
_TRANSPORTS: dict[str, Callable[[], _Transport]] = {
    "IPv4": lambda: _TcpTransport(IPv4Address("TCP", "127.0.0.1", 40000)),
    "IPv6": lambda: _TcpTransport(IPv6Address("TCP", "::1", 40001, 0, 0)),
    "UNIX": lambda: _UnixTransport(UNIXAddress(None)),
    "named UNIX": lambda: _UnixTransport(UNIXAddress(b"/run/push.sock")),
    "no setTcpNoDelay": lambda: _Transport(peerAddress=_PEER),
}


class _OpenSide(_Side):
    """One connection with the lean start on or off."""

    factory: _OpenFactory

    def __init__(self, lean: bool, transport: StringTransport, setup: _Setup = _nothing) -> None:
        def setup_lean(factory: _WatchedFactory) -> None:
            factory.protocol_class.leanOpen = lean
            setup(factory)

        super().__init__(True, ws_config(), setup_lean, _OpenFactory, transport)

    def step(self, name: str) -> dict[str, Any]:
        """Send what the client sends at step ``name``; return the outcome."""
        self.receive([_STEPS[name]], collect=False)
        if name == "close":
            self.lose()
        return self.outcome()

    def lose(self) -> None:
        """The TCP connection is gone (the server dropped it after the close)."""
        with self.logging():
            self.protocol.connectionLost(connectionDone)

    def outcome(self) -> dict[str, Any]:
        result = super().outcome()
        result["no_delay"] = getattr(self.transport, "no_delay", None)
        return result


def _tls_options() -> tuple[CertificateOptions, CertificateOptions]:
    """Return the server's TLS options (Twisted's test certificate) and the client's."""
    pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
    with open(pem, "rb") as file:
        server = PrivateCertificate.loadPEM(file.read()).options()
    return server, CertificateOptions()


class _Received(Protocol):
    """The client's application side of a TLS connection: keeps what the server sent."""

    def __init__(self, into: StringTransport) -> None:
        self.into = into

    def dataReceived(self, data: bytes) -> None:
        self.into.write(data)


class _TlsSide(_OpenSide):
    """One connection over real TLS in memory; ``transport`` keeps the plaintext received."""

    def connect(self, transport: StringTransport) -> None:
        clock = self.node.clock
        server_options, client_options = _tls_options()
        self.server = TLSMemoryBIOFactory(server_options, False, self.factory, clock).buildProtocol(
            _PEER
        )
        client_factory = TLSMemoryBIOFactory(client_options, True, Factory(), clock)
        self.client = TLSMemoryBIOProtocol(client_factory, _Received(transport))
        self.transport = transport
        self.pump = iosim.connect(
            self.server,
            iosim.FakeTransport(self.server, True, peerAddress=_PEER),
            self.client,
            iosim.FakeTransport(self.client, False),
            clock=clock,
        )
        self.protocol = self.server.wrappedProtocol

    def receive(self, chunks: list[bytes], collect: bool) -> None:
        with self.logging():
            for chunk in chunks:
                self.client.write(chunk)
                self.pump.flush()

    def lose(self) -> None:
        """Nothing to do: the pump carried the server's close through TLS to both sides."""

    def outcome(self) -> dict[str, Any]:
        result = super().outcome()
        result["disconnecting"] = self.server.disconnecting
        return result


def _take_details(outcome: dict[str, Any]) -> list[Any]:
    """Take ``_transport_details`` out of the slots and the slots seen by onConnect."""
    taken = [outcome["state"][1].pop("_transport_details")]
    for _, (_, slots) in outcome["requests"][1]:
        taken.append(slots[1].pop("_transport_details"))
    return taken


def _tcp_details(peer: str) -> tuple[str, dict[str, Any], None]:
    """Return Autobahn's transport details of a plain TCP connection from ``peer``, as compared."""
    fields = {
        "channel_type": TransportDetails.CHANNEL_TYPE_TCP,
        "channel_framing": TransportDetails.CHANNEL_FRAMING_WEBSOCKET,
        "peer": peer,
        "is_server": True,
        "is_secure": False,
        "channel_id": [],
    }
    return ("TransportDetails", fields, None)


class _Case(SynchronousTestCase):
    def assertSameSteps(
        self, lean: _OpenSide, autobahn: _OpenSide, expected_open: str
    ) -> list[dict[str, Any]]:
        """Assert both connections come out the same at every step; return the outcomes.

        With ``expected_open`` "lean", the lean side's ``_transport_details``
        is None throughout; Autobahn's is a plain TCP one until open (also
        in the slots ``onConnect`` saw), None after.
        """
        self.assertEqual(lean.factory.opens, [expected_open])
        self.assertEqual(autobahn.factory.opens, ["autobahn"])
        outcomes = []
        for name in ("makeConnection", *_STEPS):
            with self.subTest(step=name):
                pair = [
                    side.outcome() if name == "makeConnection" else side.step(name)
                    for side in (lean, autobahn)
                ]
                if expected_open == "lean":
                    lean_details, autobahn_details = map(_take_details, pair)
                    self.assertEqual(lean_details, [None] * len(lean_details))
                    tcp = _tcp_details(lean.protocol.peer)
                    expected = [tcp] if name == "makeConnection" else [None, tcp]
                    self.assertEqual(autobahn_details, expected)
                self.assertEqual(pair[0], pair[1])
                outcomes.append(pair[0])
        self.assertEqual(lean.factory.paths, ["fast"])
        self.assertEqual(outcomes[-1]["connections"], 0)
        self.assertEqual(outcomes[-1]["state"][1]["state"], WebSocketProtocol.STATE_CLOSED)
        return outcomes


class DifferentialTests(_Case):
    """A connection started lean is one started by Autobahn, step by step."""

    def test_plain_transports(self) -> None:
        """When the transport is IPv4, IPv6 or UNIX, the lean start gives Autobahn's connection."""
        for name, make in _TRANSPORTS.items():
            with self.subTest(transport=name):
                outcomes = self.assertSameSteps(
                    _OpenSide(True, make()), _OpenSide(False, make()), "lean"
                )
                started = outcomes[0]
                self.assertEqual(started["connections"], 1)
                self.assertEqual(started["timers"], [5.0])
                self.assertEqual(
                    started["state"][1]["openHandshakeTimeoutCall"][:3],
                    ("call", 5.0, "onOpenHandshakeTimeout"),
                )
                self.assertIsNone(outcomes[1]["state"][1]["openHandshakeTimeoutCall"])
                self.assertIn(b'"messageType":"hello"', outcomes[2]["written"])
                self.assertTrue(outcomes[3]["disconnecting"])

    def test_peer(self) -> None:
        """When started lean, ``peer`` is Autobahn's peer string."""
        for make, peer in (
            (_TRANSPORTS["IPv4"], "tcp4:127.0.0.1:40000"),
            (_TRANSPORTS["IPv6"], "tcp6:::1:40001"),
            (_TRANSPORTS["UNIX"], "unix"),
            (_TRANSPORTS["named UNIX"], "unix:b'/run/push.sock'"),  # Autobahn's, name as bytes
        ):
            side = _OpenSide(True, make())
            self.assertEqual(side.factory.opens, ["lean"])
            self.assertEqual(side.protocol.peer, peer)
            self.assertIsNone(side.protocol._transport_details)

    def test_tls(self) -> None:
        """When the transport is TLS, Autobahn starts the connection and its details stay."""
        lean, autobahn = _TlsSide(True, _Transport()), _TlsSide(False, _Transport())
        self.assertTrue(ISSLTransport.providedBy(lean.protocol.transport))
        outcomes = self.assertSameSteps(lean, autobahn, "autobahn")
        details = outcomes[2]["state"][1]["_transport_details"]
        self.assertEqual(details[1]["is_secure"], True)
        self.assertEqual(details[1]["channel_id"], ["tls-unique"])
        self.assertTrue(outcomes[1]["written"].startswith(b"HTTP/1.1 101 "))


class DetailsReadTests(SynchronousTestCase):
    """Nothing reads ``_transport_details`` between a lean start and the open."""

    def test_readers(self) -> None:
        """Autobahn's WebSocket modules and pushtwisted use ``_transport_details`` (or its
        ``transport_details`` property) only where a server connection is made, starts and
        opens, where ``LeanServerProtocol._onOpen`` handles None; besides the property
        (for WAMP, which pushtwisted does not use) and the client's handshake."""
        users = set()
        sources = [inspect.getsource(ws_protocol), inspect.getsource(tx_websocket)]
        sources += [path.read_text() for path in _PACKAGE.rglob("*.py")]
        for source in sources:
            tree = ast.parse(source)
            for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
                for func in cls.body:
                    if isinstance(func, ast.FunctionDef) and any(
                        isinstance(n, ast.Attribute)
                        and n.attr in ("_transport_details", "transport_details")
                        for n in ast.walk(func)
                    ):
                        users.add(f"{cls.name}.{func.name}")
        expected = {
            "WebSocketProtocol.__init__",
            "WebSocketAdapterProtocol.connectionMade",
            "WebSocketAdapterProtocol._onOpen",
            "WebSocketProtocol.transport_details",
            "WebSocketClientProtocol.startHandshake",
            "LeanServerProtocol.__init__",
            "LeanServerProtocol._connectionMade",
            "LeanServerProtocol._onOpen",
        }
        self.assertEqual(users, expected)


class FallbackTests(_Case):
    """What needs Autobahn's start gets it, unchanged."""

    def assertAutobahn(self, setup: _Setup) -> _OpenSide:
        """Assert a connection with ``setup`` is started by Autobahn, as with ``leanOpen`` off."""
        make = _TRANSPORTS["IPv4"]
        lean = _OpenSide(True, make(), setup)
        self.assertIsInstance(lean.protocol._transport_details, TransportDetails)
        self.assertSameSteps(lean, _OpenSide(False, make(), setup), "autobahn")
        return lean

    def test_switched_off(self) -> None:
        """When ``leanOpen`` is False, Autobahn starts every connection."""
        side = _OpenSide(False, _TRANSPORTS["IPv4"]())
        self.assertEqual(side.factory.opens, ["autobahn"])
        self.assertIsInstance(side.protocol._transport_details, TransportDetails)

    def test_on_by_default(self) -> None:
        """The lean start is on for the server's protocol."""
        self.assertIs(LeanServerProtocol.leanOpen, True)
        factory = PushServerFactory(make_node(config=ws_config()))
        self.assertIs(factory.protocol_class.leanOpen, True)

    def test_track_timings(self) -> None:
        """When timings are tracked, Autobahn starts the connection."""
        self.assertAutobahn(lambda f: setattr(f, "trackTimings", True))

    def test_utf8_validate_incoming(self) -> None:
        """When incoming UTF-8 is validated per frame, Autobahn starts the connection."""
        side = self.assertAutobahn(lambda f: setattr(f, "utf8validateIncoming", True))
        self.assertEqual(side.factory.opens, ["autobahn"])

    def test_debug_logging(self) -> None:
        """When Autobahn's debug logging is on, Autobahn starts the connection and logs it."""
        logger = _Watched.log  # Autobahn's, shared by every protocol class
        logger.set_log_level("debug")
        self.addCleanup(logger.set_log_level, txaio.get_global_log_level(), False)
        side = _OpenSide(True, _TRANSPORTS["IPv4"]())
        self.assertEqual(side.factory.opens, ["autobahn"])
        texts = [formatEvent(e) for e in side.events]
        self.assertTrue([t for t in texts if "connection established" in t], texts)

    def test_options_per_connection(self) -> None:
        """When the factory is Autobahn's own (options copied into each connection),
        Autobahn starts the connection."""
        factory: Any = WebSocketServerFactory(reactor=Clock())
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.protocol = _OpenWatched
        factory.opens = []
        protocol = factory.buildProtocol(_PEER)
        protocol.makeConnection(_TRANSPORTS["IPv4"]())
        self.assertEqual(factory.opens, ["autobahn"])
        self.assertIsInstance(protocol._transport_details, TransportDetails)
        self.assertEqual(vars(protocol)["openHandshakeTimeout"], 0)
        self.assertEqual(factory.countConnections, 1)


class NoCycleTests(SynchronousTestCase):
    """A connection started either way is freed by reference counting alone."""

    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def closed(self, transport: StringTransport, lean: bool) -> weakref.ref[Any]:
        """Open a connection, say hello, close it; return a weak reference to its protocol."""
        clock = Clock()
        factory = PushServerFactory(
            make_node(config=ws_config(), clock=clock, metrics=NullMetrics())
        )
        factory.protocol_class.leanOpen = lean
        factory.openHandshakeTimeout = 10
        factory.closeHandshakeTimeout = 1
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        for data in _STEPS.values():
            protocol.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(connectionDone)
        ref = weakref.ref(protocol)
        del protocol
        clock.advance(400)  # every timer of the connection has fired or gone
        return ref

    def test_freed(self) -> None:
        """When a connection started lean or by Autobahn has closed, nothing of it is left."""
        for name, make in _TRANSPORTS.items():
            for lean in (True, False):
                with self.subTest(transport=name, lean=lean):
                    self.assertIsNone(self.closed(make(), lean)())
