"""Per-connection costs of Autobahn that a push server cannot afford, removed.

A push server holds tens of thousands of mostly idle WebSockets, so every
byte and every microsecond Autobahn spends per connection or per message
counts.  Autobahn (tested: ``TESTED_AUTOBAHN``) spends them on things we
never use.  This module keeps all knowledge of Autobahn's internals in one
place; ``pushtwisted.websocket`` builds on ``LeanServerProtocol`` and
``LeanServerFactory``.  Each tuning says WHY next to its code.  The numbers
(before → after, on the 2-core bench machine) are in the commit message.

1. ``apply()`` (in ``pushtwisted._autobahn_patches``) makes Autobahn's debug-only
   string formatting lazy.
   Autobahn evaluates ``pformat(...)`` (the whole option list of every new
   connection), ``hltype(...)`` and ``hlval(...)`` as *arguments* of
   ``log.debug`` calls on every connection, handshake, data chunk and send,
   even when debug logging is off (the call itself is then a no-op).  That
   cost about 40% of the connection rate.  ``apply()`` replaces those three
   module-level names in the Autobahn modules that imported them by stand-ins
   that only record the call and format when the log event is rendered.
2. ``LeanServerFactory`` keeps the ~30 protocol options as class attributes
   of a protocol subclass made for that factory, instead of Autobahn copying
   them into every connection's ``__dict__``.
3. ``LeanServerProtocol`` keeps per-connection state in ``__slots__`` and
   drops what an open, idle connection never needs again (handshake request
   and headers, transport details, the frame unmasker, a send queue, a
   traffic counter, a UTF-8 validator, an event list and its dict).
4. Per message, ``onMessageEnd`` skips firing the ``message`` event (a
   Deferred and a closure per message) when nobody listens.
5. ``apply()`` also unmasks small incoming frames with one big-integer XOR
   instead of a native (cffi) masker object per frame
   (``pushtwisted._autobahn_frames``).  Small outgoing messages are framed
   and written directly (``sendMessage``).
6. Autobahn's timeouts run on ``pushtwisted._bucket_timer.BucketTimer``
   instead of txaio's batched timer (a closure each, a scan per cancel).
7. ``dataReceived`` takes whole single-frame messages straight from the
   bytes received (``pushtwisted._autobahn_frames.next_message``) and hands
   each to ``_onMessage``; everything else goes through Autobahn's parser.
   Per-frame hooks (``onMessageBegin``, ``onMessageFrameBegin``, ...) do not
   run for those messages; ``directFrames = False`` turns it off.
8. ``processHandshake`` completes the opening handshake of a plain,
   well-formed request in ``pushtwisted._autobahn_handshake.fast_handshake``
   (the same checks, state and response bytes, without Autobahn's URL
   parsing, Deferred and debug calls: ~35% of a short connection's CPU went
   to Autobahn's handshake); any other request goes to Autobahn's.
   ``fastHandshake = False`` turns it off.
9. ``connectionMade`` starts a plain server connection in
   ``pushtwisted._autobahn_open.lean_connection_made`` (Autobahn's state,
   timer, count and peer string, without its ``TransportDetails``, UTF-8
   validator, option copy and debug calls: ~12% of a short connection's
   CPU went to Autobahn's); ``_transport_details`` stays None until open.
   TLS, Autobahn's debug logging and options that need its work take
   Autobahn's.  ``leanOpen = False`` turns it off.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats

from pushtwisted._autobahn_frames import frame_header, next_message
from pushtwisted._autobahn_handshake import fast_handshake
from pushtwisted._autobahn_open import lean_connection_made, open_state
from pushtwisted._autobahn_patches import (
    TESTED_AUTOBAHN,
    LazyFormat,
    apply,
    check_version,
    installed_autobahn,
)
from pushtwisted._bucket_timer import BucketTimer

__all__ = [
    "TESTED_AUTOBAHN",
    "check_version",
    "installed_autobahn",
    "LazyFormat",
    "LeanServerFactory",
    "LeanServerProtocol",
    "apply",
]


class _Unwatched:
    """Stands in for a connection's ``is_open``/``is_closed`` Deferred.

    Autobahn resolves them (``txaio.resolve`` calls ``callback``) when the
    handshake completes and when the connection closes; on the server side
    nothing in Autobahn or pushtwisted waits on them.  Firing is ignored;
    trying to wait fails loudly instead of never firing.
    """

    __slots__ = ()

    def callback(self, result: object = None) -> None:
        """Ignore the event."""

    def errback(self, fail: object = None) -> None:
        """Ignore the event."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"is_open/is_closed are not kept by LeanServerProtocol (no {name!r});"
            " use onOpen/onClose"
        )


