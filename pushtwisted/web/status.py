"""Operational endpoints: ``/status`` (liveness), ``/health`` (readiness), ``/metrics``.

- ``GET /status`` always answers 200
  ``{"status": "OK", "version": "<pushtwisted version>", "clients": <n>}``
  where ``clients`` counts the UAIDs connected to this node.  It proves the
  process serves HTTP; load balancers use it.
- ``GET /health`` probes storage with ``Storage.check()``, bounded by a
  timeout on the node's clock, and answers 200
  ``{"status": "OK", "storage": "OK", "version": ..., "clients": ...}`` or 503
  ``{"status": "FAIL", "storage": "unavailable: <reason>", ...}``.  The reason
  is a short text (the storage error's message, or the timeout); the
  traceback goes to the log, never to the wire.
- ``GET /metrics`` answers the Prometheus text exposition of a
  ``PrometheusMetrics``.

Each resource answers with or without a trailing slash (a deeper path is the
JSON 404), answers ``HEAD`` like ``GET`` without a body, and rejects every
other method with 405 (the one JSON error shape, with ``Allow: GET, HEAD``).
Every answer carries ``Cache-Control: no-store``.

The endpoint listener serves all three (``add_status_children``).  The
WebSocket listener serves ``/status`` and ``/health`` through the same
resources, under ``build_status_site``: Autobahn hands it every request
that is not a WebSocket upgrade (``pushtwisted.websocket``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

import pushtwisted
from pushtwisted.connlimit import ConnectionLimit
from pushtwisted.errors import StorageError
from pushtwisted.logs import logger
from pushtwisted.node import Node
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.web._site import ListenerSite
from pushtwisted.web._util import (
    HTTPRequest,
    JSONNotFound,
    JSONResponse,
    JSONRoot,
    WebError,
    error_response,
    json_response,
    render_async,
)

__all__ = [
    "HealthResource",
    "MetricsResource",
    "StatusResource",
    "add_status_children",
    "build_status_site",
    "check_health",
    "HEALTH_TIMEOUT",
]

_ALLOWED = (b"GET", b"HEAD")
_NO_STORE = (b"Cache-Control", b"no-store")
#: Seconds the ``/health`` storage check may take by default.
HEALTH_TIMEOUT = 2.0
#: Longest storage failure reason put in a ``/health`` answer.
_MAX_REASON = 200
#: Largest request body ``build_status_site`` reads (its GETs carry none).
_STATUS_MAX_BODY = 4096


class _ReadOnlyResource(Resource):
    """A leaf-like resource: GET/HEAD only, same answer with a trailing slash."""

    def __init__(self) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]

    def getChild(self, path: bytes, request: HTTPRequest) -> IResource:
        """Return self for the empty segment (``/x/``), else the JSON 404."""
        if path == b"":
            return self
        return JSONNotFound()

    def render(self, request: HTTPRequest) -> bytes | int:
        """Answer 405 for methods other than GET and HEAD; HEAD renders GET."""
        if request.method not in _ALLOWED:
            response = error_response(
                WebError(
                    405, 304, "Method Not Allowed", headers=((b"Allow", b"GET, HEAD"), _NO_STORE)
                )
            )
            json_response(request, response.code, response.body, headers=response.headers)
            return NOT_DONE_YET
        request.setHeader(*_NO_STORE)
        return self.render_GET(request)

    def render_GET(self, request: HTTPRequest) -> bytes | int:
        """Answer the GET (and HEAD) request."""
        raise NotImplementedError


class StatusResource(_ReadOnlyResource):
    """``GET /status``: liveness, always 200 with the version and client count.

    :param node: the node whose connected clients are counted.
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def render_GET(self, request: HTTPRequest) -> bytes | int:
        """Answer 200 ``{"status": "OK", "version": ..., "clients": ...}``."""
        body = {
            "status": "OK",
            "version": pushtwisted.__version__,
            "clients": len(self._node.registry),
        }
        json_response(request, 200, body)
        return NOT_DONE_YET


