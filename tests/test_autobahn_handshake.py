"""Tests for ``pushtwisted._autobahn_handshake``: the fast opening handshake is Autobahn's.

Differential: the same bytes go to two connections, one with the fast path
and one with it off (``fastHandshake = False``, Autobahn's own
``processHandshake``); the bytes written, every slot of the protocol, the
log lines and the metrics must come out the same.  Real Autobahn protocol
objects on ``StringTransport``; timers on a ``Clock``.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import CodeType
from typing import Any

import txaio
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted._autobahn_handshake import fast_handshake
from pushtwisted._bucket_timer import _BucketCall
from pushtwisted.config import Config
from pushtwisted.testing import RecordingMetrics, make_node
from pushtwisted.websocket import PushServerFactory, PushServerProtocol
from tests.test_websocket import _PEER, _Transport, client_frame, ws_config

_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_FAST = fast_handshake.__code__
_AUTOBAHN = WebSocketServerProtocol.processHandshake.__code__
_UNSET = object()


def _head(*lines: str, request_line: str = "GET / HTTP/1.1") -> bytes:
    """Return a request head: the request line, ``lines``, the blank line."""
    return ("\r\n".join([request_line, *lines]) + "\r\n\r\n").encode("latin-1")


#: The plain request of a push client: every header the fast path needs.
_PLAIN = (
    "Host: localhost:8080",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {_KEY}",
    "Sec-WebSocket-Version: 13",
)


def _plain(*extra: str, without: str = "", request_line: str = "GET / HTTP/1.1") -> bytes:
    """Return the plain request with ``extra`` lines, minus the header named ``without``."""
    kept = [line for line in _PLAIN if not (without and line.startswith(without + ":"))]
    return _head(*kept, *extra, request_line=request_line)


def whose_code(names: Mapping[CodeType, str]) -> str:
    """Return the name in ``names`` of the innermost of their codes on the stack, or "none"."""
    frame = sys._getframe(1)
    while frame is not None:
        name = names.get(frame.f_code)
        if name is not None:
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return "none"


def _whose_handshake() -> str:
    """Return "fast" or "autobahn": whose handshake code is on the stack."""
    return whose_code({_FAST: "fast", _AUTOBAHN: "autobahn"})


def _slots(protocol: PushServerProtocol) -> dict[str, Any]:
    """Return the protocol's slots (lists and dicts copied); unset ones are ``_UNSET``."""
    names = {n for cls in type(protocol).__mro__ for n in getattr(cls, "__slots__", ())}
    values = {name: getattr(protocol, name, _UNSET) for name in sorted(names)}
    return {k: type(v)(v) if type(v) in (list, dict) else v for k, v in values.items()}


class _Watched(PushServerProtocol):
    """``PushServerProtocol`` noting whose handshake called it, with test switches."""

    __slots__ = ()
    factory: _WatchedFactory
    #: Maps what ``PushServerProtocol.onConnect`` answers to this one's answer.
    answer: Callable[[str | None], Any] = staticmethod(lambda result: result)
    #: ``onOpen`` raises.
    fail_open = False

    def __init__(self) -> None:
        super().__init__()
        # Autobahn resolves it when the connection opens; LeanServerProtocol
        # has a stand-in that ignores it, this one shows it.
        self.is_open = Deferred()

    def onConnect(self, request: ConnectionRequest) -> Any:
        self.factory.paths.append(_whose_handshake())
        self.factory.requests.append((request.__json__(), _slots(self)))
        return self.answer(super().onConnect(request))

    def onOpen(self) -> None:
        if self.fail_open:
            raise RuntimeError("onOpen failed")
        super().onOpen()

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        self.factory.paths.append(_whose_handshake())
        super().failHandshake(reason, code, responseHeaders)

    def sendServerStatus(self, redirectUrl: str | None = None, redirectAfter: int = 0) -> None:
        self.factory.paths.append(_whose_handshake())
        super().sendServerStatus(redirectUrl, redirectAfter)


class _WatchedFactory(PushServerFactory):
    protocol = _Watched

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paths: list[str] = []
        #: What each onConnect was given, and the protocol's slots then.
        self.requests: list[tuple[dict[str, Any], dict[str, Any]]] = []


