"""Tests for the operational limits of the listeners.

``[websocket]``/``[endpoint] max_connections`` (``pushtwisted.connlimit``),
the WebSocket listener's plain-HTTP ``/health`` (served by the web site it
hands the connection to) and ``[websocket] handshake_timeout``; all on fakes
(StringTransport, Clock), no reactor.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import Config, EndpointConfig, WebSocketConfig
from pushtwisted.connlimit import ConnectionLimit
from pushtwisted.errors import StorageUnavailable
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import HoldingStorage, RecordingMetrics, make_node
from pushtwisted.web.endpoint import build_endpoint_site
from pushtwisted.web.status import HEALTH_TIMEOUT
from pushtwisted.websocket import PushServerFactory
from tests.test_websocket import Connection, _Transport, ws_config

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
_DONE = Failure(ConnectionDone())


def _refused(metrics: RecordingMetrics, listener: str) -> int:
    return int(metrics.count("connections_refused", listener=listener))


class ConnectionLimitTests(SynchronousTestCase):
    """``ConnectionLimit`` on its own."""

    def test_unlimited(self) -> None:
        """When the limit is 0, every connection is accepted."""
        limit = ConnectionLimit("x", 0, Clock(), RecordingMetrics())
        self.assertTrue(all(limit.acquire() for _ in range(1000)))
        self.assertEqual(limit.open, 1000)

    def test_refuses_past_limit_and_frees_on_release(self) -> None:
        """When ``limit`` are open, the next is refused and counted until one is released."""
        metrics = RecordingMetrics()
        limit = ConnectionLimit("websocket", 2, Clock(), metrics)
        self.assertTrue(limit.acquire())
        self.assertTrue(limit.acquire())
        self.assertFalse(limit.acquire())
        self.assertEqual(_refused(metrics, "websocket"), 1)
        limit.release()
        self.assertTrue(limit.acquire())
        self.assertEqual(limit.open, 2)

    def test_release_never_negative(self) -> None:
        """When more releases than acquires happen, the count stays at 0."""
        limit = ConnectionLimit("x", 1, Clock(), RecordingMetrics())
        limit.release()
        self.assertEqual(limit.open, 0)

    def test_logged_at_most_once_per_second(self) -> None:
        """When refusals come in a burst, one line per second says how many."""
        clock = Clock()
        limit = ConnectionLimit("endpoint", 1, clock, RecordingMetrics())
        events: list[dict[str, Any]] = []
        limit.log = Logger(observer=events.append)  # type: ignore[misc]
        limit.acquire()
        for _ in range(5):
            limit.acquire()
        self.assertEqual([e["count"] for e in events], [1])
        clock.advance(1.0)
        limit.acquire()
        self.assertEqual([e["count"] for e in events], [1, 5])

    def test_open_sockets_gauge(self) -> None:
        """The gauge ``open_sockets{listener}`` follows every accepted and lost connection."""
        metrics = RecordingMetrics()
        limit = ConnectionLimit("endpoint", 2, Clock(), metrics)
        limit.acquire()
        limit.acquire()
        limit.acquire()  # refused
        limit.release()
        limit.release()
        limit.release()  # nothing open
        self.assertEqual(metrics.gauges("open_sockets"), [1, 2, 1, 0])
        self.assertEqual(
            {tuple(labels.items()) for kind, _, _, labels in metrics.events if kind == "gauge"},
            {(("listener", "endpoint"),)},
        )

    def test_prometheus_counter(self) -> None:
        """When a connection is refused, ``connections_refused_total{listener}`` counts it."""
        metrics = PrometheusMetrics(process_collectors=False)
        limit = ConnectionLimit("endpoint", 1, Clock(), metrics)
        limit.acquire()
        limit.acquire()
        text = metrics.render()[0].decode("utf-8")
        self.assertIn('pushtwisted_connections_refused_total{listener="endpoint"} 1.0', text)


class WebSocketLimitTests(SynchronousTestCase):
    """``[websocket] max_connections`` in ``PushServerFactory.buildProtocol``."""

    def test_full_listener_refuses(self) -> None:
        """When ``max_connections`` are open, buildProtocol returns None (Twisted closes it)."""
        conn = Connection(ws_config(max_connections=1))
        self.assertIsNone(conn.factory.buildProtocol(_PEER))
        metrics = conn.node.metrics
        assert isinstance(metrics, RecordingMetrics)
        self.assertEqual(_refused(metrics, "websocket"), 1)

    def test_lost_connection_frees_place(self) -> None:
        """When an open connection is lost, a new one is accepted again."""
        conn = Connection(ws_config(max_connections=1))
        conn.handshake()
        conn.protocol.connectionLost(_DONE)
        self.assertEqual(conn.factory.limit.open, 0)
        self.assertIsNotNone(conn.factory.buildProtocol(_PEER))

    def test_unlimited_by_default(self) -> None:
        """When ``max_connections`` is 0, connections are only counted."""
        conn = Connection()
        for _ in range(10):
            self.assertIsNotNone(conn.factory.buildProtocol(_PEER))
        self.assertEqual(conn.factory.limit.open, 11)

    def test_no_instance_dict(self) -> None:
        """When a connection is counted and released, it keeps no ``__dict__`` (slots only)."""
        conn = Connection(ws_config(max_connections=5))
        conn.handshake()
        conn.protocol.connectionLost(_DONE)
        self.assertEqual(getattr(conn.protocol, "__dict__", {}), {})


class EndpointLimitTests(SynchronousTestCase):
    """``[endpoint] max_connections`` in the endpoint listener's ``ListenerSite``."""

    def setUp(self) -> None:
        endpoint = dataclasses.replace(EndpointConfig(), max_connections=2)
        self.node = make_node(config=dataclasses.replace(Config(), endpoint=endpoint))
        self.site = build_endpoint_site(self.node)

    def connect(self) -> Any:
        channel = self.site.buildProtocol(_PEER)
        if channel is not None:
            channel.makeConnection(StringTransport(peerAddress=_PEER))
        return channel

    def test_full_listener_refuses(self) -> None:
        """When ``max_connections`` channels are open, the next is refused and counted."""
        self.assertIsNotNone(self.connect())
        self.assertIsNotNone(self.connect())
        self.assertIsNone(self.connect())
        metrics = self.node.metrics
        assert isinstance(metrics, RecordingMetrics)
        self.assertEqual(_refused(metrics, "endpoint"), 1)

    def test_lost_channel_frees_place(self) -> None:
        """When a channel's connection is lost, a new one is accepted."""
        first = self.connect()
        self.connect()
        first.connectionLost(_DONE)
        self.assertEqual(self.site.limit.open, 1)
        self.assertIsNotNone(self.connect())

    def test_channel_still_serves(self) -> None:
        """When a channel is counted, it still answers HTTP (a 404 here)."""
        channel = self.connect()
        channel.dataReceived(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b" 404 ", channel.transport.value())


