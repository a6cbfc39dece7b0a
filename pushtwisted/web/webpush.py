"""The WebPush routes of the endpoint listener (RFC 8030; WebPush reference, section 6).

``POST /wpush/v1/<token>``, ``/wpush/v2/<token>`` and ``/wpush/<token>`` (v1)
send a message to one subscription; ``DELETE /m/<id>`` cancels a stored one.

Processing order of a POST, each step's failure answered at once:

====  ==============================================  =================================
step  check                                           failure
====  ==============================================  =================================
1     the path is ``/wpush/[v1/|v2/]<token>``, the    404 errno 102
      token decodes as that version's
2     the method is POST (OPTIONS: CORS preflight)    405 (``Allow: POST``, errno null)
3     VAPID (``webpush.vapid``): optional on v1 but   401 errno 109,
      verified when present, required on v2 with      ``WWW-Authenticate: vapid``
      the key the token was issued for
4     the body is at most ``max_message_bytes``       413 errno 104
5     TTL, Topic, Urgency, Content-Encoding and the   400 errno 111, 114, 113, 112, 110
      crypto headers (``webpush.headers``)
6     ``store_message``: the channel is registered;   410 errno 106 (``Cache-Control``);
      the UAID's backlog has room; storage answers    429 errno 115 (``Retry-After``);
                                                      503 errno 201/202 (``Retry-After``)
7     ``router.deliver_message``, on whichever node   never fails
      holds the device
====  ==============================================  =================================

The answer is **201** with an empty body, ``Location: {public_url}/m/<id>``
and ``TTL: <effective TTL>``, whether the message was delivered, stored, or
(TTL 0, no session took it) dropped.  A TTL-0 message is never stored: step
6 only checks the channel, and the message goes to the router with a
transient sequence number (top bit set, never one storage hands out).

``DELETE /m/<id>``: an id that does not open is 404 errno 102; otherwise the
stored message with that id (if it is still stored) is deleted, 204.

Every error is ``webpush.errors.WebPushError``'s autopush JSON shape; an
unexpected exception is logged with its traceback and answered 500 errno
999.  Each request writes one access line (method, route, status, errno and
reason of a refusal, the UAID's hash: never a token, id or payload), and is
counted in ``endpoint_requests`` and ``endpoint_latency_seconds``; the
WebPush counters are ``webpush_messages{outcome}`` (received, stored,
dropped), ``webpush_rejected{errno}`` (``none`` for a 405) and
``vapid_failures{reason}``.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.errors import InvalidToken, StorageError, StorageUnavailable
from pushtwisted.logs import AccessLog, logger, uaid_hash
from pushtwisted.node import Node
from pushtwisted.storage.interface import NewMessage, StoredMessage, StoreOutcome
from pushtwisted.tokens import WebPushToken
from pushtwisted.web._util import RETRY_AFTER_SECONDS, HTTPRequest, render_eagerly
from pushtwisted.webpush.errors import (
    Errno,
    WebPushError,
    from_exception,
    gone,
    too_many_pending,
)
from pushtwisted.webpush.headers import check_push
from pushtwisted.webpush.vapid import VapidError, VapidVerifier

__all__ = [
    "BACKLOG_RETRY_AFTER",
    "CORS_HEADERS",
    "MessageResource",
    "WebPushResource",
    "transient_seq",
]

#: Seconds an app server is told to wait (``Retry-After``) when a UAID's backlog is full.
BACKLOG_RETRY_AFTER = 60

#: The CORS headers of every WebPush answer when ``[endpoint] cors`` is on.
CORS_HEADERS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Methods", b"POST, DELETE"),
    (
        b"Access-Control-Allow-Headers",
        b"authorization, content-encoding, content-type, crypto-key, encryption, "
        b"topic, ttl, urgency",
    ),
    (b"Access-Control-Expose-Headers", b"Location, TTL, WWW-Authenticate"),
)

_TRANSIENT = 1 << 63
_VERSIONS = {b"v1": 1, b"v2": 2}


def transient_seq() -> int:
    """Return a sequence number for a TTL-0 message: top bit set, 63 random bits."""
    return _TRANSIENT | secrets.randbits(63)


@dataclass(slots=True)
class _Exchange:
    """Per-request bookkeeping for the access line and metrics."""

    method: str
    route: str
    started: float
    uaid_hash: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Answer:
    """A complete answer: status, extra headers, body."""

    code: int
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


def _error_answer(error: WebPushError) -> _Answer:
    return _Answer(error.status, error.response_headers(), error.body())


def _write(request: HTTPRequest, answer: _Answer) -> None:
    request.setResponseCode(answer.code)
    for name, value in answer.headers:
        request.setHeader(name, value)
    if answer.code != 204:
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
    if answer.body:
        request.write(answer.body)
    request.finish()


def _single(request: HTTPRequest, name: bytes) -> str | None:
    """Return the one value of a request header as text, None when absent.

    :raises VapidError: ``scheme`` when ``Authorization`` is sent more than once.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1:
        raise VapidError("scheme")
    value: bytes = values[0]
    return value.decode("latin-1")