class _AsyncWatched(_Watched):
    """A coroutine ``onConnect`` (txaio runs it through ``ensureDeferred``)."""

    __slots__ = ()

    async def onConnect(self, request: ConnectionRequest) -> Any:  # type: ignore[override]
        return _Watched.onConnect(self, request)


class _AsyncFactory(_WatchedFactory):
    protocol = _AsyncWatched


_Setup = Callable[[_WatchedFactory], object]


def _nothing(factory: _WatchedFactory) -> None:
    """Leave the factory as it is."""


class _Side:
    """One connection, with the fast path on or off, and what it logged."""

    protocol: _Watched
    transport: StringTransport

    def __init__(
        self,
        fast: bool,
        config: Config,
        setup: _Setup,
        kind: type[_WatchedFactory],
        transport: StringTransport | None = None,
    ):
        self.node = make_node(config=config)
        self.factory = kind(self.node)
        self.factory.protocol_class.fastHandshake = fast
        # Set one by one: setProtocolOptions() would also reset allowNullOrigin.
        self.factory.openHandshakeTimeout = 5
        self.factory.closeHandshakeTimeout = 1
        setup(self.factory)
        self.events: list[LogEvent] = []
        with self.logging():
            self.connect(_Transport(peerAddress=_PEER) if transport is None else transport)

    def connect(self, transport: StringTransport) -> None:
        """Make the connection: a new protocol on ``transport``."""
        self.protocol = self.factory.buildProtocol(transport.getPeer())
        self.transport = transport
        self.protocol.makeConnection(transport)

    @contextmanager
    def logging(self) -> Iterator[None]:
        """Keep the log events of the ``with`` block."""
        globalLogPublisher.addObserver(self.events.append)
        try:
            yield
        finally:
            globalLogPublisher.removeObserver(self.events.append)

    def receive(self, chunks: list[bytes], collect: bool) -> None:
        """Hand each chunk to ``dataReceived``; collect garbage after if ``collect``.

        A Deferred that failed in a callback sits in a reference cycle (its
        failure's frames): its "Unhandled error" is logged by the collector.
        """
        with self.logging():
            for chunk in chunks:
                self.protocol.dataReceived(chunk)
            if collect:
                gc.collect()

    def outcome(self) -> dict[str, Any]:
        """Return everything observable about the connection, comparable across sides."""
        p = self.protocol
        metrics = self.node.metrics
        assert isinstance(metrics, RecordingMetrics)
        return {
            "written": self.transport.value(),
            "disconnecting": self.transport.disconnecting,
            "state": self._plain(_slots(p)),
            "requests": self._plain(self.factory.requests),
            "dict": vars(p),
            "session": type(p.session).__name__,
            "connections": self.factory.countConnections,
            "metrics": metrics.events,
            "log": [self._line(e) for e in self.events],
            "timers": sorted(c.getTime() for c in self.node.clock.getDelayedCalls()),
        }

    def _plain(self, value: Any) -> Any:
        if value is _UNSET or value is None or isinstance(value, str | bytes | int | float):
            return value
        if value is self.factory:
            return "<factory>"
        if value is self.transport:
            return "<transport>"
        if isinstance(value, _BucketCall):
            return ("call", value._due, value._func.__name__, value._timer is not None)
        if isinstance(value, list | tuple):
            return (type(value).__name__, [self._plain(v) for v in value])
        if isinstance(value, Mapping):
            return (type(value).__name__, {k: self._plain(v) for k, v in value.items()})
        if isinstance(value, Deferred):
            return ("Deferred", value.called, self._plain(getattr(value, "result", _UNSET)))
        if type(value).__name__ == "FrameHeader":
            return ("FrameHeader", vars(value))
        if isinstance(value, TransportDetails):  # its TLS channel id differs per connection
            fields = ("channel_type", "channel_framing", "peer", "is_server", "is_secure")
            details = {name: getattr(value, name) for name in fields}
            details["channel_id"] = sorted(value.channel_id)
            return ("TransportDetails", details, value.peer_cert)
        if type(value).__name__ == "Timings":
            return ("Timings", sorted(value._timings))  # what was tracked, not when
        return type(value).__name__

    @staticmethod
    def _line(event: LogEvent) -> tuple[str, str]:
        text = formatEvent(event)
        if event.get("log_format") == "{tb}":
            text = text.strip().splitlines()[-1]  # a traceback: its frames differ
        failure = event.get("log_failure")
        if failure is not None:
            text += f" {failure.type.__name__}: {failure.value}"
        return (event["log_level"].name, re.sub(r"0x[0-9a-f]+", "0x", text))