class WebSocketHealthTests(SynchronousTestCase):
    """``GET /health`` on the WebSocket listener (no upgrade)."""

    def body(self, response: str) -> Any:
        return json.loads(response.split("\r\n\r\n", 1)[1])

    def test_healthy(self) -> None:
        """When storage answers its check, /health and /health/ answer 200 OK JSON."""
        for path in ("/health", "/health/"):
            conn = Connection()
            response = conn.request(path)
            self.assertTrue(response.startswith("HTTP/1.1 200 OK\r\n"), response)
            body = self.body(response)
            self.assertEqual((body["status"], body["storage"]), ("OK", "OK"))
            self.assertTrue(conn.transport.disconnecting)

    def _hanging(self) -> tuple[Connection, HoldingStorage]:
        storage = HoldingStorage(MemoryStorage(), ["check"])
        conn = Connection(node=make_node(config=ws_config(), storage=storage, clock=Clock()))
        return conn, storage

    def test_waits_for_storage(self) -> None:
        """When the check is pending, nothing is sent and the connection stays open."""
        conn, storage = self._hanging()
        self.assertEqual(conn.request("/health"), "")
        self.assertFalse(conn.transport.disconnecting)
        storage.pending[0].release()
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(conn.transport.disconnecting)

    def test_storage_failure(self) -> None:
        """When the check fails, /health answers 503 naming storage."""
        conn, storage = self._hanging()
        conn.request("/health")
        storage.pending[0].fail(StorageUnavailable("backend down"))
        response = conn.take().decode("latin-1")
        self.assertTrue(response.startswith("HTTP/1.1 503 Service Unavailable\r\n"), response)
        body = self.body(response)
        self.assertEqual(body["status"], "FAIL")
        self.assertEqual(body["storage"], "unavailable: backend down")
        self.assertTrue(conn.transport.disconnecting)

    def test_timeout(self) -> None:
        """When the check does not answer within the timeout, /health answers 503."""
        conn, _ = self._hanging()
        conn.request("/health")
        clock = conn.factory.node.clock
        assert isinstance(clock, Clock)
        clock.advance(HEALTH_TIMEOUT + 0.1)
        response = conn.take().decode("latin-1")
        self.assertTrue(response.startswith("HTTP/1.1 503 "), response)
        self.assertIn("no answer within", self.body(response)["storage"])

    def test_client_gone(self) -> None:
        """When the client leaves before the check answers, nothing is written and the
        connection's place on the listener is free."""
        conn, storage = self._hanging()
        conn.request("/health")
        self.assertEqual(conn.factory.limit.open, 1)
        conn.transport.protocol.connectionLost(_DONE)
        self.assertEqual(conn.factory.limit.open, 0)
        storage.pending[0].release()
        self.assertEqual(conn.take(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_place_kept_while_served(self) -> None:
        """When a plain GET is handed to the web site, the connection keeps its one
        place on the listener until it closes."""
        conn = Connection(ws_config(max_connections=1))
        conn.request("/status")
        self.assertEqual(conn.factory.limit.open, 1)
        self.assertIsNone(conn.factory.buildProtocol(_PEER))
        conn.transport.protocol.connectionLost(_DONE)
        self.assertEqual(conn.factory.limit.open, 0)
        self.assertIsNotNone(conn.factory.buildProtocol(_PEER))


class HandshakeTimeoutTests(SynchronousTestCase):
    """``[websocket] handshake_timeout``."""

    def _factory(self, timeout: float) -> PushServerFactory:
        ws = dataclasses.replace(WebSocketConfig(), handshake_timeout=timeout)
        return PushServerFactory(make_node(config=dataclasses.replace(Config(), websocket=ws)))

    def test_option_from_config(self) -> None:
        """When the config sets handshake_timeout, the factory's openHandshakeTimeout follows."""
        self.assertEqual(self._factory(3.0).openHandshakeTimeout, 3.0)
        self.assertEqual(PushServerFactory(make_node()).openHandshakeTimeout, 10.0)

    def test_silent_client_dropped(self) -> None:
        """When a TCP client sends nothing, it is dropped once the timeout passes."""
        factory = self._factory(3.0)
        protocol = factory.buildProtocol(_PEER)
        transport = _Transport(peerAddress=_PEER)
        protocol.makeConnection(transport)
        clock = factory.node.clock
        assert isinstance(clock, Clock)
        clock.advance(2.0)
        self.assertFalse(transport.disconnecting)
        clock.advance(2.0)  # Autobahn's timeouts run in whole-second buckets
        self.assertTrue(transport.disconnecting)