_UNWATCHED = _Unwatched()

#: Stands in for the handshake's header and query dicts once the socket is open.
_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: One traffic counter shared by every connection.  Autobahn only ever adds
#: to ``trafficStats``; nothing reads it back, and one object per connection
#: (with a 14-key ``__dict__``) costs ~700 bytes of every idle socket.
_SHARED_TRAFFIC_STATS = TrafficStats()  # type: ignore[no-untyped-call]

#: Per-connection attributes Autobahn 26.10 sets on a server connection, kept
#: in slots: a ``__dict__`` with ~70 keys outgrows CPython's shared-key
#: instance dicts and costs ~3.3 KB per connection, slots ~8 bytes a name.
#: A name missing here still works (it lands in ``__dict__``);
#: tests/test_autobahn_tuning.py checks that a whole connection leaves
#: ``__dict__`` empty, so an Autobahn upgrade that adds state shows up there.
_SLOTS = tuple(
    """
    factory transport connected peer is_open is_closed _transport_details
    _perMessageCompress _isMessageCompressed trackedTimings trafficStats
    state send_state data send_queue triggered utf8validator
    wasMaxFramePayloadSizeExceeded wasMaxMessagePayloadSizeExceeded
    closedByMe failedByMe droppedByMe wasClean wasNotCleanReason
    wasServerConnectionDropTimeout wasOpenHandshakeTimeout wasCloseHandshakeTimeout
    wasServingFlashSocketPolicyFile localCloseCode localCloseReason
    remoteCloseCode remoteCloseReason openHandshakeTimeoutCall
    closeHandshakeTimeoutCall autoPingTimeoutCall autoPingPending
    autoPingPendingCall autoPingPendingSeq autoPingPendingSent
    http_request_data http_status_line http_headers http_request_uri
    http_request_path http_request_params http_request_host http_response_data
    websocket_version websocket_protocols websocket_origin websocket_extensions
    websocket_protocol_in_use websocket_extensions_in_use _wskey
    inside_message current_frame current_frame_masker control_frame_data
    frame_length frame_data message_is_binary message_data
    message_data_total_length utf8validateIncomingCurrentMessage utf8validateLast
    send_compressed send_message_opcode send_message_frame_length
    send_message_frame_mask send_message_frame_masker
    """.split()
)


#: Handshake state an open connection never reads again (Autobahn keeps the
#: request and response text, headers and offers for its test suite), and
#: what stands in for it.  ``http_request_path`` and
#: ``websocket_protocol_in_use`` are short and kept for the application.
_RELEASED_AT_OPEN: tuple[tuple[str, object], ...] = (
    ("http_request_data", None),
    ("http_response_data", None),
    ("http_status_line", None),
    ("http_headers", _EMPTY),
    ("http_request_params", _EMPTY),
    ("http_request_uri", None),
    ("http_request_host", None),
    ("websocket_origin", None),
    ("websocket_protocols", ()),
    ("websocket_extensions", ()),
    ("websocket_extensions_in_use", ()),
    ("_wskey", None),
)