def _pair(
    chunks: list[bytes],
    config: Config,
    setup: _Setup,
    kind: type[_WatchedFactory],
    collect: bool = False,
) -> tuple[_Side, _Side]:
    """Feed ``chunks`` to a connection with the fast path and to one without; return both."""
    fast = _Side(True, config, setup, kind)
    fast.receive(chunks, collect)
    autobahn = _Side(False, config, setup, kind)
    autobahn.receive(chunks, collect)
    return fast, autobahn


class _Case(SynchronousTestCase):
    def assertSame(
        self,
        chunks: list[bytes],
        config: Config | None = None,
        setup: _Setup = _nothing,
        kind: type[_WatchedFactory] = _WatchedFactory,
        *,
        path: str,
        collect: bool = False,
    ) -> _Side:
        """Assert both sides come out the same, and whose code the fast side ran; return it.

        ``path`` is "fast", "autobahn", or "none" (no hook reached: the head
        is not complete).
        """
        fast, autobahn = _pair(chunks, config or ws_config(), setup, kind, collect)
        self.assertEqual(fast.outcome(), autobahn.outcome())
        self.assertLessEqual(set(autobahn.factory.paths), {"autobahn"})
        self.assertEqual(len(fast.factory.paths), len(autobahn.factory.paths))
        self.assertEqual(set(fast.factory.paths) or {"none"}, {path}, fast.transport.value())
        return fast


