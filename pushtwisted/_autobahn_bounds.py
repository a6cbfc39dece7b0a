"""Bounds on what one WebSocket peer can make the server hold or do.

Autobahn bounds a message's payload (``maxMessagePayloadSize``) and the time
an opening handshake may take; a hostile peer could still grow the server's
memory or CPU without limit in the ways below.  Each is closed here, on
Autobahn's internals (like ``pushtwisted._autobahn_tuning``, on which this
builds), by ``BoundedServerProtocol`` and ``BoundedServerFactory``:

1. **Unread output** (``maxOutputBuffer``, bytes).  Autobahn writes every pong
   (and everything else) to the transport whether or not the peer reads, and
   the transport buffers it without limit.  Before each write the bytes
   still waiting in the transport's buffer are measured (``unsent_bytes``,
   O(1)); past the bound the connection is aborted: a close frame could not
   reach a peer that does not read.  ``isDraining()`` is False once a
   quarter of the bound is waiting; the application sends nothing more then
   (an update stays stored) and ``onOutputDrained()`` is called once the
   buffer is back under that quarter (polled every second or two).
2. **Control frames** (``maxControlFramesPerSecond``, ``maxControlFramesBurst``).
   Pings and pongs cost a pong and CPU each and were not limited.  They take
   a token from a per-connection bucket (one number: the bucket's
   "theoretical arrival time", GCRA); past it the connection is closed with
   1008.  Close frames, and the pong answering the server's own auto-ping,
   are not counted.
3. **Fragments** (``maxFragments`` per message).  A message of 200,000
   one-byte fragments cost 11 MB: one bytes object per fragment.  More
   fragments than the bound close with 1009, and a message's pieces are
   kept in one growing buffer from its second piece on.
4. **The request head** (``maxHandshakeHead``, bytes).  Autobahn buffered a
   head without its blank line without limit and searched all of it again
   on every read (quadratic CPU).  Only the new bytes (plus 3) are
   searched, and a head past the bound is answered 431 and closed.
5. **A peer that writes but never reads.**  Autobahn's auto-ping timeout was
   cancelled by any incoming data frame, so a client sending a message now
   and then stayed connected forever without reading.  The factory turns
   ``autoPingRestartOnAnyTraffic`` off: only the pong answering the ping
   cancels the timeout, so such a peer is dropped within
   ``autoPingInterval + autoPingTimeout``.

Closing for items 2 and 3 sends the close frame and closes the TCP
connection at once (no closing handshake, so no more reading; aborted if the
close frame cannot be flushed within ``_LINGER`` seconds).  Every bound hit
logs one line (Autobahn's own, at warn or info) and calls
``onBoundExceeded(reason)`` once, where the application counts it; the
reasons are ``BOUND_REASONS``.  Per idle connection this adds two slots
(8 bytes each) and no object.
"""

from __future__ import annotations

from typing import Any, cast

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.policies import ProtocolWrapper

from pushtwisted._autobahn_tuning import LeanServerFactory, LeanServerProtocol

__all__ = [
    "BOUND_REASONS",
    "BoundedServerFactory",
    "BoundedServerProtocol",
    "DEFAULT_MAX_FRAGMENTS",
    "DEFAULT_MAX_HANDSHAKE_HEAD",
    "unsent_bytes",
]

#: Fragments one message may have (``maxFragments``).
DEFAULT_MAX_FRAGMENTS = 1000
#: Bytes the opening handshake's request head may have (``maxHandshakeHead``).
DEFAULT_MAX_HANDSHAKE_HEAD = 16384
#: What ``onBoundExceeded`` may be called with.
BOUND_REASONS = (
    "output_buffer",
    "control_frames",
    "fragments",
    "handshake_head",
    "ping_timeout",
)

_CLOSE_POLICY = WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION  # 1008
_CLOSE_TOO_BIG = WebSocketProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG  # 1009
_OPCODE_CLOSE = 8
_OPCODE_PONG = 10
_END_OF_HEAD = b"\r\n\r\n"
#: Seconds between two looks at a connection that stopped draining.
_DRAIN_POLL = 1.0
#: Seconds a connection closed for a bound may take to flush its close frame.
_LINGER = 2.0


