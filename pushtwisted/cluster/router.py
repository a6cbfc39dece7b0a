"""``Router``: deliver an update to its device, on whichever node it is connected.

The ``pushtwisted.routing.Router`` of a node in a cluster.  The endpoint has
already *stored* the update when it calls ``deliver`` (or ``route``), so
every failure below ends in "stored" (202): the device gets the update at
its next hello, or at once if a node is told to check storage.  Only a
confirmed hand-over to a live socket is "delivered" (200).

A WebPush message (``deliver_message``, ``route_message``) follows the same
table, with ``LocalRouter.deliver_message_here`` in step 1 and the message
(``pushtwisted.cluster.pushes``) as the body of step 3; the endpoint answers
201 whatever the outcome.  A message with TTL 0 is not in storage, so at
step 4a it is handed to the node that appeared (itself, not a "check
storage"); when nobody takes it, it is dropped.

Decision table of ``route(uaid, channel_id, version, data)``:

====  ==============================================  ==========================================
step  condition                                       action and outcome
====  ==============================================  ==========================================
1     a session on this node holds the UAID and       ``LOCAL`` (200)
      takes the update (``LocalRouter.deliver_here``)
2     the directory read fails                        ``DIRECTORY_FAILED`` (202)
3     the entry names another node                    signed ``PUT {node}/push/{uaid}``:
3a      it answers 200                                ``REMOTE`` (200)
3b      404: the device is not there (it moved, or    go to 4 (the entry is left alone: the
        is between hello and ready)                   node that now holds it rewrote it)
3c      connection refused / host unreachable         ``clear_node(entry)`` (compare-and-set:
                                                      only while unchanged), then 4
3d      timeout, another status, another error        go to 4 (a slow node may still hold it)
4     no entry, this node's own entry (a hello in     re-read the directory once:
      progress here or a socket just closed), or 3b-d
4a      a different entry appeared                    tell its node to check storage (this
                                                      node: ``session.check_storage()``;
                                                      another: signed ``PUT {node}/notif/{uaid}``)
                                                      -> ``NOTIFIED`` (202); a TTL-0 message is
                                                      handed to that node instead: ``LOCAL`` or
                                                      ``REMOTE`` when taken, else
                                                      ``NOT_CONNECTED`` / ``NODE_FAILED``
4b      nothing new                                   ``NOT_CONNECTED`` (no node was tried) or
                                                      ``NODE_FAILED`` (202)
====  ==============================================  ==========================================

Why no update is lost in the reconnect race: a hello writes the directory
*before* it reads storage (``on_hello`` before ``fetch_pending``), and the
endpoint stores *before* it reads the directory.  Whichever of the two reads
comes second sees the other's write.  The re-read of step 4 covers the
window where the device moves while a forward is in flight.

Newest connection wins: ``on_hello`` replaces the directory entry and, when
the replaced entry belonged to another node, sends it
``DELETE {node}/notif/{uaid}/{connected_at}`` with the *replaced entry's*
``connected_at``.  That node closes its socket for the UAID only if that
socket's ``connected_at`` is not newer, so both sides of the comparison come
from the same node's clock and clock skew between hosts cannot close the
wrong socket.  The order of directory writes (serialised by memcached's
compare-and-set) decides which connection is the newest.

Every node-to-node request is signed (``signing``), bounded by ``timeout``
seconds on the injected clock, and counted in ``router_requests`` by kind and
result.  The router keeps no per-request state on itself, so concurrent
requests cannot interfere.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import readBody

from pushtwisted.cluster.directory import Directory, NodeEntry
from pushtwisted.cluster.pushes import message_body, update_body
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.logs import logger, uaid_hash
from pushtwisted.metrics import Metrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import HelloClaim, LocalRouter, RoutedSession
from pushtwisted.storage.interface import StoredMessage

__all__ = ["HTTPClient", "RouteOutcome", "Router"]


class HTTPClient(Protocol):
    """The part of ``treq.client.HTTPClient`` the router uses (``StubTreq`` in tests)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Send a request (``data=`` body bytes, ``headers=``); fire with the response."""


class RouteOutcome(enum.Enum):
    """What ``Router.route`` did with a stored update."""

    #: Handed to a session on this node.
    LOCAL = "local"
    #: The node holding the UAID confirmed it handed it over.
    REMOTE = "remote"
    #: No node holds the UAID; it waits in storage.
    NOT_CONNECTED = "not_connected"
    #: The holding node said "not here", could not be reached or timed out.
    NODE_FAILED = "node_failed"
    #: A node appeared on the re-read and was told to check storage.
    NOTIFIED = "notified"
    #: The directory could not be read; the update waits in storage.
    DIRECTORY_FAILED = "directory_failed"

    @property
    def delivered(self) -> bool:
        """True when a live socket took the update (the endpoint answers 200)."""
        return self in (RouteOutcome.LOCAL, RouteOutcome.REMOTE)


class _Result(enum.Enum):
    """The result of one node-to-node request (the ``result`` metric label)."""

    OK = "ok"
    NOT_FOUND = "not_found"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    ERROR = "error"


#: Errors meaning "nothing listens there": the entry's node is gone.
_UNREACHABLE = (ConnectError, DNSLookupError, ConnectionRefusedError)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """What ``Router._route`` needs of an update or message, whichever it is."""

    #: Hand it to the session on this node holding the UAID; True when taken.
    here: Callable[[], bool]
    #: The body of ``PUT /push`` that hands it to another node.
    body: Callable[[], bytes]
    #: It waits in storage (a node told to check storage finds it).
    stored: bool


def _timed_out(result: object, timeout: float) -> object:
    """Whatever the cancelled request failed with, report a timeout."""
    raise TimeoutError(f"node request took more than {timeout} s")


class Router:
    """Route stored updates to the node holding the device; keep the directory.

    The ``pushtwisted.routing.Router`` of a cluster node.

    :param node_url: this node's router URL (``[router] public_url``), as
        written in the directory.
    :param directory: the shared ``uaid -> node`` directory.
    :param registry: this node's connected sessions (``RoutedSession``).
    :param http: a treq ``HTTPClient`` with its own connection pool.
    :param signer: signs every node-to-node request.
    :param clock: the reactor's time (timeouts, ``connected_at``).
    :param timeout: seconds one node-to-node request may take, body included.
    :param metrics: where routing is counted.
    """

    log = logger()

    def __init__(
        self,
        *,
        node_url: str,
        directory: Directory,
        registry: ClientRegistry[Any],
        http: HTTPClient,
        signer: RequestSigner,
        clock: IReactorTime,
        timeout: float,
        metrics: Metrics,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self.node_url = node_url.rstrip("/")
        self.directory = directory
        self._registry = registry
        self._local = LocalRouter(registry)
        self._http = http
        self._signer = signer
        self._clock = clock
        self._timeout = timeout
        self._metrics = metrics

    # -- the endpoint's side ----------------------------------------------------

    async def deliver(self, uaid: str, channel_id: str, version: int, data: str | None) -> bool:
        """Route a stored update; True when a live socket took it (see ``route``)."""
        outcome = await self.route(uaid, channel_id, version, data)
        return outcome.delivered

    async def route(
        self, uaid: str, channel_id: str, version: int, data: str | None
    ) -> RouteOutcome:
        """Route a stored update following the module's decision table; never fails."""
        local = self._local
        return await self._route(
            uaid,
            _Delivery(
                here=lambda: local.deliver_here(uaid, channel_id, version, data),
                body=lambda: update_body(channel_id, version, data),
                stored=True,
            ),
        )

    async def deliver_message(self, uaid: str, message: StoredMessage) -> bool:
        """Route a WebPush message; True when a live socket took it (see ``route_message``)."""
        outcome = await self.route_message(uaid, message)
        return outcome.delivered

    async def route_message(self, uaid: str, message: StoredMessage) -> RouteOutcome:
        """Route a WebPush message following the module's decision table; never fails."""
        local = self._local
        return await self._route(
            uaid,
            _Delivery(
                here=lambda: local.deliver_message_here(uaid, message),
                body=lambda: message_body(message),
                stored=message.ttl > 0,
            ),
        )

    async def _route(self, uaid: str, delivery: _Delivery) -> RouteOutcome:
        # 1. A session here.
        if delivery.here():
            return self._outcome(RouteOutcome.LOCAL)
        # 2. The directory.
        try:
            entry = await self.directory.get_node(uaid)
        except Exception as e:
            self._directory_failed("get", uaid, e)
            return self._outcome(RouteOutcome.DIRECTORY_FAILED)
        tried = False
        if entry is not None and entry.node_url != self.node_url:
            # 3. Forward to the node that holds it.
            tried = True
            result = await self._push(uaid, entry, delivery)
            if result is _Result.OK:
                return self._outcome(RouteOutcome.REMOTE)
            if result is _Result.UNREACHABLE:
                await self._clear_dead(uaid, entry)
        # 4. Re-read once: has the device appeared somewhere else meanwhile?
        try:
            fresh = await self.directory.get_node(uaid)
        except Exception as e:
            self._directory_failed("get", uaid, e)
            return self._outcome(RouteOutcome.DIRECTORY_FAILED)
        if fresh is not None and fresh != entry:
            if delivery.stored:
                await self._check_storage(uaid, fresh)
                return self._outcome(RouteOutcome.NOTIFIED)
            return self._outcome(await self._hand_over(uaid, fresh, delivery))
        return self._outcome(RouteOutcome.NODE_FAILED if tried else RouteOutcome.NOT_CONNECTED)

    async def _push(self, uaid: str, entry: NodeEntry, delivery: _Delivery) -> _Result:
        """Send ``PUT /push/{uaid}`` with the delivery to the node of ``entry``."""
        return await self._call("push", b"PUT", entry.node_url, f"/push/{uaid}", delivery.body())

    async def _hand_over(self, uaid: str, entry: NodeEntry, delivery: _Delivery) -> RouteOutcome:
        """Step 4a of a delivery not in storage: hand it to the node of ``entry``."""
        if entry.node_url == self.node_url:
            return RouteOutcome.LOCAL if delivery.here() else RouteOutcome.NOT_CONNECTED
        result = await self._push(uaid, entry, delivery)
        return RouteOutcome.REMOTE if result is _Result.OK else RouteOutcome.NODE_FAILED

    async def _clear_dead(self, uaid: str, entry: NodeEntry) -> None:
        """Clear the entry of a node that refused the connection, if still unchanged."""
        try:
            cleared = await self.directory.clear_node(uaid, entry)
        except Exception as e:
            self._directory_failed("clear", uaid, e)
            return
        self.log.info(
            "unreachable node {node} {uaid_hash}: entry cleared={cleared}",
            node=entry.node_url,
            uaid_hash=uaid_hash(uaid),
            cleared=cleared,
        )

    async def _check_storage(self, uaid: str, entry: NodeEntry) -> None:
        """Tell the node of ``entry`` that storage has something for ``uaid``."""
        if entry.node_url == self.node_url:
            session: RoutedSession | None = self._registry.get(uaid)
            if session is None:
                return  # its hello is in progress here: it reads storage after the write
            try:
                await session.check_storage()
            except Exception:
                self.log.failure(
                    "local check_storage failed {uaid_hash}", uaid_hash=uaid_hash(uaid)
                )
            return
        await self._call("notif", b"PUT", entry.node_url, f"/notif/{uaid}", b"")

    # -- the session's side -----------------------------------------------------

    def on_hello(self, uaid: str, connected_at: int, fresh: bool = False) -> Deferred[None]:
        """Record this node as the holder of ``uaid``; kick the previous node's socket.

        Fires once the directory entry is written (call it *before* reading
        storage); the kick is sent in the background.  Errbacks with the
        directory's error (``StorageUnavailable``) when the write fails.
        """
        return Deferred.fromCoroutine(self._on_hello(uaid, connected_at, fresh))

    async def _on_hello(self, uaid: str, connected_at: int, fresh: bool) -> None:
        previous = await self.directory.set_node(uaid, self.node_url, connected_at, fresh)
        self.kick_previous(uaid, previous)

    def kick_previous(self, uaid: str, previous: object) -> None:
        """Ask the node of the entry a hello replaced to close its socket (in the background)."""
        if not isinstance(previous, NodeEntry) or previous.node_url == self.node_url:
            # Nobody, or an older socket here: the registry closes that one.
            return
        path = f"/notif/{uaid}/{previous.connected_at}"
        kick = Deferred.fromCoroutine(self._call("kick", b"DELETE", previous.node_url, path, b""))
        kick.addErrback(lambda f: self.log.failure("kick failed", f))

    def claim(self, connected_at: int) -> _DirectoryClaim:
        """The hello's claim for ``Storage.open_user``: ``on_hello``, also as steps."""
        return _DirectoryClaim(self, connected_at)

    def on_disconnect(self, uaid: str, connected_at: int) -> Deferred[bool]:
        """Remove this node's entry for the connection that closed, if still its own.

        Fires True when the entry was removed; never fails (errors are logged).
        """
        entry = NodeEntry(node_url=self.node_url, connected_at=connected_at)
        d = self.directory.clear_node(uaid, entry)

        def failed(failure: Failure) -> bool:
            self._directory_failed("clear", uaid, failure.value)
            return False

        return d.addErrback(failed)

    # -- node-to-node requests --------------------------------------------------

    async def _call(
        self, kind: str, method: bytes, node_url: str, path: str, body: bytes
    ) -> _Result:
        """Send one signed request to another node; return how it went (never raises)."""
        url = node_url.rstrip("/") + quote(path)
        started = self._clock.seconds()
        exchange = Deferred.fromCoroutine(self._exchange(method, url, body))
        exchange.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
        try:
            status = await exchange
        except Exception as e:
            result = self._classify(e)
            self.log.info(
                "{kind} to {node} failed: {result} ({error})",
                kind=kind,
                node=node_url,
                result=result.value,
                error=type(e).__name__,
            )
        else:
            result = {200: _Result.OK, 404: _Result.NOT_FOUND}.get(status, _Result.ERROR)
            if result is _Result.ERROR:
                self.log.warn(
                    "{kind} to {node} answered {status}", kind=kind, node=node_url, status=status
                )
        self._metrics.increment("router_requests", kind=kind, result=result.value)
        self._metrics.observe("router_latency_seconds", self._clock.seconds() - started, kind=kind)
        return result

    async def _exchange(self, method: bytes, url: str, body: bytes) -> int:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers: dict[bytes, bytes] = dict(self._signer.sign(method, target.encode("ascii"), body))
        kwargs: dict[str, object] = {"headers": headers}
        if body:
            headers[b"Content-Type"] = b"application/json"
            kwargs["data"] = body
        response = await self._http.request(method.decode("ascii"), url, **kwargs)
        # Read the body so the connection goes back to the pool.
        await readBody(response)
        return int(response.code)

    @staticmethod
    def _classify(error: BaseException) -> _Result:
        if isinstance(error, (TimeoutError, CancelledError)):
            return _Result.TIMEOUT
        if isinstance(error, _UNREACHABLE):
            return _Result.UNREACHABLE
        return _Result.ERROR

    # -- bookkeeping ------------------------------------------------------------

    def _outcome(self, outcome: RouteOutcome) -> RouteOutcome:
        self._metrics.increment("route_outcomes", outcome=outcome.value)
        return outcome

    def _directory_failed(self, operation: str, uaid: str, error: BaseException | None) -> None:
        self._metrics.increment("directory_errors", operation=operation)
        self.log.warn(
            "directory {operation} failed {uaid_hash}: {error}",
            operation=operation,
            uaid_hash=uaid_hash(uaid),
            error=str(error),
        )


class _DirectoryClaim(HelloClaim):
    """``Router.on_hello`` as a ``Claim``, with the directory's steps when it has them."""

    __slots__ = ()
    _router: Router  # the cluster's router: its directory, node URL and kicks

    def steps(self, uaid: str) -> Generator[Any, Any, NodeEntry | None] | None:
        """The entry's write as memcached steps (the kick follows in ``landed``), or None."""
        router = self._router
        return router.directory.set_node_steps(uaid, router.node_url, self._connected_at)

    def landed(self, uaid: str, result: object) -> None:
        """The steps wrote the entry: kick the socket it replaced."""
        self._router.kick_previous(uaid, result)