class AcceptedTests(_Case):
    """Requests the fast path completes: Autobahn's bytes and state."""

    def test_plain(self) -> None:
        """When a plain request comes, the 101 and the open connection are Autobahn's."""
        fast = self.assertSame([_plain()], path="fast")
        self.assertTrue(fast.transport.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertEqual(fast.protocol.state, fast.protocol.STATE_OPEN)
        self.assertEqual(type(fast.protocol.session).__name__, "Session")

    def test_variants(self) -> None:
        """When the request varies within what the fast path takes, the result is Autobahn's."""
        for head in (
            _plain("Sec-WebSocket-Protocol: push-notification"),
            _plain("Sec-WebSocket-Protocol: chat, push-notification"),
            _plain("Sec-WebSocket-Protocol: chat"),
            _plain("Sec-WebSocket-Protocol: ,chat"),
            _plain("Origin: https://app.example.com"),
            _plain("Origin: null"),
            _plain("Origin: file:///x"),
            _plain("X-Forwarded-For: 10.0.0.1", "User-Agent: test/1.0"),
            _plain(request_line="GET /push/a%20b!$~[x]\\'=@ HTTP/1.1"),
            _plain(request_line="GET / HTTP/1.1 "),
            _head(*_PLAIN[::-1]),
            _head(*(line.upper() for line in _PLAIN[:4]), "SEC-WEBSOCKET-VERSION: 13"),
            _plain("Upgrade: h2c", "Connection: keep-alive"),
            _plain("Connection: keep-alive, Upgrade", without="Connection"),
            _plain("Host: [::1]", without="Host"),
            _plain("Host: [::1]:443", without="Host"),
            _plain("Host:", without="Host"),
            _plain("Host: a:+8_0 ", without="Host"),
            _plain("Host:  padded  ", "X-Long-Line: \x85 \xa0 latin-1", without="Host"),
        ):
            with self.subTest(head=head):
                self.assertSame([head], path="fast")

    def test_frames_after_head(self) -> None:
        """When frames come in the read of the head, they are processed after the open."""
        frames = client_frame(b"ping!", opcode=9) + client_frame(b"{}")
        fast = self.assertSame([_plain() + frames], path="fast")
        self.assertIn(b"\x8a\x05ping!", fast.transport.value())

    def test_split_reads(self) -> None:
        """When the request comes over several reads, the result is the one-read result."""
        head = _plain("Sec-WebSocket-Protocol: push-notification")
        for cut in (1, 20, len(head) - 3, len(head) - 1):
            with self.subTest(cut=cut):
                self.assertSame([head[:cut], head[cut:]], path="fast")

    def test_timers(self) -> None:
        """When auto-ping is on, its timer is Autobahn's; the handshake timer is cancelled."""
        config = ws_config(auto_ping_interval=30.0, auto_ping_timeout=10.0)
        fast = self.assertSame([_plain()], config, path="fast")
        self.assertIsNone(fast.protocol.openHandshakeTimeoutCall)
        self.assertIsNotNone(fast.protocol.autoPingPendingCall)

    def test_options_within_reach(self) -> None:
        """When options the checks read are set but pass, the fast path still answers."""
        setups: list[Callable[[_WatchedFactory], object]] = [
            lambda f: setattr(f, "externalPort", 8080),
            lambda f: setattr(f, "trustXForwardedFor", 1),
            lambda f: f.setProtocolOptions(allowedOrigins=["https://*.example.com:443"]),
            lambda f: setattr(f, "maxConnections", 1),
            lambda f: setattr(f, "server", None),
        ]
        for setup in setups:
            with self.subTest(setup=setup):
                self.assertSame(
                    [_plain("Origin: https://app.example.com")], setup=setup, path="fast"
                )


class OnConnectTests(_Case):
    """What ``onConnect`` answers; past it the fast path goes Autobahn's way."""

    def answering(self, answer: Callable[[str | None], Any]) -> Callable[[_WatchedFactory], None]:
        def setup(factory: _WatchedFactory) -> None:
            factory.protocol_class.answer = staticmethod(answer)  # type: ignore[method-assign]

        return setup

    def test_origin_refused(self) -> None:
        """When the Origin is not allowed, the 403 and the log lines are Autobahn's."""
        config = ws_config(origins=["https://app.example.com"])
        fast = self.assertSame([_plain("Origin: https://evil.example.com")], config, path="fast")
        self.assertTrue(fast.transport.value().startswith(b"HTTP/1.1 403 Origin not allowed"))
        self.assertTrue(fast.transport.disconnecting)

    def test_other_answers(self) -> None:
        """When onConnect answers a Deferred, a pair, or raises, Autobahn's way follows."""
        deny = ConnectionDeny(401, "go away")  # type: ignore[no-untyped-call]

        def raise_(error: BaseException) -> Callable[[str | None], Any]:
            def answer(result: str | None) -> Any:
                raise error

            return answer

        for answer in (
            succeed,
            lambda result: (result, {"X-Extra": ["a", "b"]}),
            raise_(deny),
            raise_(ValueError("broken")),
        ):
            with self.subTest(answer=answer):
                head = _plain("Sec-WebSocket-Protocol: push-notification")
                self.assertSame(
                    [head + client_frame(b"{}")], setup=self.answering(answer), path="fast"
                )

    def test_subprotocol_not_offered(self) -> None:
        """When onConnect accepts a subprotocol not offered, Autobahn's error is logged."""
        setup = self.answering(lambda _: "chat")
        self.assertSame([_plain()], setup=setup, path="fast", collect=True)
        [fast, autobahn] = self.flushLoggedErrors(Exception)
        self.assertEqual(str(fast.value), str(autobahn.value))

    def test_on_open_fails(self) -> None:
        """When onOpen raises, the error ends in a Deferred, as in Autobahn's path."""
        setup = lambda f: setattr(f.protocol_class, "fail_open", True)  # noqa: E731
        self.assertSame([_plain()], setup=setup, path="fast", collect=True)
        [fast, autobahn] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(fast.value), str(autobahn.value))

    def test_factory_headers(self) -> None:
        """When the factory adds response headers, Autobahn writes the 101."""
        setup = lambda f: setattr(f, "headers", {"X-Extra": "1"})  # noqa: E731
        fast = self.assertSame([_plain()], setup=setup, path="fast")
        self.assertIn(b"\r\nX-Extra: 1\r\n", fast.transport.value())

    def test_tracked_timings(self) -> None:
        """When timings are tracked, Autobahn's succeedHandshake tracks them."""
        sides = [_Side(fast, ws_config(), _nothing, _WatchedFactory) for fast in (True, False)]
        for side in sides:
            # The option alone changes nothing (Autobahn compares it with itself).
            side.protocol.trackTimings = False
            side.protocol.setTrackTimings(True)
            side.receive([_plain()], collect=False)
        fast, autobahn = sides
        self.assertEqual(fast.outcome(), autobahn.outcome())
        self.assertEqual(fast.outcome()["state"][1]["trackedTimings"], ("Timings", ["onOpen"]))
        self.assertEqual(fast.factory.paths, ["fast"])


