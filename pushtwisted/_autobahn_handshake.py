"""The opening handshake of a plain, well-formed request, without Autobahn's detours.

Autobahn's ``WebSocketServerProtocol.processHandshake`` (tested:
``TESTED_AUTOBAHN``) was about a third of the CPU of a short-lived push
connection (connect, hello, close; in process, memory backend).  Besides
the header parsing every handshake needs, it runs the request URI through
``urlparse`` and ``parse_qs``, wraps ``onConnect``'s answer in a Deferred
(through txaio) whose callback is ``succeedHandshake``, and makes a dozen
debug-log calls that log nothing.

``fast_handshake`` completes the common request itself: ``GET <path>
HTTP/1.1`` with a path that ``urlparse`` returns unchanged (no query,
fragment, ``;`` parameters or ``//`` authority), one Host, ``Upgrade:
websocket``, a ``Connection`` listing ``upgrade``, one valid
``Sec-WebSocket-Key``, ``Sec-WebSocket-Version: 13``, any
``Sec-WebSocket-Protocol`` list and ``Origin`` that Autobahn accepts, no
``Sec-WebSocket-Extensions``, and an ``onConnect`` that answers at once with
``None`` or one of the subprotocols offered.  It checks what Autobahn checks,
with Autobahn's own functions where they decide (``parseHttpHeader``,
``_url_to_origin``, ``_is_same_origin``), sets the same state, writes the
same bytes and calls the same methods in the same order (``sendData``,
``_onOpen``, ``consumeData`` for bytes after the head).

For anything else it returns False before changing anything, and Autobahn's
``processHandshake`` runs as shipped: a request head not complete yet (or a
flash policy request), any request Autobahn would refuse (so every refusal,
its status and its log line stay Autobahn's), a plain GET (``webStatus``),
another HTTP version or WebSocket version, extensions offered (compression),
a trusted ``X-Forwarded-For``, a full server (``maxConnections``), a
coroutine ``onConnect``, and Autobahn's debug logging switched on.  Once
``onConnect`` has been called there is no going back, so its other answers
(``ConnectionDeny``, another exception, a Deferred, a ``(protocol,
headers)`` pair, a subprotocol not offered) and an acceptance that needs
factory ``headers`` or tracked timings take Autobahn's own way from there:
a Deferred, ``succeedHandshake`` as its callback, Autobahn's error answers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from asyncio import iscoroutinefunction
from typing import Any

import txaio
from autobahn.websocket.protocol import (
    WebSocketProtocol,
    _is_same_origin,
    _url_to_origin,
    parseHttpHeader,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure
from txaio.tx import _no_op

__all__ = ["fast_handshake"]

_END_OF_HEAD = b"\r\n\r\n"
#: The request line taken: GET, a path of printable ASCII that ``urlparse``
#: returns unchanged (not ``//``, no ``#``, ``;`` or ``?``), HTTP/1.1.
_REQUEST_LINE = re.compile(r'GET (/(?!/)[!-"$-:<->@-~]*) HTTP/1\.1')
#: Autobahn's key check: 22 characters of base64's alphabet, then ``==``.
#: A repeated header (joined with ", ") never matches.
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_VERSION = 13
_GUID = WebSocketProtocol._WS_MAGIC


def _lists(value: str | None, token: str) -> bool:
    """Return True when the comma-separated header ``value`` names ``token`` (any case)."""
    if value is None:
        return False
    value = value.lower()  # the same as each part's: no Latin-1 letter lowers to "," or a space
    return value == token or any(part.strip() == token for part in value.split(","))


def _origin_allowed(protocol: Any, origin: str) -> bool:
    """Return True when Autobahn lets ``origin`` through (``allowNullOrigin``, the patterns)."""
    try:
        parts = _url_to_origin(origin)  # type: ignore[no-untyped-call]
    except Exception:  # Autobahn answers 400 (or raises): its own path does it.
        return False
    factory = protocol.factory
    if parts == "null" and factory.allowNullOrigin:
        return True
    allowed: bool = _is_same_origin(  # type: ignore[no-untyped-call]
        parts,
        "https" if factory.isSecure else "http",
        factory.externalPort or factory.port,
        protocol.allowedOriginsPatterns,
    )
    return allowed


def fast_handshake(protocol: Any) -> bool:
    """Complete the opening handshake of a plain request; False when Autobahn must.

    ``protocol`` is a ``WebSocketServerProtocol`` whose ``data`` holds the
    bytes received so far, as when Autobahn calls ``processHandshake``.  On
    False nothing about it has changed.
    """
    data = protocol.data
    end = data.find(_END_OF_HEAD)
    if end < 0 or protocol.log.debug is not _no_op:
        return False
    head = data[: end + 4]
    status, headers, counts = parseHttpHeader(head)
    request_line = _REQUEST_LINE.fullmatch(status)
    key = headers.get("sec-websocket-key")
    if (
        request_line is None
        or counts.get("host") != 1
        or headers.get("sec-websocket-version") != "13"
        or key is None
        or _KEY.fullmatch(key) is None
        or not _lists(headers.get("upgrade"), "websocket")
        or not _lists(headers.get("connection"), "upgrade")
        or "sec-websocket-extensions" in headers
        or (protocol.trustXForwardedFor and "x-forwarded-for" in headers)
        or _VERSION not in protocol.versions
    ):
        return False
    factory = protocol.factory
    host = headers["host"]
    if ":" in host and not host.endswith("]"):
        host, port = host.rsplit(":", 1)
        try:
            number = int(port.strip())
        except ValueError:
            return False
        if factory.externalPort and number != factory.externalPort:
            return False
    offered = headers.get("sec-websocket-protocol")
    protocols = [] if offered is None else [name.strip() for name in offered.split(",")]
    if len(set(protocols)) != len(protocols):
        return False
    origin = headers.get("origin")
    if origin is None:
        origin = ""
    elif counts["origin"] > 1 or not _origin_allowed(protocol, origin):
        return False
    if 0 < protocol.maxConnections < factory.countConnections:
        return False
    on_connect = protocol.onConnect
    if iscoroutinefunction(on_connect):  # txaio runs it through ensureDeferred
        return False

    # Accepted: Autobahn's state, then onConnect with Autobahn's request.
    path = request_line.group(1)
    params: dict[str, list[str]] = {}
    extensions: list[Any] = []
    protocol.http_request_data = head
    protocol.http_status_line = status
    protocol.http_headers = headers
    protocol.http_request_uri = path
    protocol.http_request_path = path
    protocol.http_request_params = params
    protocol.http_request_host = host
    protocol.websocket_version = _VERSION
    protocol.websocket_protocols = protocols
    protocol.websocket_origin = origin
    protocol.websocket_extensions = extensions
    protocol.data = data[end + 4 :]
    protocol._wskey = key
    request = ConnectionRequest(  # type: ignore[no-untyped-call]
        protocol.peer, headers, host, path, params, _VERSION, origin, protocols, extensions
    )
    try:
        answer = on_connect(request)
    except BaseException:
        outcome: Deferred[Any] = fail()  # the exception as a Failure
    else:
        if (
            (answer is None or (type(answer) is str and answer in protocols))
            and not factory.headers
            and not protocol.trackedTimings
        ):
            _open(protocol, answer, key)
            return True
        # maybeDeferred's own reading of the answer: a Deferred as it is, a
        # coroutine or a Failure wrapped, anything else as a result.
        outcome = maybeDeferred(lambda: answer)
    outcome.addCallbacks(protocol.succeedHandshake, _refused, errbackArgs=(protocol,))
    return True


def _refused(failure: Failure, protocol: Any) -> None:
    """Answer an ``onConnect`` that raised, as Autobahn does: its status or 500."""
    error = failure.value
    if isinstance(error, ConnectionDeny):
        protocol.failHandshake(error.reason, error.code)
        return
    protocol.log.warn("Unexpected exception in onConnect ['{err.value}']", err=failure)
    protocol.log.warn("{tb}", tb=txaio.failure_format_traceback(failure))  # type: ignore[attr-defined]
    protocol.failHandshake(f"Internal server error: {error}", ConnectionDeny.INTERNAL_SERVER_ERROR)


def _open(protocol: Any, subprotocol: str | None, key: str) -> None:
    """Send the 101 and open the connection: ``succeedHandshake`` with nothing to negotiate.

    Autobahn runs ``succeedHandshake`` as a Deferred's callback, so an
    exception in it (in ``onOpen``, or in a message that came with the head)
    ends as an unhandled error in a Deferred, logged when the Deferred is
    collected; here too (at once, where Autobahn's waits for the cycle
    collector).
    """
    try:
        factory = protocol.factory
        protocol.websocket_protocol_in_use = subprotocol
        protocol.websocket_extensions_in_use = []
        response = "HTTP/1.1 101 Switching Protocols\r\n"
        if factory.server:
            response += f"Server: {factory.server}\r\n"
        response += "Upgrade: WebSocket\r\nConnection: Upgrade\r\n"
        if subprotocol is not None:
            response += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        response += f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        protocol.sendData(response.encode())
        protocol.http_response_data = response
        protocol.state = WebSocketProtocol.STATE_OPEN
        timer = protocol.openHandshakeTimeoutCall
        if timer is not None:
            timer.cancel()
            protocol.openHandshakeTimeoutCall = None
        protocol.inside_message = False
        protocol.current_frame = None
        interval = protocol.autoPingInterval
        if interval:
            protocol.autoPingPendingCall = factory._batched_timer.call_later(
                interval, protocol._sendAutoPing
            )
        protocol._onOpen()
        txaio.resolve(protocol.is_open, None)  # type: ignore[attr-defined]
        if len(protocol.data) > 0:
            protocol.consumeData()
    except BaseException:
        fail()  # a Deferred failed with the exception, dropped at once
