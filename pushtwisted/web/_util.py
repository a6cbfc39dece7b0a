"""JSON responses, the one JSON error shape, and the async render edge.

Every error answer of pushtwisted's HTTP listeners has one shape::

    {"code": <status>, "errno": <n>, "error": "<HTTP reason>", "message": "<short text>"}

``message`` is a short public text chosen by the code that rejects the
request; the detail of an exception (``str(exc)``) goes to the log, never to
the peer, and neither does a traceback.

Resources that answer asynchronously return ``render_async(request, coro)``
from ``render``: ``coro`` computes a ``JSONResponse`` (or raises a
``PushError``), and the response is written only if the peer is still there.

``JSONRoot`` is the root resource of a listener: its registered children
answer as usual, and any other path is a JSON 404 of that shape.

``raw_json_response`` is for the one answer written before ``twisted.web``
has a request to render: the early 413 of ``pushtwisted.web._site``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers as HTTPHeaders
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.eager import resume
from pushtwisted.errors import InvalidToken, PushError, StorageError

__all__ = [
    "RETRY_AFTER_SECONDS",
    "HTTPRequest",
    "JSONNotFound",
    "JSONResponse",
    "JSONRoot",
    "WebError",
    "error_body",
    "error_response",
    "json_bytes",
    "json_response",
    "raw_json_response",
    "reason_phrase",
    "render_async",
    "render_eagerly",
]

#: Seconds a client is told to wait (``Retry-After``) when storage is unavailable.
RETRY_AFTER_SECONDS = 5

_log = Logger(namespace="pushtwisted.web")

Headers = tuple[tuple[bytes, bytes], ...]
_R = TypeVar("_R")


class HTTPRequest(Protocol):
    """The part of ``twisted.web.server.Request`` our resources use, typed.

    Twisted's ``Request`` is untyped; resources annotate ``render``'s
    argument with this protocol so that mypy checks how it is used.
    """

    method: bytes
    uri: bytes
    args: dict[bytes, list[bytes]]
    prepath: list[bytes]
    postpath: list[bytes]
    content: IO[bytes] | None
    finished: int
    requestHeaders: HTTPHeaders

    def getHeader(self, key: bytes) -> bytes | None:
        """Return the last value of request header ``key``, or None."""

    def setHeader(self, name: bytes, value: bytes) -> None:
        """Set response header ``name`` to ``value``."""

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """Set the response status."""

    def write(self, data: bytes) -> None:
        """Write part of the response body."""

    def finish(self) -> None:
        """End the response."""

    def notifyFinish(self) -> Deferred[None]:
        """Fire on finish, errback when the connection is lost first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JSONResponse:
    """A complete JSON answer: status code, JSON-serialisable body, extra headers.

    :ivar code: the HTTP status code.
    :ivar body: the value serialised as the response body (``{}`` by default).
    :ivar headers: extra response headers as ``(name, value)`` byte pairs.
    """

    code: int
    body: object = field(default_factory=dict)
    headers: Headers = ()


