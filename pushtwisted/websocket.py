"""The Autobahn adapter: WebSocket connections in, ``Session`` calls out.

``PushServerProtocol`` is the ``Sender`` of its ``Session``: it maps
``onConnect``/``onOpen``/``onMessage``/``onClose`` to the session and writes
the session's text messages.  Text and binary frames are both accepted (a
binary frame must hold UTF-8).  ``PushServerFactory`` applies
``[websocket]`` from the config, ``max_connections`` included (past it a
new connection is closed at once).

A plain HTTP GET (no upgrade) is not Autobahn's to answer: the connection is
handed to the listener's ``twisted.web`` site (``web.status.build_status_site``),
so ``/status`` and ``/health`` answer exactly as on the endpoint listener and
anything else is the JSON 404.  Only that rare path pays for ``twisted.web``;
a WebSocket connection never meets it.

Both classes build on ``pushtwisted._autobahn_tuning``, which removes
Autobahn's per-connection overhead (memory per idle socket, debug formatting
per connection and per message) without changing its behaviour (the
composition root applies its module patches once, ``tap.build_service``),
through ``pushtwisted._autobahn_bounds``, which bounds what a hostile peer can
make the server hold (unread output, control frames, fragments, the request
head) and drops a peer that stops reading.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from pushtwisted import __version__
from pushtwisted._autobahn_bounds import BoundedServerFactory, BoundedServerProtocol
from pushtwisted.connlimit import ConnectionLimit
from pushtwisted.logs import logger
from pushtwisted.node import Node
from pushtwisted.session import CloseCode, Session
from pushtwisted.web.status import build_status_site

__all__ = ["PushServerProtocol", "PushServerFactory", "SUBPROTOCOL"]

#: The subprotocol Firefox offers; echoed when offered, never required.
SUBPROTOCOL = "push-notification"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(value: str) -> str | None:
    """Return ``scheme://host[:port]`` of an origin, lower-cased, default port dropped."""
    try:
        parts = urlsplit(value.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origin_or_raw(value: str) -> str:
    """Return the origin's normal form, or the lower-cased text when it has none."""
    return _origin_key(value) or value.strip().lower()


class PushServerProtocol(BoundedServerProtocol):
    """One client connection: the ``Sender`` of one ``Session``."""

    # A slot, like Autobahn's own state (see _autobahn_tuning).
    __slots__ = ("session",)

    # Autobahn owns ``log`` (a txaio logger); ours is separate.
    _log = logger()
    factory: PushServerFactory
    maxMessagePayloadSize: int  # a class attribute set by the factory
    session: Session | None

    def __init__(self) -> None:
        super().__init__()
        self.session = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """Refuse a disallowed Origin (403); accept ``push-notification`` when offered."""
        allowed = self.factory.allowed_origins
        if allowed and _origin_or_raw(request.origin or "") not in allowed:
            self._log.info(
                "handshake refused: origin {origin!r} not allowed", origin=request.origin
            )
            raise ConnectionDeny(  # type: ignore[no-untyped-call]
                ConnectionDeny.FORBIDDEN, "Origin not allowed"
            )
        self.factory.node.metrics.increment("handshakes")
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onOpen(self) -> None:
        """Create the session and start its hello timer."""
        self.session = Session(self, self.factory.node)
        self.session.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Pass one message's text to the session; invalid UTF-8 closes with 1007."""
        if self.session is None:
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._log.info("closing: binary message is not UTF-8")
            self.factory.node.metrics.increment("protocol_errors", reason="invalid_utf8")
            self.close(CloseCode.INVALID_PAYLOAD, "Invalid UTF-8")
            self.session.connection_lost()
            return
        self.session.receive(text)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Tell the session the connection is gone."""
        if self.session is not None:
            self.session.connection_lost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Let Autobahn handle the loss, then free this connection's place on the listener.

        The session is let go of: it refers to this protocol (its sender), so
        keeping it would leave a reference cycle that only the garbage
        collector could free, and ``tap`` freezes long-lived objects out of
        its reach.
        """
        try:
            super().connectionLost(reason)
        finally:
            self.session = None
            self.factory.limit.release()

    def send_text(self, text: str) -> bool:
        """Send one text message; return False when the connection is not open or not draining."""
        if self.state != self.STATE_OPEN or not self.isDraining():
            return False
        payload = text.encode("utf-8")
        limit = self.maxMessagePayloadSize
        if 0 < limit < len(payload):
            # Autobahn refuses to *send* past the incoming limit; a large flush
            # or echo goes out as a fragmented message instead.
            self.beginMessage(isBinary=False)
            self.sendMessageFrame(payload)
            self.endMessage()
        else:
            self.sendMessage(payload, isBinary=False)
        return True

    def onBoundExceeded(self, reason: str) -> None:
        """Count a connection closed for passing a bound (``_autobahn_bounds``)."""
        self.factory.node.metrics.increment("connections_dropped", reason=reason)

    def onOutputDrained(self) -> None:
        """Send what was stored while the connection was not draining."""
        if self.session is not None:
            d = self.session.check_storage()
            d.addErrback(lambda f: self._log.failure("sending stored updates failed", f))

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any close code (1002 included)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=int(code), reasonUtf8=encode_truncate(reason, 123))

    def sendServerStatus(self, redirectUrl: str | None = None, redirectAfter: int = 0) -> None:
        """Hand a plain HTTP request (no upgrade) to the listener's web site."""
        transport = self.transport
        if transport is None:
            return
        factory = self.factory
        # Autobahn's part of this connection ends here: no handshake timer,
        # and its dropConnection (called next) must leave the transport alone.
        timer, self.openHandshakeTimeoutCall = self.openHandshakeTimeoutCall, None
        if timer is not None:
            timer.cancel()
        self.state = self.STATE_CLOSED
        self.transport = None
        # The connection keeps its place on the listener: the site's channel takes it.
        factory.limit.release()
        channel = factory.http_site.buildProtocol(transport.getPeer())
        if channel is None:
            transport.loseConnection()
            return
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = channel
        else:  # a TCP connection: it hands its data to ``.protocol``
            transport.protocol = channel  # type: ignore[attr-defined]
        channel.makeConnection(transport)
        # Autobahn has read the request head but kept every byte received.
        received, self.data = self.data, b""
        channel.dataReceived(received)

    def dropConnection(self, abort: bool = False) -> None:
        """Close the TCP connection, unless it was handed to the web site."""
        if self.transport is not None:
            super().dropConnection(abort)

    def sendRedirect(self, url: str) -> None:
        """Serve the request like any plain GET instead of Autobahn's ``?redirect=``."""
        self.sendServerStatus()


