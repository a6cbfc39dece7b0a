"""Tests for ``pushtwisted.websocket`` through real Autobahn protocol objects.

Bytes go in through ``StringTransport``; no reactor runs and Autobahn's own
timers are all off.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted import __version__
from pushtwisted.config import Config, WebSocketConfig
from pushtwisted.node import Node
from pushtwisted.testing import RecordingMetrics, make_node
from pushtwisted.web.status import HealthResource, StatusResource
from pushtwisted.websocket import PushServerFactory, PushServerProtocol

_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def ws_config(**changes: Any) -> Config:
    """Return a config with Autobahn's ping timer off and ``[websocket]`` keys changed."""
    base = {"auto_ping_interval": 0.0, "auto_ping_timeout": 0.0}
    websocket = dataclasses.replace(WebSocketConfig(), **{**base, **changes})
    return dataclasses.replace(Config(), websocket=websocket)


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """Return one masked client frame."""
    mask = b"\x11\x22\x33\x44"
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = bytes([first, 0x80 | size])
    elif size < 65536:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, 0x80 | 127]) + struct.pack("!Q", size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes, bool]]:
    """Split unmasked server frames into (opcode, payload, fin)."""
    frames = []
    i = 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        i += 2
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", data[i : i + 2])[0]
            i += 2
        elif size == 127:
            size = struct.unpack("!Q", data[i : i + 8])[0]
            i += 8
        frames.append((first & 0x0F, data[i : i + size], bool(first & 0x80)))
        i += size
    return frames


class _Transport(StringTransport):
    """A StringTransport that, like real TCP transports, allows unregistering no producer."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class Connection:
    """One server protocol on a StringTransport."""

    def __init__(self, config: Config | None = None, node: Node | None = None) -> None:
        self.node = node or make_node(config=config or ws_config())
        self.factory = PushServerFactory(self.node)
        # Autobahn's timers run on the global reactor: keep them off in unit tests.
        self.factory.openHandshakeTimeout = 0
        self.factory.closeHandshakeTimeout = 0
        self.protocol: PushServerProtocol = self.factory.buildProtocol(_PEER)
        self.transport = _Transport(peerAddress=_PEER)
        self.protocol.makeConnection(self.transport)

    def request(
        self, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET"
    ) -> str:
        """Send an HTTP request head; return the response."""
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost:8080"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        return self.take().decode("latin-1")

    def handshake(self, extra: dict[str, str] | None = None) -> str:
        """Perform the WebSocket opening handshake; return the response head."""
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": _KEY,
            "Sec-WebSocket-Version": "13",
            **(extra or {}),
        }
        return self.request("/", headers)

    def take(self) -> bytes:
        """Return and forget what the server wrote."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, payload: bytes, opcode: int = 1) -> list[tuple[int, bytes, bool]]:
        """Send one client frame; return the server's frames in answer."""
        self.protocol.dataReceived(client_frame(payload, opcode))
        return server_frames(self.take())


def close_code(frame: tuple[int, bytes, bool]) -> int:
    """Return the close code of a close frame."""
    opcode, payload, _ = frame
    assert opcode == 8, frame
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