def _second_connection(factory: _WatchedFactory) -> None:
    """Open one more connection on ``factory`` and let it allow only one."""
    factory.buildProtocol(_PEER).makeConnection(_Transport(peerAddress=_PEER))
    factory.maxConnections = 1


#: Requests the fast path leaves to Autobahn, each with the factory setup it needs.
_DECLINED: dict[str, tuple[bytes, _Setup]] = {
    "POST": (_plain(request_line="POST / HTTP/1.1"), _nothing),
    "lower-case method": (_plain(request_line="get / HTTP/1.1"), _nothing),
    "HTTP/1.0": (_plain(request_line="GET / HTTP/1.0"), _nothing),
    "HTTP/2": (_plain(request_line="GET / HTTP/2"), _nothing),
    "query": (_plain(request_line="GET /?a=1&a=2 HTTP/1.1"), _nothing),
    "fragment": (_plain(request_line="GET /#top HTTP/1.1"), _nothing),
    "path parameters": (_plain(request_line="GET /a;b HTTP/1.1"), _nothing),
    "authority": (_plain(request_line="GET //host/ HTTP/1.1"), _nothing),
    "absolute URI": (_plain(request_line="GET http://localhost/ HTTP/1.1"), _nothing),
    "two spaces": (_plain(request_line="GET  / HTTP/1.1"), _nothing),
    "non-ASCII path": (_plain(request_line="GET /\xe4 HTTP/1.1"), _nothing),
    "no Host": (_plain(without="Host"), _nothing),
    "two Hosts": (_plain("Host: other"), _nothing),
    "bad Host port": (_plain("Host: localhost:http", without="Host"), _nothing),
    "other externalPort": (_plain(), lambda f: setattr(f, "externalPort", 9000)),
    "no Upgrade (a plain GET)": (_head("Host: localhost:8080"), _nothing),
    "Upgrade without websocket": (_plain("Upgrade: h2c", without="Upgrade"), _nothing),
    "no Connection": (_plain(without="Connection"), _nothing),
    "Connection without upgrade": (_plain("Connection: close", without="Connection"), _nothing),
    "version 8": (_plain("Sec-WebSocket-Version: 8", without="Sec-WebSocket-Version"), _nothing),
    "version 013": (
        _plain("Sec-WebSocket-Version: 013", without="Sec-WebSocket-Version"),
        _nothing,
    ),
    "no version": (_plain(without="Sec-WebSocket-Version"), _nothing),
    "two versions": (_plain("Sec-WebSocket-Version: 13"), _nothing),
    "13 not served": (_plain(), lambda f: setattr(f, "versions", [8])),
    "no key": (_plain(without="Sec-WebSocket-Key"), _nothing),
    "short key": (_plain("Sec-WebSocket-Key: c2hvcnQ=", without="Sec-WebSocket-Key"), _nothing),
    "key without ==": (
        _plain(f"Sec-WebSocket-Key: {_KEY[:-1]}x", without="Sec-WebSocket-Key"),
        _nothing,
    ),
    "key not base64": (
        _plain(f"Sec-WebSocket-Key: !{_KEY[1:]}", without="Sec-WebSocket-Key"),
        _nothing,
    ),
    "two keys": (_plain(f"Sec-WebSocket-Key: {_KEY}"), _nothing),
    "extensions": (_plain("Sec-WebSocket-Extensions: permessage-deflate"), _nothing),
    "repeated subprotocol": (_plain("Sec-WebSocket-Protocol: chat, chat"), _nothing),
    "two Origins": (_plain("Origin: http://a.test", "Origin: http://b.test"), _nothing),
    "Origin without host": (_plain("Origin: nohost"), _nothing),
    "Origin not parsed": (_plain("Origin: http://[::1"), _nothing),
    "Origin port out of range": (_plain("Origin: http://h:99999"), _nothing),
    "null Origin refused": (
        _plain("Origin: null"),
        lambda f: setattr(f, "allowNullOrigin", False),
    ),
    "Origin not in allowedOrigins": (
        _plain("Origin: https://evil.test"),
        lambda f: f.setProtocolOptions(allowedOrigins=["https://*.example.com"]),
    ),
    "trusted X-Forwarded-For": (
        _plain("X-Forwarded-For: 10.0.0.1, 10.0.0.2"),
        lambda f: setattr(f, "trustXForwardedFor", 1),
    ),
    "connections full": (_plain(), _second_connection),
}