def unsent_bytes(transport: object) -> int:
    """Return the bytes written to ``transport`` that the kernel has not taken yet.

    Reads Twisted's ``FileDescriptor`` write buffer (``dataBuffer`` from
    ``offset``, plus the ``_tempDataBuffer`` list's ``_tempDataLen``),
    through TLS and other ``ProtocolWrapper`` layers (for TLS the buffered
    bytes are the encrypted ones; the small writes TLS gathers until the end
    of the reactor turn are not counted).  0 for a transport without such a
    buffer.
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if isinstance(transport, FileDescriptor):
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return 0


class BoundedServerProtocol(LeanServerProtocol):
    """``LeanServerProtocol`` with the hostile-peer bounds of this module.

    The bounds are class attributes of the factory's protocol class (set
    with ``BoundedServerFactory.setBounds``); 0 turns one off.
    """

    __slots__ = ("_control_tat", "_fragments")

    #: Bytes of unsent output past which the connection is aborted.
    maxOutputBuffer: int = 1 << 20
    #: Control frames (ping, unsolicited pong) per second, on average.
    maxControlFramesPerSecond: float = 10.0
    #: Control frames at once above that rate.
    maxControlFramesBurst: int = 30
    #: Fragments (frames) one message may have.
    maxFragments: int = DEFAULT_MAX_FRAGMENTS
    #: Bytes the request head may have.
    maxHandshakeHead: int = DEFAULT_MAX_HANDSHAKE_HEAD

    factory: BoundedServerFactory

    def __init__(self) -> None:
        super().__init__()
        # When the control-frame bucket is full again (reactor seconds).
        self._control_tat = 0.0
        # Frames of the message being received.
        self._fragments = 0

    def onBoundExceeded(self, reason: str) -> None:
        """Called once when a bound closes this connection (``BOUND_REASONS``)."""

    def onOutputDrained(self) -> None:
        """Called once the output that made ``isDraining()`` False has drained."""

    def _close_for_bound(self, bound: str, code: int, reason: str) -> None:
        """Send close ``code`` and close the TCP connection at once, logging one line.

        No closing handshake: a peer past a bound does not get to keep the
        connection (and the server reading it) while it takes its time to
        answer.  A peer that reads nothing cannot hold the connection open
        either: it is aborted ``_LINGER`` seconds later.
        """
        if self.state == self.STATE_OPEN:
            self.onBoundExceeded(bound)
            self.failedByMe = True
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"))
        if self.state == self.STATE_CLOSED:
            return
        self.wasClean = False
        self.wasNotCleanReason = f"{reason} (closed with {code})"
        transport = self.transport
        self.dropConnection(abort=False)  # logs the reason, flushes, then closes
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            self.factory._batched_timer.call_later(_LINGER, abort)

    # -- 1. unread output ------------------------------------------------------

    def isDraining(self) -> bool:
        """Return False when a quarter of ``maxOutputBuffer`` is still unsent.

        Then send nothing that can wait: ``onOutputDrained()`` follows once
        the peer has read enough.
        """
        limit = self.maxOutputBuffer
        if limit <= 0 or unsent_bytes(self.transport) <= limit // 4:
            return True
        self.factory.watch_drain(self)
        return False

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Write ``data``, or abort the connection when its unsent output passed the bound."""
        limit = self.maxOutputBuffer
        if limit > 0 and self.transport is not None:
            unsent = unsent_bytes(self.transport)
            if unsent > limit:
                self._abort_unread(unsent)
                return
        super().sendData(data, sync, chopsize)

    def _abort_unread(self, unsent: int) -> None:
        if self.state == self.STATE_CLOSED:
            return
        self.wasClean = False
        self.wasNotCleanReason = (
            f"peer does not read: {unsent} bytes unsent (max {self.maxOutputBuffer})"
        )
        self.onBoundExceeded("output_buffer")
        self.dropConnection(abort=True)  # logs the reason

    # -- 2. control frames -----------------------------------------------------

    def processControlFrame(self) -> bool:
        """Count a ping or unsolicited pong against the budget, then let Autobahn handle it."""
        opcode = self.current_frame.opcode
        if opcode != _OPCODE_CLOSE and self.maxControlFramesPerSecond > 0:
            pending = self.autoPingPending
            answers_our_ping = (
                opcode == _OPCODE_PONG
                and pending is not None
                and b"".join(self.control_frame_data) == pending
            )
            if not answers_our_ping and not self._take_control_token():
                self.control_frame_data = None  # type: ignore[assignment]
                self._close_for_bound("control_frames", _CLOSE_POLICY, "too many control frames")
                return False
        result: bool = super().processControlFrame()
        return result

    def _take_control_token(self) -> bool:
        """GCRA: one stored time per connection instead of a token count and a timestamp."""
        interval = 1.0 / self.maxControlFramesPerSecond
        now = self.factory.reactor.seconds()
        due = max(self._control_tat, now)
        # ``due - now`` is a whole number of intervals; half a one absorbs
        # the rounding of adding intervals to an epoch time.
        if due - now > (max(1, self.maxControlFramesBurst) - 0.5) * interval:
            return False
        self._control_tat = due + interval
        return True

    # -- 3. fragments ----------------------------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._fragments = 0

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        self._fragments += 1
        limit = self.maxFragments
        if 0 < limit < self._fragments and not self.failedByMe:
            reason = f"message of more than {limit} fragments"
            self._close_for_bound("fragments", _CLOSE_TOO_BIG, reason)

    def onMessageFrameData(self, payload: bytes) -> None:
        """Keep the message's first piece as is, then grow one buffer (not a list of pieces).

        Autobahn keeps every piece (one per frame, or per read within a
        frame) as its own bytes object until the message ends.  The pieces
        go straight to ``message_data`` here, so each frame's own list
        (``frame_data``, handed to ``onMessageFrame``) stays empty.
        """
        if self.failedByMe:
            return
        pieces = cast("list[bytes | bytearray]", self.message_data)
        if not pieces:
            pieces.append(payload)
            return
        buffer = pieces[0]
        if not isinstance(buffer, bytearray):
            buffer = pieces[0] = bytearray(buffer)
        buffer += payload

    # -- 4. request head -------------------------------------------------------

    def _connectionMade(self) -> None:
        super()._connectionMade()
        # Set by Autobahn once the head is complete; until then it is unset.
        self.http_request_data = None  # type: ignore[assignment]

    def _dataReceived(self, data: bytes) -> None:
        if self.state != self.STATE_CONNECTING or self.http_request_data is not None:
            super()._dataReceived(data)
            return
        if self.logOctets:
            self.logRxOctets(data)
        # A head that came in several reads grows in a bytearray (Autobahn's
        # ``bytes +=`` copied all of it on every read) and is handed to
        # Autobahn as bytes once complete.
        buffer: bytes | bytearray = self.data
        searched = len(buffer)
        if searched:
            if not isinstance(buffer, bytearray):
                buffer = bytearray(buffer)
            buffer += data
        else:
            buffer = data  # usually the whole head: no copy
        # The blank line may start in the last 3 bytes searched before.
        end = buffer.find(_END_OF_HEAD, max(0, searched - 3))
        head = len(buffer) if end < 0 else end + len(_END_OF_HEAD)
        limit = self.maxHandshakeHead
        if 0 < limit < head:
            self.data = b""
            self.onBoundExceeded("handshake_head")
            self.failHandshake("Request Header Fields Too Large", 431)
        elif end < 0:
            self.data = buffer if isinstance(buffer, bytearray) else bytearray(buffer)
        else:
            self.data = bytes(buffer)
            self.consumeData()

    # -- 5. a peer that does not answer pings ----------------------------------

    def onAutoPingTimeout(self) -> None:
        self.onBoundExceeded("ping_timeout")
        super().onAutoPingTimeout()