def _joined(request: HTTPRequest, name: bytes) -> str | None:
    """Return a list header's values joined with ``,``, None when absent."""
    values = request.requestHeaders.getRawHeaders(name)
    return None if not values else b",".join(values).decode("latin-1")


class _Route(Resource):
    """What both WebPush routes share: CORS, answers, metrics and the access line.

    :param node: the node's shared collaborators.
    """

    isLeaf = True
    log = logger()
    #: The route's name in the access line.
    route = ""
    #: The one method it serves (besides OPTIONS).
    method = b""
    #: The one line of each request (the listener's access log leaves these out).
    access_log: AccessLog

    def __init__(self, node: Node) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._node = node
        self._cors = CORS_HEADERS if node.config.endpoint.cors else ()
        self._base = node.config.endpoint.public_url.rstrip("/")

    def render(self, request: HTTPRequest) -> int:
        """Answer one request: CORS preflight, 405, or the route's method (asynchronously).

        :returns: ``NOT_DONE_YET``; the response is written when ready.
        """
        node = self._node
        exchange = _Exchange(
            method=request.method.decode("ascii", "replace"),
            route=self.route,
            started=node.clock.seconds(),
        )
        for name, value in self._cors:
            request.setHeader(name, value)
        if request.method == b"OPTIONS":
            allow = self.method + b", OPTIONS"
            _write(request, _Answer(200, ((b"Allow", allow),)))
            self._complete(exchange, 200, None)
            return NOT_DONE_YET
        return render_eagerly(request, self._serve(request, exchange), _write, self._unexpected)

    async def _serve(self, request: HTTPRequest, exchange: _Exchange) -> _Answer:
        """Run the route and return its answer; every error becomes its JSON answer."""
        try:
            answer = await self._handle(request, exchange)
        except Exception as e:
            error = from_exception(e, retry_after=RETRY_AFTER_SECONDS)
            if error.status == 500:
                self.log.failure(
                    "WebPush {route} failed {uaid_hash}",
                    route=self.route,
                    uaid_hash=exchange.uaid_hash,
                )
            self._complete(exchange, error.status, error)
            return _error_answer(error)
        self._complete(exchange, answer.code, None)
        return answer

    async def _handle(self, request: HTTPRequest, exchange: _Exchange) -> _Answer:
        """Serve the request; raise for every error answer."""
        raise NotImplementedError

    def _unexpected(
        self, request: HTTPRequest, error: BaseException | None, failure: object
    ) -> _Answer:
        """The answer to an error that escaped ``_serve`` (none should): 500, logged."""
        self.log.error(
            "unhandled error in WebPush {route}: {error!r}", route=self.route, error=error
        )
        return _error_answer(from_exception(Exception(), retry_after=RETRY_AFTER_SECONDS))

    def _check_method(self, request: HTTPRequest) -> None:
        """:raises WebPushError: 405 (errno null, ``Allow``) unless it is the route's method."""
        if request.method != self.method:
            raise WebPushError(405, None, "Method not allowed", headers=((b"Allow", self.method),))

    def _storage_failed(self, error: Exception, exchange: _Exchange) -> StorageError:
        """Log a storage failure; return the ``StorageError`` to answer it with (503)."""
        if isinstance(error, StorageError):
            self.log.warn(
                "storage unavailable {uaid_hash}: {detail}",
                uaid_hash=exchange.uaid_hash,
                detail=str(error),
                error_type=type(error).__name__,
            )
            return error
        self.log.failure("storage call failed {uaid_hash}", uaid_hash=exchange.uaid_hash)
        return StorageUnavailable("storage call failed")

    def _complete(self, exchange: _Exchange, status: int, error: WebPushError | None) -> None:
        """Record the metrics and the one access line of a request."""
        metrics = self._node.metrics
        latency = max(0.0, self._node.clock.seconds() - exchange.started)
        label = str(status)
        metrics.increment("endpoint_requests", status=label)
        metrics.observe("endpoint_latency_seconds", latency, status=label)
        errno = ""
        if error is not None:
            errno = "none" if error.errno is None else str(int(error.errno))
            metrics.increment("webpush_rejected", errno=errno)
            if isinstance(error, VapidError):
                metrics.increment("vapid_failures", reason=error.reason)
                exchange.reason = f"vapid {error.reason}"
            else:
                exchange.reason = error.message
        access = self.access_log
        if access.enabled:
            method, route, hashed = exchange.method, exchange.route, exchange.uaid_hash
            latency = round(latency, 6)
            refused = f" errno {errno} ({exchange.reason})" if error is not None else ""
            access.line(
                f"{method} {route} {status}{refused} in {latency}s {hashed}",
                method=method,
                route=route,
                status=status,
                errno=errno,
                reason=exchange.reason,
                latency=latency,
                uaid_hash=hashed,
            )