class DeclinedTests(_Case):
    """Requests and options the fast path leaves to Autobahn, untouched."""

    def assertDeclined(
        self, head: bytes, setup: _Setup = _nothing, kind: type[_WatchedFactory] = _WatchedFactory
    ) -> None:
        """Assert ``fast_handshake`` returns False for ``head`` and changes nothing."""
        side = _Side(True, ws_config(), setup, kind)
        side.protocol.data = head
        before = side.outcome()
        with side.logging():
            self.assertFalse(fast_handshake(side.protocol))
        self.assertEqual(side.outcome(), before)

    def test_declined(self) -> None:
        """When a request or option is not the fast path's, Autobahn answers it all."""
        for name, (head, setup) in _DECLINED.items():
            with self.subTest(name):
                self.assertDeclined(head, setup)
                self.assertSame([head + client_frame(b"{}")], setup=setup, path="autobahn")

    def test_head_not_complete(self) -> None:
        """When the head has not all come, Autobahn waits for it (or serves flash policy)."""
        self.assertDeclined(_plain()[:-2])
        self.assertSame([_plain()[:-2]], path="none")
        policy = b"<policy-file-request/>\x00"
        self.assertDeclined(policy, lambda f: setattr(f, "serveFlashSocketPolicy", True))
        self.assertSame(
            [policy], setup=lambda f: setattr(f, "serveFlashSocketPolicy", True), path="none"
        )

    def test_coroutine_on_connect(self) -> None:
        """When onConnect is a coroutine function, Autobahn runs the handshake."""
        self.assertDeclined(_plain(), kind=_AsyncFactory)
        self.assertSame([_plain()], kind=_AsyncFactory, path="autobahn")

    def test_debug_logging(self) -> None:
        """When Autobahn's debug logging is on, Autobahn's handshake logs its lines."""
        logger = _Watched.log  # Autobahn's, shared by every protocol class
        logger.set_log_level("debug")
        self.addCleanup(logger.set_log_level, txaio.get_global_log_level(), False)
        self.assertDeclined(_plain())
        fast = self.assertSame([_plain()], path="autobahn")
        self.assertTrue([e for e in fast.events if e["log_level"].name == "debug"])

    def test_switched_off(self) -> None:
        """When ``fastHandshake`` is False, every handshake is Autobahn's."""
        side = _Side(False, ws_config(), _nothing, _WatchedFactory)
        side.receive([_plain()], collect=False)
        self.assertEqual(side.factory.paths, ["autobahn"])


