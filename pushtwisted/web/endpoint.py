"""The app-server endpoint: ``PUT /update/<token>`` (PROTOCOL.md sections 3 and 16).

The same listener serves the WebPush routes (``pushtwisted.web.webpush``):
``build_endpoint_root`` puts both under one root.

Parameters ``version`` and ``data`` come from a form body
(``application/x-www-form-urlencoded``, a body without ``Content-Type``, or
``multipart/form-data``) or from the query string; a body field wins over
the query string.  A body of any other type is not parsed.

A PUT whose body is of another type (``application/json``, ``text/plain``...)
keeps pushgo's answer: the body is ignored and the version is the current
time; it is counted (``notifications_body_ignored``) and logged as a warning
naming the type, at most once per type per minute with the count since.

Processing order: path, method, token, parameters, storage, live delivery.
The token is checked before the body is parsed (``pushtwisted.web._form``:
form and bounded multipart parsing), so a request without a valid token
costs no parsing.
Live delivery is ``node.router``'s (``pushtwisted.routing``): a session on
this node, or in a cluster (``[router] listen`` set) the node that holds the
device; 200 means "a live socket took it" and 202 "stored" (no node holds
the device, or it could not be reached in time).

======  =====  =====================================================
status  errno  when
======  =====  =====================================================
200            delivered to a connected client, or a stale version
                (``monotonic_versions``) that was ignored
202            stored for a client that is not connected (in a
                cluster: no node confirmed that a live socket took it)
400     301    ``version`` is not a decimal in 0..2**63-1
400     303    the body is not UTF-8 or not a well-formed form, or
                passes a bound of ``pushtwisted.web._form`` (fields,
                parts, part headers, charsets)
404     102    the token does not decode, or the path is not
                ``/update/<one segment>``
405     304    a method other than PUT or OPTIONS (``Allow`` header)
408     999    (the listener) the head and body did not arrive within
                ``endpoint.request_timeout``; the connection is closed
410     106    the channel is unregistered or unknown
413     302    ``data`` longer than ``endpoint.max_data`` bytes, or
                (the listener, before reading it) a body longer
                than ``endpoint.max_body``
500     999    an unexpected error (logged, never shown)
503     999    storage unavailable (``Retry-After: 5``)
======  =====  =====================================================

Every answer is JSON: ``{}`` on success, the one error shape of
``pushtwisted.web._util`` otherwise.  OPTIONS (CORS preflight) is 200 with
an empty body.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.connlimit import ConnectionLimit
from pushtwisted.errors import InvalidToken, StorageError, StorageUnavailable
from pushtwisted.logs import AccessLog, logger, uaid_hash
from pushtwisted.messages import MAX_VERSION
from pushtwisted.node import Node
from pushtwisted.storage.interface import UpdateOutcome
from pushtwisted.tokens import PARSED_TOKENS
from pushtwisted.web._form import request_fields
from pushtwisted.web._site import ListenerSite
from pushtwisted.web._util import (
    HTTPRequest,
    JSONResponse,
    JSONRoot,
    WebError,
    error_body,
    error_response,
    json_response,
    render_async,
)
from pushtwisted.web.webpush import MessageResource, WebPushResource
from pushtwisted.webpush.errors import Errno, WebPushError

__all__ = [
    "IGNORED_BODY_LOG_INTERVAL",
    "UpdateResource",
    "build_endpoint_root",
    "build_endpoint_site",
]

_ALLOW = b"PUT, OPTIONS"
_CORS_HEADERS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Methods", _ALLOW),
    (b"Access-Control-Allow-Headers", b"content-type"),
)

#: ``notifications_rejected`` reason by the errno of a ``WebError``.
_REJECT_REASONS = {
    102: "invalid_token",
    106: "gone",
    301: "invalid_version",
    302: "data_too_large",
    303: "invalid_body",
}


def _invalid_token() -> WebError:
    return WebError(404, 102, "Invalid Token")


def _with_cors(response: JSONResponse, cors: bool) -> JSONResponse:
    """``response`` with the CORS headers first when ``cors`` is on (as the
    headers of a whole answer, see ``json_response``)."""
    if not cors:
        return response
    return JSONResponse(
        code=response.code, body=response.body, headers=_CORS_HEADERS + response.headers
    )


def _parse_version(raw: str | None, now: float) -> int:
    """Return the version in ``raw``, or ``int(now)`` when it is missing or empty.

    :raises WebError: 400 errno 301 unless it is a decimal in 0..2**63-1.
    """
    text = (raw or "").strip()
    if not text:
        return int(now)
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 19:
        raise WebError(400, 301, "Invalid Version")
    version = int(text)
    if version > MAX_VERSION:
        raise WebError(400, 301, "Invalid Version")
    return version


def _parse_data(raw: str | None, max_data: int) -> str | None:
    """Return the data (None when empty).

    :raises WebError: 413 errno 302 when it is over ``max_data`` UTF-8 bytes.
    """
    if not raw:
        return None
    if len(raw.encode("utf-8")) > max_data:
        raise WebError(413, 302, f"Data exceeds max length of {max_data} bytes")
    return raw


@dataclass(slots=True)
class _Exchange:
    """Per-request bookkeeping for the access line and metrics."""

    method: str
    started: float
    uaid_hash: str = ""


#: Seconds between two warnings about ignored bodies of one media type.
IGNORED_BODY_LOG_INTERVAL = 60.0
#: Most media types counted apart for those warnings; the rest share "other".
_IGNORED_TYPES = 32


class _IgnoredBodies:
    """Rate-limits the warning about PUT bodies that are not forms: one line per
    media type per ``IGNORED_BODY_LOG_INTERVAL``, with the count since the last."""

    def __init__(self) -> None:
        #: media type -> (when its last line was written, PUTs since then).
        self._types: dict[str, tuple[float, int]] = {}

    def seen(self, media: str, now: float, log: Logger) -> None:
        """Count one ignored body of type ``media``; warn if its interval has passed."""
        if media not in self._types and len(self._types) >= _IGNORED_TYPES:
            media = "other"
        last, count = self._types.get(media, (None, 0))
        count += 1
        if last is not None and now - last < IGNORED_BODY_LOG_INTERVAL:
            self._types[media] = (last, count)
            return
        self._types[media] = (now, 0)
        log.warn(
            "ignored the {content_type} body of {count} PUT(s) since the last such line: "
            "only form bodies are read, so the version is the current time",
            content_type=media,
            count=count,
        )


def _reject_reason(error: BaseException) -> str:
    """Return the ``notifications_rejected`` reason for an error answer."""
    if isinstance(error, WebError):
        return _REJECT_REASONS.get(error.errno, "bad_request")
    if isinstance(error, StorageError):
        return "storage_unavailable"
    return "internal_error"


class UpdateResource(Resource):
    """Serve ``/update/<token>``: accept a new version for one channel.

    :param node: the node's shared collaborators (config, storage, registry,
        crypto, clock, metrics).
    """

    isLeaf = True
    log = logger()
    #: The one line of each request (the listener's access log leaves these out).
    access_log = AccessLog(f"{__name__}.UpdateResource")

    def __init__(self, node: Node) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._node = node
        self._ignored = _IgnoredBodies()
        # The access line's hash, once per UAID among as many as tokens are remembered.
        self._uaid_hash = functools.lru_cache(maxsize=PARSED_TOKENS)(uaid_hash)

    def render(self, request: HTTPRequest) -> int:
        """Answer one request; PUT is handled asynchronously.

        :returns: ``NOT_DONE_YET``; the response is written when ready.
        """
        node = self._node
        method = request.method
        exchange = _Exchange(method=method.decode("ascii", "replace"), started=node.clock.seconds())
        postpath = request.postpath or []
        if len(postpath) != 1 or not postpath[0]:
            return self._answer_now(request, exchange, error_response(_invalid_token()))
        if method == b"OPTIONS":
            if node.config.endpoint.cors:
                for name, value in _CORS_HEADERS:
                    request.setHeader(name, value)
            request.setResponseCode(200)
            request.setHeader(b"Allow", _ALLOW)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            self._complete(exchange, 200)
            return NOT_DONE_YET
        if method != b"PUT":
            error = WebError(405, 304, "Method Not Allowed", headers=((b"Allow", _ALLOW),))
            return self._answer_now(request, exchange, error_response(error))
        token = postpath[0].decode("ascii", "replace")
        return render_async(request, self._put(request, token, exchange))

    def _answer_now(self, request: HTTPRequest, exchange: _Exchange, response: JSONResponse) -> int:
        response = _with_cors(response, self._node.config.endpoint.cors)
        json_response(request, response.code, response.body, headers=response.headers)
        self._complete(exchange, response.code)
        return NOT_DONE_YET

    async def _put(self, request: HTTPRequest, token: str, exchange: _Exchange) -> JSONResponse:
        """Run the PUT and return its answer; every error becomes its JSON answer."""
        metrics = self._node.metrics
        metrics.increment("notifications_received")
        try:
            response = await self._update(request, token, exchange)
        except Exception as e:
            reason = _reject_reason(e)
            if reason == "internal_error":
                self.log.failure("endpoint update failed {uaid_hash}", uaid_hash=exchange.uaid_hash)
            metrics.increment("notifications_rejected", reason=reason)
            response = error_response(e)
        self._complete(exchange, response.code)
        return _with_cors(response, self._node.config.endpoint.cors)

    async def _update(self, request: HTTPRequest, token: str, exchange: _Exchange) -> JSONResponse:
        """Validate, store, then deliver; raise for every error answer."""
        node = self._node
        try:
            uaid, chid = node.crypto.parse(token)
        except InvalidToken as e:
            self.log.debug("invalid token: {detail}", detail=str(e))
            raise _invalid_token() from None
        exchange.uaid_hash = self._uaid_hash(uaid)
        fields = request_fields(request)
        if fields.ignored_type is not None:
            node.metrics.increment("notifications_body_ignored")
            self._ignored.seen(fields.ignored_type, node.clock.seconds(), self.log)
        version = _parse_version(fields.version, node.clock.seconds())
        data = _parse_data(fields.data, node.config.endpoint.max_data)

        stored_data = data if node.config.storage.store_data else None
        try:
            result = await node.storage.update(
                uaid,
                chid,
                version,
                stored_data,
                only_newer=node.config.endpoint.monotonic_versions,
            )
        except StorageUnavailable as e:
            self.log.warn(
                "storage unavailable {uaid_hash}: {detail}",
                uaid_hash=exchange.uaid_hash,
                detail=str(e),
                error_type=type(e).__name__,
            )
            raise
        except Exception as e:
            self.log.failure("storage update failed {uaid_hash}", uaid_hash=exchange.uaid_hash)
            raise StorageUnavailable("storage update failed") from e

        if result.outcome is UpdateOutcome.GONE:
            raise WebError(410, 106, "Gone")
        if result.outcome is UpdateOutcome.STALE:
            self.log.info(
                "stale version {version} ignored {uaid_hash}",
                version=version,
                uaid_hash=exchange.uaid_hash,
            )
            node.metrics.increment("notifications_rejected", reason="stale")
            return JSONResponse(code=200)

        node.metrics.increment("notifications_stored")
        # notifications_delivered is counted by the session that wrote it to
        # its socket (on whichever node holds it), once per update.  The
        # router decides (and never fails); an unexpected error here means
        # 202 as well: the update is stored, the client gets it at its next
        # hello or retry.
        try:
            delivered = await node.router.deliver(uaid, result.channel_id or chid, version, data)
        except Exception:
            self.log.failure("routing failed {uaid_hash}", uaid_hash=exchange.uaid_hash)
            delivered = False
        return JSONResponse(code=200 if delivered else 202)

    def _complete(self, exchange: _Exchange, status: int) -> None:
        """Record the metrics and the one access line of a request."""
        latency = max(0.0, self._node.clock.seconds() - exchange.started)
        label = str(status)
        self._node.metrics.increment("endpoint_requests", status=label)
        self._node.metrics.observe("endpoint_latency_seconds", latency, status=label)
        access = self.access_log
        if access.enabled:
            method, latency, hashed = exchange.method, round(latency, 6), exchange.uaid_hash
            access.line(
                f"{method} /update/ {status} in {latency}s {hashed}",
                method=method,
                status=status,
                latency=latency,
                uaid_hash=hashed,
            )


def _oversize_body(target: bytes, message: str) -> dict[str, object]:
    """The early 413's body: WebPush's (errno 104, ``more_info``) under ``/wpush/``."""
    if target.startswith(b"/wpush/"):
        return WebPushError(413, Errno.PAYLOAD_TOO_LARGE, message).to_json()
    return error_body(413, 302, message)


def build_endpoint_root(node: Node) -> Resource:
    """Return the endpoint listener's root: ``update`` -> ``UpdateResource``, and the
    WebPush routes ``wpush`` -> ``WebPushResource``, ``m`` -> ``MessageResource``.

    Other children (status, metrics) are added later with ``putChild``; any
    other path is a JSON 404.
    """
    root = JSONRoot(_CORS_HEADERS if node.config.endpoint.cors else ())
    root.putChild(b"update", UpdateResource(node))
    root.putChild(b"wpush", WebPushResource(node))
    root.putChild(b"m", MessageResource(node))
    return root


def _access_filter(health: bool) -> Callable[[HTTPRequest], bool]:
    """The endpoint listener's access-log filter.

    ``/update/``, ``/wpush/`` and ``/m/`` requests are left out (their
    resources write their one line, without the token or message id); so are
    ``/status`` and ``/health`` unless ``health``.  The filter sees the path
    as routed (percent-decoded).
    """
    routes = {b"update", b"wpush", b"m"}
    skipped = routes if health else routes | {b"status", b"health"}

    def access_logged(request: HTTPRequest) -> bool:
        routed = request.prepath
        return not routed or routed[0] not in skipped

    return access_logged


def build_endpoint_site(node: Node) -> ListenerSite:
    """Return the endpoint listener's ``Site`` for ``node``, timed by ``node.clock``.

    Its transport policy (``pushtwisted.web._site``): bodies over
    ``endpoint.max_body`` answered 413 before they are read (with the CORS
    headers when ``endpoint.cors`` is set, and counted as
    ``notifications_rejected{reason="body_too_large"}`` and
    ``endpoint_requests{status="413"}``), ``endpoint.max_connections``, a
    request deadline of ``endpoint.request_timeout`` seconds (408, counted as
    ``endpoint_requests{status="408"}``), and a scrubbed access log without
    the ``/update/`` lines (``UpdateResource`` logs them) and, with
    ``server.access_log_health`` off, without ``/status`` and ``/health``.
    """
    endpoint = node.config.endpoint
    metrics = node.metrics

    def count_oversize() -> None:
        metrics.increment("notifications_rejected", reason="body_too_large")
        metrics.increment("endpoint_requests", status="413")

    def count_timeout() -> None:
        metrics.increment("endpoint_requests", status="408")

    return ListenerSite(
        build_endpoint_root(node),
        max_body=endpoint.max_body,
        limit=ConnectionLimit("endpoint", endpoint.max_connections, node.clock, metrics),
        access_log=_access_filter(node.config.server.access_log_health),
        oversize_headers=_CORS_HEADERS if endpoint.cors else (),
        on_oversize=count_oversize,
        oversize_body=_oversize_body,
        request_timeout=endpoint.request_timeout,
        on_request_timeout=count_timeout,
        reactor=node.clock,
    )