class HandshakeTests(SynchronousTestCase):
    """The opening handshake."""

    def test_no_subprotocol(self) -> None:
        """When the client offers no subprotocol, the handshake succeeds without one."""
        conn = Connection()
        head = conn.handshake()
        self.assertTrue(head.startswith("HTTP/1.1 101 "), head)
        self.assertNotIn("Sec-WebSocket-Protocol", head)
        self.assertIsNotNone(conn.protocol.session)

    def test_handshakes_counted(self) -> None:
        """Each accepted opening handshake counts in ``handshakes``; a refused one does not."""
        config = ws_config(origins=["https://app.example.com"])
        accepted = Connection(config)
        accepted.handshake({"Origin": "https://app.example.com"})
        refused = Connection(config)
        refused.handshake({"Origin": "https://evil.example.com"})
        for conn, count in [(accepted, 1), (refused, 0)]:
            metrics = conn.node.metrics
            assert isinstance(metrics, RecordingMetrics)
            self.assertEqual(metrics.count("handshakes"), count)

    def test_push_notification_echoed(self) -> None:
        """When the client offers push-notification, the server echoes it."""
        for offer in ("push-notification", "other, push-notification"):
            head = Connection().handshake({"Sec-WebSocket-Protocol": offer})
            self.assertTrue(head.startswith("HTTP/1.1 101 "), head)
            self.assertIn("Sec-WebSocket-Protocol: push-notification\r\n", head)

    def test_other_subprotocol_accepted(self) -> None:
        """When the client offers only other subprotocols, the handshake succeeds without one."""
        head = Connection().handshake({"Sec-WebSocket-Protocol": "chat"})
        self.assertTrue(head.startswith("HTTP/1.1 101 "), head)
        self.assertNotIn("Sec-WebSocket-Protocol", head)

    def test_origin_refused(self) -> None:
        """When origins are configured, a missing or other Origin gets HTTP 403."""
        config = ws_config(origins=["https://app.example.com"])
        for extra in (
            {},
            {"Origin": "https://evil.example.com"},
            {"Origin": "null"},
            {"Origin": "http://app.example.com"},
        ):
            head = Connection(config).handshake(extra)
            self.assertTrue(head.startswith("HTTP/1.1 403 "), (extra, head))

    def test_origin_allowed(self) -> None:
        """When the Origin matches an entry (any case, default port), the handshake succeeds."""
        config = ws_config(origins=["https://App.Example.com", "http://x.test:8000"])
        for origin in (
            "https://app.example.com",
            "https://APP.example.com:443",
            "http://x.test:8000",
        ):
            head = Connection(config).handshake({"Origin": origin})
            self.assertTrue(head.startswith("HTTP/1.1 101 "), (origin, head))

    def test_any_origin_without_list(self) -> None:
        """When no origins are configured, any Origin (even null) is accepted."""
        for origin in ("https://anything.test", "null"):
            head = Connection().handshake({"Origin": origin})
            self.assertTrue(head.startswith("HTTP/1.1 101 "), head)

    def test_factory_options(self) -> None:
        """When the factory is built, it applies the [websocket] config to Autobahn."""
        config = ws_config(auto_ping_interval=300.0, auto_ping_timeout=30.0, max_message_size=999)
        factory = PushServerFactory(make_node(config=config))
        self.assertEqual(factory.autoPingInterval, 300.0)
        self.assertEqual(factory.autoPingTimeout, 30.0)
        self.assertEqual(factory.maxMessagePayloadSize, 999)
        self.assertEqual(factory.maxFramePayloadSize, 999)
        self.assertTrue(factory.webStatus)
        self.assertGreater(factory.openHandshakeTimeout, 0)


class MessageTests(SynchronousTestCase):
    """Messages after the handshake."""

    def setUp(self) -> None:
        self.conn = Connection()
        self.conn.handshake()

    def test_text_hello(self) -> None:
        """When a text hello arrives, the server answers it in a text frame."""
        [(opcode, payload, fin)] = self.conn.send(b'{"messageType":"hello","channelIDs":[]}')
        self.assertEqual((opcode, fin), (1, True))
        reply = json.loads(payload)
        self.assertEqual(reply["status"], 200)
        self.assertIs(self.conn.node.registry.get(reply["uaid"]), self.conn.protocol.session)

    def test_binary_hello(self) -> None:
        """When a binary frame holds a hello, the server treats it as text and answers in text."""
        [(opcode, payload, _)] = self.conn.send(b'{"messageType":"hello","channelIDs":[]}', 2)
        self.assertEqual(opcode, 1)
        self.assertEqual(json.loads(payload)["status"], 200)

    def test_binary_invalid_utf8(self) -> None:
        """When a binary frame is not UTF-8, the server closes with 1007."""
        [frame] = self.conn.send(b"\xff\xfe{}", 2)
        self.assertEqual(close_code(frame), 1007)

    def test_text_invalid_utf8(self) -> None:
        """When a text frame is not UTF-8, the server closes with 1007."""
        [frame] = self.conn.send(b'{"messageType":"\xc3\x28"}')
        self.assertEqual(close_code(frame), 1007)

    def test_fragmented_text(self) -> None:
        """When text fragments split a UTF-8 character, they still make one message."""
        message = '{"messageType":"hello","channelIDs":[],"x":"\u00e9"}'.encode()
        cut = message.index(b"\xc3") + 1
        self.conn.protocol.dataReceived(client_frame(message[:cut], 1, fin=False))
        [(_, payload, _)] = self.conn.send(message[cut:], opcode=0)
        self.assertEqual(json.loads(payload)["status"], 200)

    def test_oversize(self) -> None:
        """When a message exceeds max_message_size, Autobahn closes with 1009."""
        conn = Connection(ws_config(max_message_size=100))
        conn.handshake()
        [frame] = conn.send(b"{" + b" " * 200 + b"}")
        self.assertEqual(close_code(frame), 1009)

    def test_large_reply_fragmented(self) -> None:
        """When a reply exceeds max_message_size, it is still sent, as a fragmented message."""
        conn = Connection(ws_config(max_message_size=100))
        conn.handshake()
        conn.send(b'{"messageType":"hello","channelIDs":[]}')
        frames = conn.send(b'{"messageType":"ack","x":"' + b"y" * 60 + b'"}')
        self.assertEqual(frames[0][0], 1)
        self.assertEqual(frames[-1][0], 0)
        reply = json.loads(b"".join(payload for _, payload, _ in frames))
        self.assertEqual(reply["status"], 401)

    def test_protocol_error_close(self) -> None:
        """When the session closes for invalid JSON, the server sends close frame 1002."""
        [frame] = self.conn.send(b"not json")
        self.assertEqual(close_code(frame), 1002)

    def test_ping_close_code(self) -> None:
        """When the client pings too often, the reply is followed by close frame 4774."""
        self.conn.send(b"{}")
        text, close = self.conn.send(b"{}")
        self.assertEqual(json.loads(text[1]), {"status": 401, "error": "Invalid Command"})
        self.assertEqual(close_code(close), 4774)

    def test_connection_lost(self) -> None:
        """When the TCP connection drops, the session leaves the registry."""
        [(_, payload, _)] = self.conn.send(b'{"messageType":"hello","channelIDs":[]}')
        uaid = json.loads(payload)["uaid"]
        session = self.conn.protocol.session
        assert session is not None
        self.conn.protocol.connectionLost()
        self.assertIsNone(self.conn.node.registry.get(uaid))
        self.assertFalse(session.deliver("01234567-89ab-cdef-0123-456789abcdef", 1, None))

    def test_send_after_close(self) -> None:
        """When the connection is closing, send_text returns False."""
        self.conn.send(b"not json")
        self.assertFalse(self.conn.protocol.send_text("{}"))


