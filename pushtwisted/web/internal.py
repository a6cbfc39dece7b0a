"""The router listener: the node-to-node HTTP API, served on a private port only.

Every request must be signed with the cluster's shared secret
(``pushtwisted.cluster.signing``); the signature is checked before anything
else, so an unsigned, stale, replayed or wrongly signed request is answered a
bare 401 whatever its path or method, and a device or app server that reaches
this port learns nothing; refusals are logged in aggregate (``RefusalLog``).
UAIDs are in normal form (32 lower-case hex).

=======================================  =====================================================
request                                  answer
=======================================  =====================================================
``PUT /push/<uaid>``                     200 the local session took the update (or
JSON: a SimplePush update or a           WebPush message); 404 no session here (or it is
WebPush message (``cluster.pushes``)     closing, or refused it); 400 the body is not
                                         one of those JSON objects
``PUT /notif/<uaid>``                    200 the local session was told to read storage again
                                         and send what is pending; 404 no session here
``DELETE /notif/<uaid>/<connected_at>``  200 the local session, connected at or before
                                         ``connected_at`` (ms of this node's clock), was
                                         closed as replaced; 404 no such session; 400 a
                                         ``connected_at`` that is not an integer
any request without a good signature     401
another method on those paths            405 (``Allow``)
any other path                           404
=======================================  =====================================================

Every answer is JSON: ``{}`` on success, the one error shape of
``pushtwisted.web._util`` otherwise.  The access log is off on this listener
(paths carry UAIDs); each request is logged once with the UAID hashed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.cluster.pushes import Update, parse_push
from pushtwisted.cluster.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RefusalLog,
    RequestSigner,
    SignatureError,
)
from pushtwisted.ids import is_valid_id
from pushtwisted.logs import logger, uaid_hash
from pushtwisted.metrics import Metrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import RoutedSession
from pushtwisted.web._site import ListenerSite
from pushtwisted.web._util import HTTPRequest, JSONResponse, error_body, json_response

__all__ = ["InternalResource", "build_internal_site"]

_MAX_CONNECTED_AT_DIGITS = 18
_UNAUTHORIZED_ERRNO = 109


def _error(code: int, errno: int, message: str, **headers: bytes) -> JSONResponse:
    extra = tuple((name.encode("ascii"), value) for name, value in headers.items())
    return JSONResponse(code=code, body=error_body(code, errno, message), headers=extra)


_UNAUTHORIZED = _error(401, _UNAUTHORIZED_ERRNO, "Unauthorized")
_NOT_FOUND = _error(404, 102, "Not Found")
_BAD_BODY = _error(400, 303, "Invalid request body")
_OK = JSONResponse(code=200)


def _not_allowed(allow: bytes) -> JSONResponse:
    return _error(405, 304, "Method Not Allowed", Allow=allow)


class InternalResource(Resource):
    """The whole router listener: check the signature, then dispatch by path.

    :param registry: this node's connected sessions (``RoutedSession``).
    :param signer: verifies every request's signature.
    :param metrics: where requests are counted (``router_received``).
    :param clock: the reactor's time (request latency in the log).
    """

    isLeaf = True
    log = logger()

    def __init__(
        self,
        registry: ClientRegistry[Any],
        signer: RequestSigner,
        metrics: Metrics,
        clock: IReactorTime,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._signer = signer
        self._metrics = metrics
        self._clock = clock
        self._refusals = RefusalLog(clock)

    def render(self, request: HTTPRequest) -> int:
        """Answer one request synchronously (every handler is immediate)."""
        started = self._clock.seconds()
        kind, uaid, response = self._answer(request)
        json_response(request, response.code, response.body, headers=response.headers)
        self._metrics.increment("router_received", kind=kind, status=str(response.code))
        self.log.info(
            "{method} /{kind}/ {status} in {latency}s {uaid_hash}",
            method=request.method.decode("ascii", "replace"),
            kind=kind,
            status=response.code,
            latency=round(max(0.0, self._clock.seconds() - started), 6),
            uaid_hash=uaid_hash(uaid) if uaid else "",
        )
        return NOT_DONE_YET

    def _answer(self, request: HTTPRequest) -> tuple[str, str | None, JSONResponse]:
        """Return the metric kind, the UAID (when the path names one) and the answer."""
        content = request.content
        if content is not None:
            content.seek(0)
        body = content.read() if content is not None else b""
        try:
            self._signer.verify(
                request.method,
                request.uri,
                {
                    TIMESTAMP_HEADER: request.getHeader(TIMESTAMP_HEADER),
                    NONCE_HEADER: request.getHeader(NONCE_HEADER),
                    SIGNATURE_HEADER: request.getHeader(SIGNATURE_HEADER),
                },
                body,
            )
        except SignatureError as e:
            self._refusals.refused(e)
            return "unauthorized", None, _UNAUTHORIZED
        segments = [s.decode("ascii", "replace") for s in request.postpath or []]
        if len(segments) < 2 or segments[0] not in ("push", "notif") or len(segments) > 3:
            return "unknown", None, _NOT_FOUND
        kind, uaid = segments[0], segments[1]
        if not is_valid_id(uaid) or uaid != uaid.lower() or len(uaid) != 32:
            return "unknown", None, _NOT_FOUND
        method = request.method
        if kind == "push" and len(segments) == 2:
            if method != b"PUT":
                return kind, uaid, _not_allowed(b"PUT")
            return kind, uaid, self._push(uaid, body)
        if kind == "notif" and len(segments) == 2:
            if method != b"PUT":
                return kind, uaid, _not_allowed(b"PUT")
            return kind, uaid, self._notif(uaid)
        if kind == "notif":
            if method != b"DELETE":
                return "kick", uaid, _not_allowed(b"DELETE")
            return "kick", uaid, self._kick(uaid, segments[2])
        return "unknown", None, _NOT_FOUND

    def _session(self, uaid: str) -> RoutedSession | None:
        session: RoutedSession | None = self._registry.get(uaid)
        return session

    def _push(self, uaid: str, body: bytes) -> JSONResponse:
        push = parse_push(body)
        if push is None:
            return _BAD_BODY
        session = self._session(uaid)
        if session is None:
            return _NOT_FOUND
        if isinstance(push, Update):
            update = push
            delivered = self._safely(
                lambda: session.deliver(update.channel_id, update.version, update.data), uaid
            )
        else:
            message = push
            delivered = self._safely(lambda: session.deliver_message(message), uaid)
        return _OK if delivered else _NOT_FOUND

    def _notif(self, uaid: str) -> JSONResponse:
        session = self._session(uaid)
        if session is None:
            return _NOT_FOUND

        def check() -> bool:
            d = session.check_storage()
            d.addErrback(
                lambda f: self.log.failure(
                    "check_storage failed {uaid_hash}", f, uaid_hash=uaid_hash(uaid)
                )
            )
            return True

        return _OK if self._safely(check, uaid) else _NOT_FOUND

    def _kick(self, uaid: str, raw: str) -> JSONResponse:
        if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_CONNECTED_AT_DIGITS:
            return _error(400, 303, "Invalid connected_at")
        connected_at = int(raw)
        session = self._session(uaid)
        if session is None:
            return _NOT_FOUND
        held_since = session.connected_at
        if held_since is None or held_since > connected_at:
            # A newer connection arrived here after the kick was sent: keep it.
            return _NOT_FOUND

        def kick() -> bool:
            session.replaced()
            return True

        return _OK if self._safely(kick, uaid) else _NOT_FOUND

    def _safely(self, call: Callable[[], bool], uaid: str) -> bool:
        try:
            return bool(call())
        except Exception:
            self.log.failure("node request failed {uaid_hash}", uaid_hash=uaid_hash(uaid))
            return False


def build_internal_site(
    registry: ClientRegistry[Any],
    signer: RequestSigner,
    metrics: Metrics,
    clock: IReactorTime,
    *,
    max_body: int = 65536,
) -> ListenerSite:
    """Return the router listener's ``Site``, timed by ``clock``.

    Its transport policy (``pushtwisted.web._site``): bodies over
    ``max_body`` answered 413 before they are read, and no access log
    (``InternalResource`` logs each request with the UAID hashed).
    """
    resource = InternalResource(registry, signer, metrics, clock)
    return ListenerSite(resource, max_body=max_body, reactor=clock)
