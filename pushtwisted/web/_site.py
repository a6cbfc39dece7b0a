"""The transport policy of pushtwisted's HTTP listeners, shared by all of them.

``ListenerSite`` is a ``twisted.web.server.Site`` with the policies a
listener needs, each chosen by its builder:

- a request body limit: a declared ``Content-Length`` over ``max_body`` is
  answered 413 (the one JSON error shape) as soon as the headers are in,
  before any of the body is read; a chunked body is counted as it arrives
  and answered 413 once it passes the limit.  Either way the connection is
  closed and the request is never rendered;
- a connection limit (``pushtwisted.connlimit``): past it a new connection
  is closed at once, and each lost connection frees its place;
- an access log: none at all, or Twisted's combined-format line for the
  requests a filter lets through, every one scrubbed (``scrub_target``):
  path segments that hold a token, and long token-like query values,
  become ``<token>`` in the request target and the ``Referer``;
- optionally one request per connection (``Connection: close``);
- optionally a request deadline: a request whose head and body have not
  all arrived within ``request_timeout`` seconds of its first byte is
  answered 408 (the JSON error shape) and the connection closed, so a peer
  that sends a header line now and then cannot hold a connection; between
  requests the idle ``timeout`` applies.

Per request it does no more than it must: the ``Date`` header is formatted
once per second (``ListenerSite.http_date``) rather than for every request,
resource traversal is Twisted's own (``Site.getResourceFor``) without its
check for encoding resources (no pushtwisted resource is one), and a JSON
answer is written whole from bytes built once a second (``web._answer``).

Only HTTP/1.x channels are built (no listener offers HTTP/2).  The early
413 and the 408 are written straight to the transport with ``raw_json_response``: the
request is not rendered, so ``twisted.web`` has no response to write it
through (Twisted answers its own early 400s the same way).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, combinedLogFormatter, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Site

from pushtwisted.connlimit import ConnectionLimit
from pushtwisted.logs import logger
from pushtwisted.web._answer import AnswerCache, AnsweringRequest, response_head
from pushtwisted.web._util import HTTPRequest, error_body, raw_json_response

__all__ = ["ListenerSite", "scrub_target"]

#: Path segments after which every segment is a token (``/update/<token>``,
#: ``/wpush/v1/<token>``), compared percent-decoded and in lower case.
_TOKEN_PATHS = frozenset({b"update", b"wpush"})
#: An API version segment between such a segment and the token.
_API_VERSION = re.compile(rb"v[0-9]{1,3}")
#: A token, UAID or channel ID anywhere else: 32 or more of these characters.
_TOKEN_LIKE = re.compile(rb"[A-Za-z0-9_.=\-]{32,}")
#: ``scheme://authority`` of an absolute-form request target.
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
_SCRUBBED = b"<token>"


def scrub_target(target: bytes) -> bytes:
    """Return a request target (or URL) with every token in it replaced by ``<token>``.

    In the path, whatever the case, the slashes (doubled, percent-encoded)
    or an absolute form: every segment after an ``update`` or ``wpush``
    segment (API versions such as ``v1`` excepted) and any token-like
    segment (32 or more of ``[A-Za-z0-9_.=-]``); in the query, every such
    name or value.  The rest is kept as it was sent.
    """
    path, question, query = target.partition(b"?")
    absolute = _ABSOLUTE.match(path)
    prefix = absolute.group() if absolute else b""
    out = [_scrub_path(path[len(prefix) :])]
    if question:
        out.append(b"?" + _scrub_query(query))
    return prefix + b"".join(out)


def _scrub_path(path: bytes) -> bytes:
    segments = path.split(b"/")
    after_token_path = False
    for i, raw in enumerate(segments):
        secret = False
        for piece in unquote_to_bytes(raw).split(b"/"):
            lower = piece.lower()
            if not piece:
                continue
            if after_token_path:
                secret = secret or not _API_VERSION.fullmatch(lower)
            elif lower in _TOKEN_PATHS:
                after_token_path = True
            elif _TOKEN_LIKE.fullmatch(piece):
                secret = True
        if secret:
            segments[i] = _SCRUBBED
    return b"/".join(segments)


def _scrub_query(query: bytes) -> bytes:
    pairs = query.split(b"&")
    for i, pair in enumerate(pairs):
        name, equals, value = pair.partition(b"=")
        parts = [name, value] if equals else [name]
        decoded = [unquote_to_bytes(part.replace(b"+", b" ")) for part in parts]
        scrubbed = [
            _SCRUBBED if _TOKEN_LIKE.fullmatch(plain) else part
            for part, plain in zip(parts, decoded, strict=True)
        ]
        pairs[i] = b"=".join(scrubbed)
    return b"&".join(pairs)


class _ScrubbedRequest:
    """What ``combinedLogFormatter`` reads of a request, tokens scrubbed."""

    def __init__(self, request: http.Request) -> None:
        self._request = request
        self.uri = scrub_target(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        """Return a request header; the ``Referer`` scrubbed."""
        value: bytes | None = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return scrub_target(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _scrubbed_log_line(timestamp: str, request: http.Request) -> str:
    """Twisted's combined log line of ``request`` with its tokens scrubbed."""
    line: str = combinedLogFormatter(timestamp, _ScrubbedRequest(request))
    return line