class HealthResource(_ReadOnlyResource):
    """``GET /health``: readiness, 200 when storage answers its check in time, else 503.

    :param node: the node whose storage is probed, on whose clock the timeout runs.
    :param timeout: seconds the storage check may take before it counts as failed.
    """

    def __init__(self, node: Node, timeout: float = HEALTH_TIMEOUT) -> None:
        super().__init__()
        self._node = node
        self._timeout = timeout

    def render_GET(self, request: HTTPRequest) -> bytes | int:
        """Probe storage and answer 200 or 503 when it is done."""
        return render_async(request, self._health())

    async def _health(self) -> JSONResponse:
        code, body = await check_health(self._node, self._timeout)
        return JSONResponse(code=code, body=body, headers=(_NO_STORE,))


_log = logger()


async def check_health(node: Node, timeout: float) -> tuple[int, dict[str, Any]]:
    """Probe ``node``'s storage; return the ``/health`` status code and JSON body.

    200 ``{"status": "OK", "storage": "OK", ...}`` when ``Storage.check()``
    succeeds within ``timeout`` seconds (on the node's clock), else 503
    ``{"status": "FAIL", "storage": "unavailable: <reason>", ...}``.  Never raises.
    """
    storage = await _check_storage(node, timeout)
    healthy = storage == "OK"
    body = {
        "status": "OK" if healthy else "FAIL",
        "storage": storage,
        "version": pushtwisted.__version__,
        "clients": len(node.registry),
    }
    return (200 if healthy else 503), body


async def _check_storage(node: Node, timeout: float) -> str:
    """Return ``"OK"`` or ``"unavailable: <reason>"``."""
    check: Deferred[Any] = maybeDeferred(node.storage.check)
    check.addTimeout(timeout, node.clock)
    try:
        await check
    except DeferredTimeout:
        _log.warn("storage check timed out after {timeout}s", timeout=timeout)
        return f"unavailable: no answer within {timeout:g}s"
    except StorageError as e:
        _log.warn("storage check failed: {error}", error=str(e))
        return f"unavailable: {_reason(e)}"
    except Exception:
        _log.failure("storage check raised")
        return "unavailable: internal error"
    return "OK"


def _reason(error: BaseException) -> str:
    """Return a short one-line reason for ``error``."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:_MAX_REASON]


class MetricsResource(_ReadOnlyResource):
    """``GET /metrics``: the Prometheus text exposition of ``metrics``.

    :param metrics: the metrics to render.
    """

    log = logger()

    def __init__(self, metrics: PrometheusMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: HTTPRequest) -> bytes | int:
        """Answer 200 with the exposition and its content type (500 if rendering fails)."""
        try:
            body, content_type = self._metrics.render()
        except Exception:
            self.log.failure("rendering metrics failed")
            response = error_response(RuntimeError())
            json_response(request, response.code, response.body)
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body


def add_status_children(
    root: Resource,
    node: Node,
    metrics: PrometheusMetrics | None = None,
    *,
    health_timeout: float = HEALTH_TIMEOUT,
) -> None:
    """Put ``status`` and ``health`` (and ``metrics`` when given) under ``root``."""
    root.putChild(b"status", StatusResource(node))
    root.putChild(b"health", HealthResource(node, timeout=health_timeout))
    if metrics is not None:
        root.putChild(b"metrics", MetricsResource(metrics))


def build_status_site(node: Node, *, limit: ConnectionLimit, timeout: float) -> ListenerSite:
    """Return the ``Site`` of the WebSocket listener's plain HTTP requests.

    ``/status`` and ``/health`` (no ``/metrics``), the JSON 404 elsewhere; one
    request per connection (``Connection: close``, as Autobahn's own status
    page did), no access log.

    :param limit: the WebSocket listener's ``ConnectionLimit``: a connection
        handed over keeps its place on it until it closes.
    :param timeout: seconds a connection may stay idle (an unfinished
        request); 0 means no limit.
    """
    root = JSONRoot()
    add_status_children(root, node)
    return ListenerSite(
        root,
        max_body=_STATUS_MAX_BODY,
        limit=limit,
        keep_alive=False,
        timeout=timeout if timeout > 0 else None,
        reactor=node.clock,
    )