class WebPushResource(_Route):
    """Serve ``/wpush/...``: accept a push message for one subscription.

    :param node: the node's shared collaborators (config, storage, router,
        crypto, clock, metrics).
    :param verifier: checks VAPID against ``[endpoint] public_url``; one is
        made from the config when None.
    """

    route = "/wpush/"
    method = b"POST"
    access_log = AccessLog(f"{__name__}.WebPushResource")

    def __init__(self, node: Node, verifier: VapidVerifier | None = None) -> None:
        super().__init__(node)
        self._verifier = verifier or VapidVerifier(node.config.endpoint.public_url)
        self._webpush = node.config.webpush

    def _token(self, request: HTTPRequest) -> WebPushToken:
        """Return what the path's token holds.

        :raises WebPushError: 404 errno 102 on any other path or a token that does not open.
        """
        postpath = request.postpath or []
        version = 1
        if len(postpath) == 2 and postpath[0] in _VERSIONS:
            version = _VERSIONS[postpath[0]]
            postpath = postpath[1:]
        if len(postpath) != 1 or not postpath[0]:
            raise WebPushError(404, Errno.INVALID_TOKEN, "Invalid token")
        self._check_method(request)
        try:
            return self._node.crypto.parse_webpush_token(
                postpath[0].decode("ascii", "replace"), version=version
            )
        except InvalidToken as e:
            self.log.debug("invalid token: {detail}", detail=str(e))
            raise WebPushError(404, Errno.INVALID_TOKEN, "Invalid token") from None

    async def _handle(self, request: HTTPRequest, exchange: _Exchange) -> _Answer:
        node = self._node
        token = self._token(request)
        uaid = token.uaid
        exchange.uaid_hash = uaid_hash(uaid)
        now = node.clock.seconds()
        self._verifier.verify(
            _single(request, b"authorization"),
            _joined(request, b"crypto-key"),
            now=now,
            key_hash=token.key_hash,
        )
        content = request.content
        body = b""
        if content is not None:
            content.seek(0)
            body = content.read()
        config = self._webpush
        checked = check_push(
            request.requestHeaders,
            len(body),
            max_ttl=config.max_ttl,
            max_bytes=config.max_message_bytes,
        )
        metrics = node.metrics
        metrics.increment("webpush_messages", outcome="received")
        data = base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii") if body else None
        new = NewMessage(
            chid=token.chid,
            ttl=checked.ttl,
            topic=checked.topic,
            data=data,
            headers=checked.forward,
        )
        try:
            result = await node.storage.store_message(uaid, new, config.max_pending_messages)
        except Exception as e:
            raise self._storage_failed(e, exchange) from e
        outcome = result.outcome
        if outcome is StoreOutcome.GONE:
            raise gone()
        if outcome is StoreOutcome.FULL:
            raise too_many_pending(retry_after=BACKLOG_RETRY_AFTER)
        message = result.message
        if outcome is StoreOutcome.STORED and message is not None:
            metrics.increment("webpush_messages", outcome="stored")
        else:
            message = StoredMessage(
                chid=token.chid,
                channel_id=result.channel_id or token.chid,
                seq=transient_seq(),
                ttl=0,
                stored_at=now,
                topic=checked.topic,
                data=data,
                headers=checked.forward,
            )
        try:
            delivered = await node.router.deliver_message(uaid, message)
        except Exception:
            self.log.failure("routing failed {uaid_hash}", uaid_hash=exchange.uaid_hash)
            delivered = False
        if message.ttl == 0 and not delivered:
            metrics.increment("webpush_messages", outcome="dropped")
        message_id = node.crypto.message_ids.seal(
            uaid, message.chid, seq=message.seq, topic=message.topic
        )
        return _Answer(
            201,
            (
                (b"Location", f"{self._base}/m/{message_id}".encode("ascii")),
                (b"TTL", b"%d" % message.ttl),
            ),
        )


class MessageResource(_Route):
    """Serve ``/m/<id>``: cancel a stored message (``DELETE``).

    :param node: the node's shared collaborators.
    """

    route = "/m/"
    method = b"DELETE"
    access_log = AccessLog(f"{__name__}.MessageResource")

    async def _handle(self, request: HTTPRequest, exchange: _Exchange) -> _Answer:
        postpath = request.postpath or []
        if len(postpath) != 1 or not postpath[0]:
            raise WebPushError(404, Errno.INVALID_TOKEN, "Invalid message id")
        self._check_method(request)
        try:
            opened = self._node.crypto.message_ids.open(postpath[0].decode("ascii", "replace"))
        except InvalidToken as e:
            self.log.debug("invalid message id: {detail}", detail=str(e))
            raise WebPushError(404, Errno.INVALID_TOKEN, "Invalid message id") from None
        exchange.uaid_hash = uaid_hash(opened.uaid)
        try:
            await self._node.storage.delete_message(opened.uaid, opened.seq)
        except Exception as e:
            raise self._storage_failed(e, exchange) from e
        return _Answer(204)