class LeanServerProtocol(WebSocketServerProtocol):
    """``WebSocketServerProtocol`` with its per-connection overhead removed.

    Wire behaviour is Autobahn's; only memory and CPU per connection change.
    Not kept: ``is_open``/``is_closed`` cannot be waited on (see
    ``_Unwatched``), and ``trafficStats`` is one shared counter.
    """

    __slots__ = _SLOTS

    # Options read here; class attributes of the factory's protocol class.
    logOctets: bool
    logFrames: bool
    autoFragmentSize: int
    maskServerFrames: bool
    maxMessagePayloadSize: int
    maxFramePayloadSize: int
    utf8validateIncoming: bool
    applyMask: bool
    autoPingRestartOnAnyTraffic: bool

    #: Whole single-frame messages skip Autobahn's frame parser (see the
    #: module's item 7); a class attribute, like the options.
    directFrames: bool = True
    #: A plain request's opening handshake skips Autobahn's (the module's item 8).
    fastHandshake: bool = True
    #: A plain connection's start skips Autobahn's (the module's item 9).
    leanOpen: bool = True

    def __init__(self) -> None:
        # Autobahn's __init__ also calls ``set_valid_events(["message"])``: a
        # list and a dict per connection, needed only once someone calls
        # ``on()`` (done there).  The ``TransportDetails()`` it makes is
        # replaced at connectionMade anyway (and none is made for a plain
        # connection: item 9).
        self.factory = None
        self.transport = None
        self.connected = 0
        self.peer = None
        # Two Deferreds per connection (each with its callback list: ~500
        # bytes and 4 objects for the collector) that Autobahn's server side
        # only ever fires and nobody here waits on; see _Unwatched.
        self.is_closed = _UNWATCHED
        self.is_open = _UNWATCHED
        self._transport_details = None  # type: ignore[assignment]

    def on(self, event: str, handler: Callable[..., object]) -> None:
        """Add an event listener (Autobahn's ``ObservableMixin.on``)."""
        if self._valid_events is None:
            self.set_valid_events(["message"])  # type: ignore[no-untyped-call]
        super().on(event, handler)  # type: ignore[no-untyped-call]

    def connectionMade(self) -> None:
        """Start a plain connection here (``_transport_details`` None), any other in Autobahn."""
        if not (self.leanOpen and lean_connection_made(self)):
            super().connectionMade()

    def _connectionMade(self) -> None:
        if self._transport_details is None:  # lean_connection_made, not Autobahn's, ran
            open_state(self)
        else:
            super()._connectionMade()
        # Never read by us; Autobahn only adds to it (see _SHARED_TRAFFIC_STATS).
        self.trafficStats = _SHARED_TRAFFIC_STATS
        # A deque (~600 bytes) used only by chopped or "sync" writes, which
        # this server never makes: made on demand in sendData.
        self.send_queue = None  # type: ignore[assignment]
        # Incoming UTF-8 is checked when a message is decoded (1007 on
        # failure), so the incremental validator is not needed.
        if not self.utf8validateIncoming:
            self.utf8validator = None  # type: ignore[assignment]

    def processHandshake(self) -> None:
        """Complete a plain request's opening handshake here, any other in Autobahn."""
        if not (self.fastHandshake and fast_handshake(self)):
            super().processHandshake()

    def dataReceived(self, data: bytes) -> None:
        """Hand whole single-frame messages to ``_onMessage``; the rest to Autobahn.

        Only while the connection is open, between messages, with nothing
        buffered and with no option that needs Autobahn's per-frame work
        (frame or octet logging, timings, compression, an incoming UTF-8
        validator, ``message`` listeners).  A frame ``next_message`` does not
        take, and everything after it, goes to Autobahn as received.
        """
        pos = 0
        if (
            self.state == self.STATE_OPEN
            and not self.data
            and self.current_frame is None
            and self._direct()
        ):
            limit = self.maxFramePayloadSize
            cap = self.maxMessagePayloadSize
            if cap > 0 and (limit <= 0 or cap < limit):
                limit = cap
            size = len(data)
            while pos < size:
                message = next_message(data, pos, limit)
                if message is None:
                    break
                payload, binary, pos = message
                if self.autoPingRestartOnAnyTraffic and self.autoPingTimeoutCall:
                    self._cancelAutoPingTimeoutCall()
                self._onMessage(payload, binary)
                if self.state != self.STATE_OPEN or not self._direct():
                    break
            else:
                return
        super().dataReceived(data[pos:] if pos else data)

    def _direct(self) -> bool:
        """Return True when a whole single-frame message may skip Autobahn's parser."""
        return not (
            self.inside_message
            or self.failedByMe
            or not self.directFrames
            or self.logFrames
            or self.logOctets
            or self.trackedTimings
            or self._perMessageCompress is not None
            or self.utf8validateIncoming
            or self._listeners is not None
            or not self.applyMask
        )

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Write ``data``; Autobahn's queued path only for chopped or sync writes.

        The fast path is Autobahn's own unqueued branch minus its per-write
        debug formatting and traffic counting.
        """
        if chopsize or sync or self.send_queue:
            if self.send_queue is None:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)  # type: ignore[union-attr]
        if self.logOctets:
            self.logTxOctets(data, False)

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        """Send one message; a plain one is framed here and written at once.

        Autobahn's ``sendMessage`` → ``sendFrame`` → ``sendData`` chain costs
        several microseconds per message in argument checks, statistics and
        generality (fragmenting, compressing, masking, logging).  A server
        message with none of those is one unmasked RFC 6455 frame: FIN and
        opcode, the length in 7, 16 or 64 bits, the payload.
        """
        size = len(payload)
        if (
            self.state != self.STATE_OPEN
            or fragmentSize is not None
            or sync
            or self.send_state != self.SEND_STATE_GROUND
            or self._perMessageCompress is not None
            or self.autoFragmentSize
            or self.maskServerFrames
            or self.logFrames
            or self.trackedTimings
            or 0 < self.maxMessagePayloadSize < size
        ):
            super().sendMessage(  # type: ignore[no-untyped-call]
                payload, isBinary, fragmentSize, sync, doNotCompress
            )
            return
        self.sendData(frame_header(size, isBinary) + payload)

    def _onOpen(self) -> None:
        details = self._transport_details
        if details is None:
            # Started by lean_connection_made: not TLS, so Autobahn's
            # ``_onOpen`` would only call ``onOpen``.
            self.onOpen()
        else:
            super()._onOpen()
            if not details.is_secure:
                # Plain TCP: nothing in it that ``peer`` does not say.
                self._transport_details = None  # type: ignore[assignment]
        for name, value in _RELEASED_AT_OPEN:
            setattr(self, name, value)

    def onFrameEnd(self) -> bool | None:
        result = super().onFrameEnd()
        # The unmasker of the frame just ended (an object and C memory) would
        # otherwise stay until the next frame, which may be hours away.
        if self.current_frame is None:
            self.current_frame_masker = None
        return result

    def onMessageEnd(self) -> None:
        """Deliver the message; fire ``message`` listeners only if there are any.

        Autobahn's version always fires the event, which costs a Deferred,
        a closure and a callback per message even with no listener.
        """
        if self._listeners is not None:
            super().onMessageEnd()
            return
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(payload, self.message_is_binary)
        self.message_data = None


def _as_class_attribute(value: object) -> object:
    """Wrap a function so it stays a plain function when read from instances."""
    return staticmethod(value) if hasattr(type(value), "__get__") else value  # type: ignore[arg-type]


def _option(name: str) -> property:
    def get(factory: LeanServerFactory) -> object:
        return getattr(factory.protocol_class, name)

    def set_(factory: LeanServerFactory, value: object) -> None:
        setattr(factory.protocol_class, name, _as_class_attribute(value))

    return property(get, set_, doc=f"Protocol option ``{name}`` (a class attribute).")


class LeanServerFactory(WebSocketServerFactory):
    """A ``WebSocketServerFactory`` whose protocol options live on a class.

    Autobahn copies every option (``CONFIG_ATTRS``, ~30 of them) from the
    factory into each new connection's ``__dict__`` so that later changes on
    the factory do not affect it.  Here the factory makes one subclass of its
    ``protocol`` (``protocol_class``) and its option attributes read and write
    that class's attributes; connections carry none of them and the copy loop
    is empty.  Setting an option, through ``setProtocolOptions`` or directly,
    applies to open connections too, except ``utf8validateIncoming`` (read
    when a connection opens).  Autobahn's per-connection debug line that
    lists the options now lists none: they are the factory's.
    """

    protocol: type[LeanServerProtocol] = LeanServerProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        base = type(self).protocol
        #: The per-factory protocol class carrying the options.
        self.protocol_class: type[LeanServerProtocol] = type(
            base.__name__,
            (base,),
            {"__slots__": (), "CONFIG_ATTRS": (), "__module__": base.__module__},
        )
        self.protocol = self.protocol_class
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        # Autobahn's timeouts (handshake, close, auto-ping), on the factory's
        # reactor rather than txaio's global one: a test's Clock drives them.
        self._batched_timer = BucketTimer(self.reactor)


for _name in WebSocketServerProtocol.CONFIG_ATTRS:
    setattr(LeanServerFactory, _name, _option(_name))
del _name