#: The handshake's headers and values the fast path takes.
_GOOD: dict[str, list[str]] = {
    "Host": ["localhost", "localhost:8080", "[::1]:80", "h:+8_0", ""],
    "Upgrade": ["websocket", "WebSocket", "h2c, websocket"],
    "Connection": ["Upgrade", "keep-alive, upgrade"],
    "Sec-WebSocket-Key": [_KEY, "A" * 22 + "=="],
    "Sec-WebSocket-Version": ["13"],
}
#: Wrong values for them.
_BAD: dict[str, list[str]] = {
    "Host": ["localhost:x", "a:b:1", "localhost:9000"],
    "Upgrade": ["h2c", "websockets"],
    "Connection": ["close", "upgradex"],
    "Sec-WebSocket-Key": ["c2hvcnQ=", _KEY[:-1] + "x", "!" + _KEY[1:], _KEY + "A"],
    "Sec-WebSocket-Version": ["8", "013", "x", "", "13, 13"],
}
#: Headers a request may have, and their values (taken or not).
_OPTIONAL: dict[str, list[str]] = {
    "Sec-WebSocket-Protocol": ["push-notification", "chat, push-notification", "chat, chat", ""],
    "Origin": [
        "http://localhost",
        "https://app.example.com",
        "HTTPS://APP.EXAMPLE.COM:443",
        "https://evil.example.com",
        "null",
        "file:///x",
        "http://[::1",
        "nohost",
        "http://h:99999",
    ],
    "User-Agent": ["test/1.0"],
    "X-Forwarded-For": ["10.0.0.1, 10.0.0.2"],
    "Sec-WebSocket-Extensions": ["permessage-deflate"],
}
#: Changes to the request line.
_LINE_CHANGES = [
    ("method", "POST"),
    ("method", "get"),
    ("path", "/?x=1"),
    ("path", "/#f"),
    ("path", "/a;p"),
    ("path", "//h/"),
    ("path", "/\xe4"),
    ("version", "HTTP/1.0"),
    ("gap", "  "),
    ("gap", "\t"),
]
#: Characters of odd values: separators, Latin-1 spaces and line breaks, a colon.
_ODD = st.text(alphabet=" ,:;=aZ9\t\x0b\x0c\x1c\x85\xa0\xe4\n", max_size=12)
_SETUPS: list[_Setup] = [
    _nothing,
    _nothing,
    lambda f: setattr(f, "externalPort", 8080),
    lambda f: setattr(f, "trustXForwardedFor", 1),
    lambda f: setattr(f, "allowNullOrigin", False),
    lambda f: f.setProtocolOptions(allowedOrigins=["https://*.example.com:443"]),
]


@st.composite
def _requests(draw: st.DrawFn) -> tuple[list[bytes], list[str], _Setup]:
    """Draw a request (split into reads), the allowed origins and a factory setup.

    A request the fast path takes, then up to three changes: to the request
    line, or a handshake header dropped, repeated, wrong or odd.
    """
    line = {"method": "GET", "path": "/", "version": "HTTP/1.1", "gap": " "}
    headers = [[name, draw(st.sampled_from(values))] for name, values in _GOOD.items()]
    for name, values in _OPTIONAL.items():
        if draw(st.integers(0, 3)) == 0:
            headers.append([name, draw(st.sampled_from(values))])
    changes = st.sampled_from(["line", "drop", "repeat", "bad", "odd", "extra"])
    for change in draw(st.lists(changes, max_size=3)):
        index = draw(st.integers(0, len(_GOOD) - 1))
        name = list(_GOOD)[index]
        if change == "line":
            part, value = draw(st.sampled_from(_LINE_CHANGES))
            line[part] = value
        elif change == "drop":
            headers[index][0] = "X-Dropped"
        elif change == "repeat":
            headers.append([name, draw(st.sampled_from(_GOOD[name]))])
        elif change == "bad":
            headers[index][1] = draw(st.sampled_from(_BAD[name]))
        else:
            headers.append([name if change == "odd" else "X-Odd", draw(_ODD)])
    lines = []
    for name, value in headers:
        case = draw(st.sampled_from([str, str.lower, str.upper]))
        pad = draw(st.sampled_from(["", " ", "  ", " \t"]))
        lines.append(f"{case(name)}:{pad}{value}{pad[:1]}")
    gap = line["gap"]
    request_line = f"{line['method']}{gap}{line['path']}{gap}{line['version']}"
    head = _head(*draw(st.permutations(lines)), request_line=request_line)
    data = head + draw(st.sampled_from([b"", client_frame(b"{}"), client_frame(b"hey", 9)]))
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=3)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    origins = draw(st.sampled_from([[], ["https://app.example.com"]]))
    return chunks, origins, draw(st.sampled_from(_SETUPS))


class GeneratedTests(_Case):
    """Generated requests: the fast path's result is always Autobahn's."""

    @settings(max_examples=300, deadline=None)
    @given(_requests())
    def test_same_as_autobahn(self, request: tuple[list[bytes], list[str], _Setup]) -> None:
        """Whatever the headers, their case, order and repeats, the options and the
        reads, both connections write the same bytes and end in the same state."""
        chunks, origins, setup = request
        fast, autobahn = _pair(chunks, ws_config(origins=origins), setup, _WatchedFactory)
        self.assertEqual(fast.outcome(), autobahn.outcome())
        self.assertLessEqual(set(autobahn.factory.paths), {"autobahn"})
        event(f"handshake: {'/'.join(sorted(set(fast.factory.paths))) or 'none'}")