class BoundedServerFactory(LeanServerFactory):
    """``LeanServerFactory`` for ``BoundedServerProtocol``: the bounds as options.

    Also sets ``autoPingRestartOnAnyTraffic`` off (see the module's item 5).
    """

    protocol: type[BoundedServerProtocol] = BoundedServerProtocol
    protocol_class: type[BoundedServerProtocol]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setProtocolOptions(autoPingRestartOnAnyTraffic=False)  # type: ignore[no-untyped-call]
        #: Connections that stopped draining, looked at again every ``_DRAIN_POLL``.
        self._not_draining: set[BoundedServerProtocol] = set()

    def setBounds(
        self,
        *,
        maxOutputBuffer: int | None = None,
        maxControlFramesPerSecond: float | None = None,
        maxControlFramesBurst: int | None = None,
        maxFragments: int | None = None,
        maxHandshakeHead: int | None = None,
    ) -> None:
        """Set bounds (None keeps one); they apply to open connections too."""
        values = {
            "maxOutputBuffer": maxOutputBuffer,
            "maxControlFramesPerSecond": maxControlFramesPerSecond,
            "maxControlFramesBurst": maxControlFramesBurst,
            "maxFragments": maxFragments,
            "maxHandshakeHead": maxHandshakeHead,
        }
        for name, value in values.items():
            if value is not None:
                setattr(self.protocol_class, name, value)

    def watch_drain(self, protocol: BoundedServerProtocol) -> None:
        """Call ``protocol.onOutputDrained()`` once its output has drained."""
        if protocol not in self._not_draining:
            self._not_draining.add(protocol)
            self._batched_timer.call_later(_DRAIN_POLL, self._look_again, protocol)

    def _look_again(self, protocol: BoundedServerProtocol) -> None:
        self._not_draining.discard(protocol)
        if protocol.state != protocol.STATE_OPEN:
            return
        if protocol.isDraining():  # or it watches itself again
            protocol.onOutputDrained()
