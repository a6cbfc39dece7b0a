"""A plain server connection's start, without the parts of Autobahn's it never uses.

Autobahn's ``connectionMade`` and ``_connectionMade`` (tested:
``TESTED_AUTOBAHN``) were about an eighth of the CPU of a short-lived push
connection (connect, hello, close; in process).  Besides the state every
connection needs, they build a ``TransportDetails`` (the process id, the
native thread id, a peer certificate lookup) of which a plain TCP
connection only ever reads the peer string, make a UTF-8 validator, a send
queue and a traffic counter that ``LeanServerProtocol`` replaces right
after, run the per-connection option copy (empty for ``LeanServerFactory``)
and ``setTrackTimings``, and make five debug-log calls whose arguments are
built even when debug logging is off.

``lean_connection_made`` does the rest exactly as Autobahn does, in the
same order: the peer string from Autobahn's own ``peer2str``,
``setTcpNoDelay`` (its errors ignored, as Autobahn ignores them: a UNIX
socket raises), then the protocol's ``_connectionMade``, where
``open_state`` sets Autobahn's state, starts the opening-handshake timer and
counts the connection on the factory.  ``_transport_details`` stays None: a
plain TCP connection drops it once open anyway, and until then only
``LeanServerProtocol._onOpen`` reads it, where None means "not TLS"
(Autobahn's own ``_onOpen`` adds TLS details and otherwise only calls
``onOpen``).  Autobahn's ``transport_details`` property answers None too; only
WAMP reads it.  tests/test_autobahn_open.py checks who reads it.

Autobahn's path runs unchanged for a TLS transport (``ISSLTransport``: its
details are kept), when its debug logging is on (its lines are logged),
when the options need its work (``trackTimings``, ``utf8validateIncoming``)
or are copied per connection (``CONFIG_ATTRS``: not a ``LeanServerFactory``).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.util import peer2str
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import ISSLTransport
from txaio.tx import _no_op

__all__ = ["lean_connection_made", "open_state"]

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_GROUND = WebSocketProtocol.SEND_STATE_GROUND


def lean_connection_made(protocol: Any) -> bool:
    """Start a plain server connection as Autobahn's ``connectionMade``; False when Autobahn must.

    ``protocol`` is a ``LeanServerProtocol`` just given its transport.  On
    False nothing about it or its transport has changed.
    """
    transport = protocol.transport
    if (
        protocol.CONFIG_ATTRS
        or protocol.trackTimings
        or protocol.utf8validateIncoming
        or protocol.log.debug is not _no_op
        or ISSLTransport.providedBy(transport)
    ):
        return False
    protocol.peer = peer2str(transport)
    try:
        transport.setTcpNoDelay(protocol.tcpNoDelay)
    except Exception:  # as Autobahn: a UNIX socket raises OSError, others lack the method
        pass
    protocol._connectionMade()
    return True


def open_state(protocol: Any) -> None:
    """Set the state Autobahn's server ``_connectionMade`` sets, start its timer, count it.

    The traffic counter, send queue and UTF-8 validator are left to the
    caller (``LeanServerProtocol`` replaces Autobahn's anyway).
    """
    protocol._perMessageCompress = None
    protocol.trackedTimings = None
    protocol.state = _CONNECTING
    protocol.send_state = _GROUND
    protocol.data = b""
    protocol.triggered = False
    protocol.wasMaxFramePayloadSizeExceeded = False
    protocol.wasMaxMessagePayloadSizeExceeded = False
    protocol.closedByMe = False
    protocol.failedByMe = False
    protocol.droppedByMe = False
    protocol.wasClean = False
    protocol.wasNotCleanReason = None
    protocol.wasServerConnectionDropTimeout = False
    protocol.wasOpenHandshakeTimeout = False
    protocol.wasCloseHandshakeTimeout = False
    protocol.wasServingFlashSocketPolicyFile = False
    protocol.localCloseCode = None
    protocol.localCloseReason = None
    protocol.remoteCloseCode = None
    protocol.remoteCloseReason = None
    protocol.openHandshakeTimeoutCall = None
    protocol.closeHandshakeTimeoutCall = None
    protocol.autoPingTimeoutCall = None
    protocol.autoPingPending = None
    protocol.autoPingPendingCall = None
    protocol.autoPingPendingSeq = 0
    protocol.autoPingPendingSent = None
    factory = protocol.factory
    timeout = protocol.openHandshakeTimeout
    if timeout > 0:
        protocol.openHandshakeTimeoutCall = factory._batched_timer.call_later(
            timeout, protocol.onOpenHandshakeTimeout
        )
    factory.countConnections += 1