class _BodyLimitedRequest(AnsweringRequest):
    """A ``Request`` that refuses bodies larger than its ``ListenerSite``'s ``max_body``,
    and writes whole answers (``AnsweringRequest``) with its ``Date``."""

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]
        site = getattr(channel, "site", None)
        limited = isinstance(site, ListenerSite) and isinstance(channel, HTTPChannel)
        self._site: ListenerSite | None = site if limited else None
        self._body_seen = 0
        self._rejected = False

    def gotLength(self, length: int | None) -> None:
        """Refuse a declared length over the limit, else prepare the body buffer."""
        if self._site is not None and length is not None and length > self._site.max_body:
            self._reject(length)
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        """Buffer a body chunk, or refuse the request once the limit is passed."""
        if self._rejected:
            return
        self._body_seen += len(data)
        if self._site is not None and self._body_seen > self._site.max_body:
            self._reject(None)
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request unless it was refused."""
        if self._rejected:
            return
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def process(self) -> None:
        """Find the resource and render it, as ``Request.process`` does, with the
        site's ``Date`` of this second and its cache of whole answers.

        The ``*`` target, and a channel that is not a ``ListenerSite``'s, take
        Twisted's own path.
        """
        site = self._site
        path: bytes = self.path
        if site is None or path == b"*":
            super().process()  # type: ignore[no-untyped-call]
            return
        self.site = site
        self.start_answers(site.answers, site.http_date())
        self.prepath: list[bytes] = []
        parts = path[1:].split(b"/")  # percent-decoded only where there is a %
        self.postpath = [unquote_to_bytes(part) for part in parts] if b"%" in path else parts
        try:
            self.render(site.getResourceFor(self))  # type: ignore[no-untyped-call]
        except BaseException:
            self.processingFailed(Failure())  # type: ignore[no-untyped-call]

    def _reject(self, declared: int | None) -> None:
        assert self._site is not None
        self._rejected = True
        # The channel sends "100 Continue" after gotLength; the 413 replaces it.
        self.requestHeaders.removeHeader(b"Expect")
        # The request line is parsed, the Request not yet told its path:
        # HTTPChannel keeps the target of the request in progress.
        target = getattr(self.channel, "_path", None)
        self._site.refuse_oversize(
            self.channel, declared, target if isinstance(target, bytes) else b""
        )


class _ListenerChannel(HTTPChannel):
    """An ``HTTPChannel`` that frees its place on its ``ListenerSite`` when lost.

    With ``keep_alive`` off on the site, every response says
    ``Connection: close`` and the connection closes once it is written.

    A response's status line and headers are held until its first body
    bytes (or its end) and written with them: one transport write, so one
    ``send``, for a response of one body write such as every JSON answer.

    With the site's ``request_timeout`` set, a request's head and body must
    have arrived within that many seconds of its first byte: the deadline
    is armed when a read ends with a request still incomplete (a request
    that arrives in one read, the usual case, never arms it), and cancelled
    once the request is whole.  Between requests the site's idle
    ``timeout`` applies, as in Twisted.
    """

    _deadline: IDelayedCall | None = None
    #: Bytes of a request arrived, and the request is not whole yet.
    _receiving = False
    #: A whole request is being answered (its response not finished).
    _answering = False
    #: The deadline passed and 408 was sent: nothing more is read.
    _timed_out = False
    #: This end's address, read once (every request asks for it).
    _host: IAddress | None = None
    #: The response head written by ``writeHeaders`` and not yet sent.
    _held: list[bytes] | None = None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """Hold the response head (the bytes ``HTTPChannel`` writes) to send with the body."""
        self._held = [response_head(version, code, reason, headers)]

    def write(self, data: bytes) -> None:
        """Write body bytes (or a whole answer), after the held head if there is one."""
        if self._held is not None or self.transport is None:
            return self.writeSequence((data,))
        self.transport.write(data)

    def writeSequence(self, iovec: Sequence[bytes]) -> None:
        """Write body bytes, after the held head if there is one, in one transport write."""
        held, self._held = self._held, None
        if held is not None:
            held.extend(iovec)
            iovec = held
        transport = self.transport
        assert transport is not None
        transport.writeSequence(iovec)

    def _send_held(self) -> None:
        """Send a held head whose response has no body (or ends without one)."""
        if self._held is not None:
            self.writeSequence(())

    def loseConnection(self) -> None:
        """Close after what is written, the held head included."""
        self._send_held()
        super().loseConnection()  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        """Read ``data``; arm the request deadline if a request is left incomplete."""
        if self._timed_out:
            return
        if not self._answering:
            self._receiving = True
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if self._receiving and self._deadline is None:
            site = getattr(self, "site", None)
            transport = self.transport
            if (
                isinstance(site, ListenerSite)
                and site.request_timeout
                and transport is not None
                and not transport.disconnecting  # type: ignore[attr-defined]
            ):
                self._deadline = self.callLater(  # type: ignore[no-untyped-call]
                    site.request_timeout, self._request_timed_out
                )

    def getHost(self) -> IAddress:
        """This end's address: asked of the transport once, not once per request.

        A connected socket's local address never changes; Twisted's
        ``Request`` reads it for every request, a ``getsockname`` each time.
        """
        host = self._host
        if host is None:
            host = self._host = super().getHost()  # type: ignore[no-untyped-call]
        return host

    def allContentReceived(self) -> None:
        """The request is whole: its deadline is over; answer it.

        Twisted cancels the idle timer here and schedules a new one when the
        response is done; the timer is left running instead (a request still
        being answered when it fires is not timed out, see
        ``timeoutConnection``) and restarted by ``requestDone``.
        """
        self._receiving = False
        self._answering = True
        self._cancel_deadline()
        idle, self.timeOut = self.timeOut, None
        try:
            super().allContentReceived()  # type: ignore[no-untyped-call]
        finally:
            self.timeOut = idle

    def requestDone(self, request: http.Request) -> None:
        """The response is written: the idle time starts again, and the next bytes
        start a new request."""
        self._answering = False
        self._send_held()
        super().requestDone(request)  # type: ignore[no-untyped-call]
        self.resetTimeout()  # type: ignore[no-untyped-call]

    def timeoutConnection(self) -> None:
        """Close an idle connection, but let a request being answered finish first."""
        if self._answering:
            self.setTimeout(self.timeOut)  # type: ignore[no-untyped-call]
            return
        super().timeoutConnection()  # type: ignore[no-untyped-call]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _request_timed_out(self) -> None:
        self._deadline = None
        site = getattr(self, "site", None)
        if self._receiving and isinstance(site, ListenerSite):
            self._timed_out = True
            site.refuse_slow(self)

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        """Keep the connection open after this request, unless the site says no."""
        site = getattr(self, "site", None)
        if isinstance(site, ListenerSite) and not site.keep_alive:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        keep: bool = super().checkPersistence(request, version)  # type: ignore[no-untyped-call]
        return keep

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Let ``HTTPChannel`` handle the loss, then release the site's connection slot.

        A connection lost while a request body was still expected keeps a
        reference cycle in ``HTTPChannel`` (the channel holds its body decoder,
        which holds the channel's own methods) that only the garbage collector
        frees; objects that lived past a second are out of its reach
        (``pushtwisted.collector``), so the cycle is broken here.
        """
        self._cancel_deadline()
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        finally:
            self._transferDecoder = None
            site = getattr(self, "site", None)
            if isinstance(site, ListenerSite) and site.limit is not None:
                site.limit.release()