class StatusTests(SynchronousTestCase):
    """Plain HTTP GETs on the WebSocket port."""

    def body(self, response: str) -> Any:
        return json.loads(response.split("\r\n\r\n", 1)[1])

    def test_status(self) -> None:
        """When /status or /status/ is fetched without upgrade, the server answers JSON 200."""
        for path in ("/status", "/status/"):
            response = Connection().request(path)
            self.assertTrue(response.startswith("HTTP/1.1 200 OK\r\n"), response)
            self.assertIn("Content-Type: application/json\r\n", response)
            self.assertEqual(
                self.body(response), {"status": "OK", "clients": 0, "version": __version__}
            )

    def test_status_counts_clients(self) -> None:
        """When clients are connected, /status reports how many."""
        conn = Connection()
        hello = Connection(conn.node.config)
        hello.factory.node = conn.node
        hello.handshake()
        hello.send(b'{"messageType":"hello","channelIDs":[]}')
        self.assertEqual(self.body(conn.request("/status"))["clients"], 1)

    def test_not_found(self) -> None:
        """When another path is fetched without upgrade, the server answers the JSON 404."""
        for path in ("/", "/healthz", "/status/x", "/?redirect=http://evil.test/"):
            response = Connection().request(path)
            self.assertTrue(response.startswith("HTTP/1.1 404 "), response)
            self.assertNotIn("Location", response)
            self.assertEqual(
                self.body(response),
                {"code": 404, "errno": 102, "error": "Not Found", "message": "Not Found"},
            )

    def test_one_request_then_close(self) -> None:
        """When a plain GET is answered, the answer says ``Connection: close`` and the
        connection closes, as Autobahn's own status page did."""
        conn = Connection()
        response = conn.request("/status")
        self.assertIn("\r\nConnection: close\r\n", response)
        self.assertIn("\r\nCache-Control: no-store\r\n", response)
        self.assertTrue(conn.transport.disconnecting)

    def test_same_resources_as_endpoint_listener(self) -> None:
        """The plain-HTTP side serves the ``twisted.web`` status resources of the
        endpoint listener, without ``/metrics``."""
        children = Connection().factory.http_site.resource.children
        self.assertEqual(set(children), {b"status", b"health"})
        self.assertIsInstance(children[b"status"], StatusResource)
        self.assertIsInstance(children[b"health"], HealthResource)

    def test_handed_over_connection_is_not_autobahns(self) -> None:
        """When a plain GET is handed to the web site, Autobahn lets go of the
        connection: its handshake timer is gone and it holds no transport."""
        conn = Connection()
        conn.request("/status")
        self.assertIsNone(conn.protocol.openHandshakeTimeoutCall)
        self.assertIsNone(conn.protocol.transport)
        self.assertIsNot(conn.transport.protocol, conn.protocol)