class PushServerFactory(BoundedServerFactory):
    """Builds ``PushServerProtocol`` with the options of ``[websocket]``.

    :param node: the node's shared collaborators.
    :param url: the public WebSocket URL, when known.
    """

    protocol = PushServerProtocol

    def __init__(self, node: Node, *, url: str | None = None) -> None:
        super().__init__(url=url, server=f"pushtwisted/{__version__}", reactor=node.clock)
        self.node = node
        ws = node.config.websocket
        #: The open connections of this listener, against ``[websocket] max_connections``.
        self.limit = ConnectionLimit("websocket", ws.max_connections, node.clock, node.metrics)
        #: Where plain HTTP requests (no upgrade) are served: ``/status``, ``/health``.
        self.http_site = build_status_site(node, limit=self.limit, timeout=ws.handshake_timeout)
        #: Allowed origins in normal form; empty allows every origin.
        self.allowed_origins = frozenset(_origin_or_raw(origin) for origin in ws.origins)
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            webStatus=True,
            autoPingInterval=ws.auto_ping_interval,
            autoPingTimeout=ws.auto_ping_timeout,
            maxMessagePayloadSize=ws.max_message_size,
            maxFramePayloadSize=ws.max_message_size,
            openHandshakeTimeout=ws.handshake_timeout,
            # Send a close frame (1009, 1007, ...) rather than drop the TCP.
            failByDrop=False,
            # Autobahn only checks that the Origin parses; onConnect decides.
            allowNullOrigin=True,
            # onMessage decodes every message and closes with 1007 on bad
            # UTF-8, so Autobahn's incremental validator (an object and C
            # memory per connection, a call per frame) would only repeat it.
            utf8validateIncoming=False,
        )
        self.setBounds(
            maxOutputBuffer=ws.max_output_buffer,
            maxControlFramesPerSecond=ws.max_control_frames_per_second,
            maxControlFramesBurst=ws.max_control_frames_burst,
        )

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """Return a new connection's protocol, or None (close it) when the listener is full."""
        if not self.limit.acquire():
            return None
        try:
            return super().buildProtocol(addr)
        except BaseException:
            self.limit.release()
            raise