class WebError(PushError):
    """A request rejection that carries its own status, errno and public message.

    :param http_status: the HTTP status code of the answer.
    :param errno: the pushtwisted error number put in the body.
    :param message: the short public text put in the body.
    :param headers: extra response headers (``Retry-After``, ``Allow``...).
    """

    def __init__(
        self,
        http_status: int,
        errno: int,
        message: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.errno = errno
        self.message = message
        self.headers: Headers = tuple(headers)


def reason_phrase(code: int) -> str:
    """Return the standard HTTP reason phrase of ``code`` (``"Unknown"`` if none)."""
    return RESPONSES.get(code, b"Unknown").decode("ascii")


def error_body(code: int, errno: int, message: str) -> dict[str, object]:
    """Return the one JSON error shape as a dict."""
    return {"code": code, "errno": errno, "error": reason_phrase(code), "message": message}


def error_response(error: BaseException) -> JSONResponse:
    """Map an exception to its JSON error answer.

    ``WebError`` answers as it says; ``InvalidToken`` is 404 errno 102;
    every ``StorageError`` is 503 errno 999 with ``Retry-After``; any other
    ``PushError`` uses its ``http_status``/``errno``; anything else is 500
    errno 999.  The exception text is never used.
    """
    if isinstance(error, WebError):
        return JSONResponse(
            code=error.http_status,
            body=error_body(error.http_status, error.errno, error.message),
            headers=error.headers,
        )
    if isinstance(error, InvalidToken):
        return JSONResponse(code=404, body=error_body(404, 102, "Invalid Token"))
    if isinstance(error, StorageError):
        return JSONResponse(
            code=503,
            body=error_body(503, 999, "Storage unavailable, retry later"),
            headers=((b"Retry-After", b"%d" % RETRY_AFTER_SECONDS),),
        )
    if isinstance(error, PushError):
        code = error.http_status
        return JSONResponse(code=code, body=error_body(code, error.errno, reason_phrase(code)))
    return JSONResponse(code=500, body=error_body(500, 999, "Internal server error"))


#: The body of every success answer, and its ``Content-Length``.
_EMPTY_OBJECT = b"{}"
_EMPTY_LENGTH = b"2"
_JSON_TYPE = (b"Content-Type", b"application/json")
#: The headers of a ``{}`` answer without extra headers, after ``Server`` and ``Date``.
_EMPTY_HEADERS = (_JSON_TYPE, (b"Content-Length", _EMPTY_LENGTH))


def json_bytes(body: object) -> bytes:
    """Serialise ``body`` as compact, ASCII-only JSON."""
    if type(body) is dict and not body:
        return _EMPTY_OBJECT  # every success answer
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def json_response(
    request: HTTPRequest,
    code: int,
    body: object,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Write ``body`` as JSON with status ``code`` and finish ``request``.

    A listener's request (``pushtwisted.web._answer.AnsweringRequest``)
    writes the whole answer at once, its bytes built once per ``Date``
    second; any other request, or one that cannot, takes ``twisted.web``'s
    ``setResponseCode``, ``setHeader`` and ``write``, with the same bytes.
    """
    payload = json_bytes(body)
    answer = getattr(request, "answer", None)
    if answer is not None:
        if payload is _EMPTY_OBJECT and not headers:
            all_headers: Sequence[tuple[bytes, bytes]] = _EMPTY_HEADERS
        else:
            all_headers = (*headers, _JSON_TYPE, (b"Content-Length", b"%d" % len(payload)))
        if answer(code, all_headers, payload):
            return
    request.setResponseCode(code)
    set_header = request.setHeader
    for name, value in headers:
        set_header(name, value)
    set_header(b"Content-Type", b"application/json")
    set_header(
        b"Content-Length", _EMPTY_LENGTH if payload is _EMPTY_OBJECT else b"%d" % len(payload)
    )
    request.write(payload)
    request.finish()


class JSONNotFound(Resource):
    """A leaf that answers every request with the JSON 404 (errno 102).

    :param headers: extra response headers (CORS...).
    """

    isLeaf = True

    def __init__(self, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._headers = tuple(headers)

    def render(self, request: HTTPRequest) -> int:
        """Answer 404 with the JSON error shape."""
        json_response(request, 404, error_body(404, 102, "Not Found"), headers=self._headers)
        return NOT_DONE_YET


class JSONRoot(Resource):
    """A listener's root: registered children answer, any other path is a JSON 404.

    :param headers: extra headers of the 404 answers (CORS...).
    """

    def __init__(self, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._not_found = JSONNotFound(headers)

    def getChild(self, path: bytes, request: HTTPRequest) -> Resource:
        """Return the JSON 404 resource for any path without a registered child."""
        return self._not_found

    def render(self, request: HTTPRequest) -> int:
        """Answer ``/`` itself with the JSON 404."""
        return self._not_found.render(request)


def raw_json_response(
    code: int, body: object, *, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """Return a complete HTTP/1.1 response: ``body`` as JSON, then the connection closes.

    For a channel whose request will never be rendered; the caller writes
    the bytes to the transport and closes it.
    """
    payload = json_bytes(body)
    lines = [
        b"HTTP/1.1 %d %s" % (code, reason_phrase(code).encode("ascii")),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(payload),
        b"Connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def render_async(request: HTTPRequest, coro: Coroutine[Any, Any, JSONResponse]) -> int:
    """Run ``coro`` for ``request`` and write the ``JSONResponse`` it returns.

    A ``PushError`` raised by ``coro`` becomes its JSON error answer; any
    other exception is logged with its traceback and answered 500.

    ``coro`` runs at once: when it finishes without waiting on an unfired
    Deferred (the memory backend, every early error) the answer is written
    before this returns, and no Deferred is made.  Otherwise the rest runs
    under Twisted; if the peer disconnects meanwhile, the coroutine is *not*
    cancelled (a storage write it started must complete) and its response
    is dropped instead of being written to the finished request.

    :returns: ``NOT_DONE_YET``, for ``Resource.render`` to return.
    """
    return render_eagerly(request, coro, _write, _error_answer)


def render_eagerly(
    request: HTTPRequest,
    coro: Coroutine[Any, Any, _R],
    write: Callable[[HTTPRequest, _R], None],
    on_error: Callable[[HTTPRequest, BaseException | None, Failure | None], _R],
) -> int:
    """Run ``coro`` for ``request`` as ``render_async`` does, with any answer type.

    :param write: writes the answer ``coro`` returned (never raises).
    :param on_error: the answer to an exception ``coro`` raised (its
        ``Failure``, or None inside the ``except`` that caught it).
    :returns: ``NOT_DONE_YET``, for ``Resource.render`` to return.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as done:
        write(request, done.value)
        return NOT_DONE_YET
    except Exception as e:
        write(request, on_error(request, e, None))  # logs the exception being handled
        return NOT_DONE_YET

    gone = False

    def peer_gone(reason: Failure) -> None:
        nonlocal gone
        gone = True

    request.notifyFinish().addErrback(peer_gone)

    def to_answer(failure: Failure) -> _R:
        return on_error(request, failure.value, failure)

    def finish(answer: _R) -> None:
        if gone or request.finished:
            _log.debug("peer gone; response dropped")
            return
        write(request, answer)

    resume(coro, awaited).addErrback(to_answer).addCallback(finish)
    return NOT_DONE_YET


def _error_answer(
    request: HTTPRequest, error: BaseException | None, failure: Failure | None
) -> JSONResponse:
    """The answer to an error raised while rendering; log it unless it is a ``PushError``.

    :param failure: the error's ``Failure``; None inside the ``except`` that caught it.
    """
    if not isinstance(error, PushError):
        _log.failure("unhandled error rendering {method}", failure, method=request.method)
    return error_response(error if error is not None else Exception())


def _write(request: HTTPRequest, response: JSONResponse) -> None:
    """Write ``response``; a failure to write is logged, never raised into the caller."""
    try:
        json_response(request, response.code, response.body, headers=response.headers)
    except Exception:
        _log.failure("writing the response failed")