def _default_oversize_body(target: bytes, message: str) -> dict[str, object]:
    return error_body(413, 302, message)


class ListenerSite(Site):
    """A ``Site`` with a body limit, a connection limit and an access-log filter.

    :param root: the root resource.
    :param max_body: the largest request body accepted, in bytes.
    :param limit: counts this listener's open connections against its
        ``max_connections``; None counts nothing.
    :param access_log: says whether a rendered request gets an access line
        (scrubbed by ``scrub_target``); None (the default) writes no access
        log at all.
    :param keep_alive: False closes every connection after one response.
    :param oversize_headers: extra headers of the early 413 and of the 408 (CORS...).
    :param on_oversize: called once per early 413 (metrics).
    :param oversize_body: the JSON body of the early 413, from the request
        target and the message; the default is errno 302.
    :param request_timeout: seconds a request's head and body may take from
        its first byte, then 408 and the connection closes; None or 0: no limit.
    :param on_request_timeout: called once per 408 (metrics).
    :param kwargs: passed to ``Site`` (``reactor``, ``timeout`` (the idle
        timeout between requests)...).
    """

    #: Not ``log``: ``HTTPFactory.log`` is the access-log method.
    _logger = logger()
    # Twisted types ``protocol`` as its (private) HTTP/1.1-or-2 switcher.
    protocol = _ListenerChannel  # type: ignore[assignment]

    def __init__(
        self,
        root: IResource,
        *,
        max_body: int,
        limit: ConnectionLimit | None = None,
        access_log: Callable[[HTTPRequest], bool] | None = None,
        keep_alive: bool = True,
        oversize_headers: Sequence[tuple[bytes, bytes]] = (),
        on_oversize: Callable[[], object] | None = None,
        oversize_body: Callable[[bytes, str], dict[str, object]] | None = None,
        request_timeout: float | None = None,
        on_request_timeout: Callable[[], object] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("logFormatter", _scrubbed_log_line)
        super().__init__(root, requestFactory=_BodyLimitedRequest, **kwargs)  # type: ignore[no-untyped-call]
        self.max_body = max_body
        self.limit = limit
        self.keep_alive = keep_alive
        self._access_log = access_log
        self._oversize_headers = tuple(oversize_headers)
        self._on_oversize = on_oversize
        self._oversize_body = oversize_body or _default_oversize_body
        self.request_timeout = request_timeout or None
        self._on_request_timeout = on_request_timeout
        self._date_second: int | None = None
        self._date = b""
        #: Whole answers of this second (``AnsweringRequest.answer``).
        self.answers = AnswerCache()

    def http_date(self) -> bytes:
        """Return the ``Date`` header value of the current second of the site's reactor."""
        second = int(self.reactor.seconds())
        if second != self._date_second:
            self._date = datetimeToString(second)  # type: ignore[no-untyped-call]
            self._date_second = second
        return self._date

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """Return a new connection's channel, or None (close it) when the listener is full."""
        if self.limit is not None and not self.limit.acquire():
            return None
        try:
            return super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        except BaseException:
            if self.limit is not None:
                self.limit.release()
            raise

    def refuse_oversize(
        self, channel: HTTPChannel, declared: int | None, target: bytes = b""
    ) -> None:
        """Answer 413 (the JSON error shape) straight to ``channel`` and close it."""
        message = f"Request body exceeds max length of {self.max_body} bytes"
        body = self._oversize_body(target, message)
        if self._refuse(channel, 413, body):
            self._logger.info(
                "request body over {limit} bytes refused (declared {declared})",
                limit=self.max_body,
                declared=declared,
            )
            if self._on_oversize is not None:
                self._on_oversize()

    def refuse_slow(self, channel: HTTPChannel) -> None:
        """Answer 408 (the JSON error shape) straight to ``channel`` and close it."""
        message = f"Request not received within {self.request_timeout:g} seconds"
        if self._refuse(channel, 408, error_body(408, 999, message)):
            self._logger.info(
                "request not received within {timeout}s: 408, connection closed",
                timeout=self.request_timeout,
            )
            if self._on_request_timeout is not None:
                self._on_request_timeout()

    def _refuse(self, channel: HTTPChannel, code: int, body: dict[str, object]) -> bool:
        """Write a closing JSON error answer to ``channel``; False if it is already going."""
        transport = channel.transport
        if transport is None or transport.disconnecting:  # type: ignore[attr-defined]
            return False
        transport.write(raw_json_response(code, body, headers=self._oversize_headers))
        channel.loseConnection()  # type: ignore[no-untyped-call]
        return True

    def log(self, request: http.Request) -> None:
        """Write the (scrubbed) access line of ``request`` if the filter allows it."""
        if self._access_log is not None and self._access_log(cast(HTTPRequest, request)):
            super().log(request)
