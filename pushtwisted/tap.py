"""The composition root: ``twistd simplepush`` builds the whole server here.

This is the only module that knows the concrete classes and the only one that
imports the reactor (inside ``makeService``).  ``build_service(config,
reactor)`` does the wiring and can be started on a ``MemoryReactorClock`` in
tests.

With ``[router] listen`` set the node joins a cluster (``docs/cluster.md``):
it also builds the memcached directory, an HTTP client with its own
persistent connection pool, the request signer and the ``Router`` (given to
the ``Node``), and a third listener serving the node-to-node API.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable
from typing import Any, cast

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from pushtwisted import _autobahn_tuning
from pushtwisted.cli import VersionedOptions, check_report, error_exit
from pushtwisted.cluster.directory import MemcachedDirectory
from pushtwisted.cluster.router import HTTPClient as RouterHTTPClient
from pushtwisted.cluster.router import Router
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.config import Config, load_config
from pushtwisted.errors import ConfigError
from pushtwisted.listeners import ReusePortError, listener_description
from pushtwisted.logs import filter_observers_at_begin, logger, set_log_level
from pushtwisted.metrics import Metrics, PrometheusMetrics
from pushtwisted.node import Node
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage.factory import build_storage, build_thread_pool
from pushtwisted.storage.interface import Storage
from pushtwisted.storage.memcached import make_memcached_client
from pushtwisted.threadpool import ThreadPoolService
from pushtwisted.tokens import EndpointCrypto, load_or_create_key
from pushtwisted.web.endpoint import build_endpoint_site
from pushtwisted.web.internal import build_internal_site
from pushtwisted.web.status import add_status_children
from pushtwisted.websocket import PushServerFactory

__all__ = ["Options", "PushService", "build_service", "makeService"]

#: Seconds between purges of expired tombstones (sqlite).
_PURGE_INTERVAL = 3600.0
#: Idle keep-alive connections kept per other node by the router's HTTP client.
_ROUTER_PERSISTENT_PER_NODE = 16
#: Seconds an idle keep-alive connection to another node is kept.
_ROUTER_IDLE_TIMEOUT = 120


class Options(VersionedOptions):
    """Command line of ``twistd simplepush``."""

    synopsis = "[--config FILE]"
    longdesc = (
        "Run a SimplePush server: a WebSocket listener for user agents and an HTTP "
        "listener where application servers PUT notifications to /update/<token>. "
        "Without --config the built-in defaults are used (see config.sample.toml). "
        "Environment variables SIMPLEPUSH_<SECTION>_<KEY> (for example "
        "SIMPLEPUSH_WEBSOCKET_LISTEN=tcp:8080) override the file."
    )
    optFlags = [
        ["check-config", None, "Validate the configuration, print it (secrets masked) and exit."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: built-in defaults)."],
    ]


class PushService(MultiService):
    """The root service of one node; ``node`` holds the shared collaborators.

    Stopping it is a graceful shutdown, in this order: stop accepting on every
    listener; close every client with 1001 (going away) so devices reconnect
    elsewhere; wait, at most ``shutdown_timeout`` seconds, for the clients to
    go and for in-flight storage calls (accepted PUTs, and in a cluster the
    directory entries of the closed clients) to finish; close the storage;
    run ``closers`` in order (the router's HTTP connection pool, the
    directory's memcached client); stop the storage thread pool last.

    :ivar closers: calls made after the storage is closed; each may return a
        Deferred, which is waited for; a failure is logged and ignored.
    """

    log = logger()

    def __init__(
        self,
        node: Node,
        *,
        pool: ThreadPoolService | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node
        self.pool = pool
        self.shutdown_timeout = shutdown_timeout
        self.listeners: list[IService] = []
        self.closers: list[Callable[[], object]] = []

    def startService(self) -> None:
        """Start the children, then open the storage (sqlite creates its schema)."""
        super().startService()  # type: ignore[no-untyped-call]
        opener = getattr(self.node.storage, "open", None)
        if opener is not None:
            opener().addErrback(lambda f: self.log.failure("storage could not be opened", f))

    def stopService(self) -> Deferred[None]:
        """Shut down gracefully (see the class docstring); never fails."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.running = False
        clock = self.node.clock
        await DeferredList(
            [maybeDeferred(listener.stopService) for listener in self.listeners if listener.running]
        )
        sessions = self.node.registry.sessions()
        self.log.info("shutting down: closing {count} clients", count=len(sessions))
        for session in sessions:
            session.shutdown()
        deadline = clock.seconds() + self.shutdown_timeout
        while clock.seconds() < deadline and not self._drained():
            await deferLater(clock, 0.05, lambda: None)
        if not self._drained():
            self.log.warn(
                "shutdown timeout: {clients} clients, {calls} storage calls left",
                clients=len(self.node.registry),
                calls=self.pool.depth if self.pool is not None else 0,
            )
        try:
            await self.node.storage.close()
        except Exception:
            self.log.failure("storage close failed")
        for close in self.closers:
            try:
                await maybeDeferred(close)
            except Exception:
                self.log.failure("closing {closer} failed", closer=close)
        for child in reversed(list(self)):
            if child.running:
                await maybeDeferred(child.stopService)

    def _drained(self) -> bool:
        """True once no client is connected and no storage call is in flight."""
        busy = self.pool.depth if self.pool is not None else 0
        return len(self.node.registry) == 0 and busy == 0


def _token_keys(config: Config) -> list[str]:
    """Return the configured keys, or the one generated and kept in the state dir."""
    if config.crypto.keys:
        return list(config.crypto.keys)
    return [load_or_create_key(config.storage.path)]


def _build_storage(
    config: Config, reactor: Any, metrics: Metrics
) -> tuple[Storage, ThreadPoolService | None]:
    """Return the storage backend chosen by ``[storage]`` and its thread pool.

    ``memory`` needs no pool; ``sqlite`` and ``memcached`` run every blocking
    call on the dedicated pool returned here.
    """
    pool = None
    if config.storage.backend != "memory":
        pool = build_thread_pool(config.storage, reactor=reactor, metrics=metrics)
    storage = build_storage(config.storage, reactor=reactor, pool=pool, metrics=metrics)
    return storage, pool


def _check_cluster(config: Config) -> None:
    """Refuse a cluster configuration that cannot work, naming the key.

    ``RouterConfig`` checks its own keys; these involve other sections.

    :raises ConfigError: when ``router.listen`` is set with a backend other
        than memcached (the directory and the pending updates must be shared)
        or without ``crypto.keys`` (a key generated per node would make each
        node's pushEndpoints unreadable by the others).
    """
    if not config.router.enabled:
        return
    if config.storage.backend != "memcached":
        raise ConfigError(
            'router.listen: a cluster needs storage.backend = "memcached" (shared by every'
            f" node), got {config.storage.backend!r}"
        )
    if not config.crypto.keys:
        raise ConfigError(
            "crypto.keys: must be set, the same on every node, when router.listen is set"
        )


def _build_router(
    config: Config,
    reactor: Any,
    pool: ThreadPoolService,
    registry: ClientRegistry[Any],
    metrics: Metrics,
) -> tuple[Router, RequestSigner, HTTPConnectionPool, Callable[[], object]]:
    """Build the cluster's router and what it needs (``[router] listen`` is set).

    :returns: the router, the request signer (shared with the router
        listener), the HTTP connection pool and a call that closes the
        directory's memcached client (both closed by ``PushService``).
    """
    storage = config.storage
    client = make_memcached_client(
        storage.servers,
        pool_size=storage.pool_max_threads,
        connect_timeout=storage.connect_timeout,
        timeout=storage.timeout,
    )
    directory = MemcachedDirectory(
        client,
        pool.run,
        reactor,
        ttl=storage.ttl_registered,
        key_prefix=storage.key_prefix,
    )
    http_pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    http_pool.maxPersistentPerHost = _ROUTER_PERSISTENT_PER_NODE
    http_pool.cachedConnectionTimeout = _ROUTER_IDLE_TIMEOUT
    agent = Agent(  # type: ignore[no-untyped-call]  # Twisted: untyped
        reactor, connectTimeout=config.router.timeout, pool=http_pool
    )
    # treq's ``request`` takes its options as typed keywords, which the
    # router's structural ``HTTPClient`` (``**kwargs: Any``) cannot express.
    http = cast(RouterHTTPClient, HTTPClient(agent))
    signer = RequestSigner(config.router.secret, clock=reactor, max_skew=config.router.max_skew)
    router = Router(
        node_url=config.router.public_url.strip(),
        directory=directory,
        registry=registry,
        http=http,
        signer=signer,
        clock=reactor,
        timeout=config.router.timeout,
        metrics=metrics,
    )

    def close_directory() -> Deferred[None]:
        return pool.run("directory_close", client.close)

    return router, signer, http_pool, close_directory


def _router_max_body(config: Config) -> int:
    """Largest ``PUT /push`` body another node may send: the data, JSON-escaped."""
    # Each character of ``data`` is at most 6 bytes once JSON-escaped (\uXXXX).
    return max(config.endpoint.max_body, 6 * config.endpoint.max_data + 1024)


def build_service(config: Config, reactor: Any) -> PushService:
    """Wire one node from ``config`` and return its (not yet started) root service.

    :param reactor: provides ``IReactorTime`` and the listening interfaces the
        configured endpoint descriptions need (``MemoryReactorClock`` in tests).
    :raises ConfigError: when a token key or a listener description is invalid,
        or a cluster (``router.listen``) is configured without memcached or
        ``crypto.keys``.
    """
    _check_cluster(config)
    # Autobahn's eager debug formatting and per-frame native unmasking are
    # module-level names: replaced once, for the whole process.
    _autobahn_tuning.apply()
    crypto = EndpointCrypto(_token_keys(config))
    metrics = PrometheusMetrics()
    storage, pool = _build_storage(config, reactor, metrics)
    registry: ClientRegistry[Any] = ClientRegistry()
    cluster = None
    if config.router.enabled:
        assert pool is not None  # memcached, checked above
        cluster = _build_router(config, reactor, pool, registry, metrics)
    node = Node(
        config=config,
        storage=storage,
        registry=registry,
        crypto=crypto,
        clock=reactor,
        metrics=metrics,
        router=cluster[0] if cluster is not None else None,
    )
    root = PushService(node, pool=pool, shutdown_timeout=config.server.shutdown_timeout)
    if pool is not None:
        pool.setServiceParent(root)  # type: ignore[no-untyped-call]  # first child: stopped last
    purge = getattr(storage, "purge_expired", None)
    if purge is not None:
        timer = TimerService(_PURGE_INTERVAL, _log_errors(purge))  # type: ignore[no-untyped-call]
        timer.clock = reactor
        timer.setServiceParent(root)  # type: ignore[no-untyped-call]
    site = build_endpoint_site(node)
    add_status_children(site.resource, node, metrics)
    # (section, listen description, backlog, reuse_port, factory)
    listeners: list[tuple[str, str, int, bool, Any]] = [
        (
            "websocket",
            config.websocket.listen,
            config.websocket.backlog,
            config.websocket.reuse_port,
            PushServerFactory(node),
        ),
        (
            "endpoint",
            config.endpoint.listen,
            config.endpoint.backlog,
            config.endpoint.reuse_port,
            site,
        ),
    ]
    if cluster is not None:
        _, signer, http_pool, close_directory = cluster
        internal = build_internal_site(
            registry, signer, metrics, reactor, max_body=_router_max_body(config)
        )
        # The router listener takes the endpoint's backlog: it carries its traffic.
        listeners.append(("router", config.router.listen, config.endpoint.backlog, False, internal))
        root.closers.append(http_pool.closeCachedConnections)
        root.closers.append(close_directory)
    for section, description, backlog, reuse_port, factory in listeners:
        service = _build_listener(section, description, backlog, reuse_port, factory, reactor)
        service.setServiceParent(root)  # type: ignore[no-untyped-call]
        root.listeners.append(service)
    return root


def _build_listener(
    section: str, description: str, backlog: int, reuse_port: bool, factory: Any, reactor: Any
) -> IService:
    """Return the service listening on ``description`` with the section's options.

    ``strports.service`` (``serverFromString`` + ``StreamServerEndpointService``)
    parses it, through ``pushtwisted.listeners``' endpoint type, which adds
    the ``backlog`` and, with ``reuse_port``, a ``SO_REUSEPORT`` socket.

    :raises ConfigError: naming ``<section>.listen`` (or ``<section>.reuse_port``
        for a description ``reuse_port`` cannot serve).
    """
    full = listener_description(description, backlog=backlog, reuse_port=reuse_port)
    try:
        service: IService = strports.service(full, factory, reactor=reactor)
    except ReusePortError as e:
        raise ConfigError(f"{section}.reuse_port: {e} (listen = {description!r})") from None
    except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
        raise ConfigError(
            f"{section}.listen: invalid endpoint description {description!r}: {e}"
        ) from None
    return service


def _log_errors(call: Callable[[], Deferred[Any]]) -> Callable[[], Deferred[Any]]:
    """Wrap a periodic storage job so that a failure is logged, not fatal to the timer."""

    def run() -> Deferred[Any]:
        return call().addErrback(lambda f: PushService.log.failure("periodic job failed", f))

    return run


def _exit_cleanly_on_signals(reactor: Any) -> None:
    """Make SIGTERM and SIGINT a graceful stop that exits with status 0.

    Twisted's own handlers stop the reactor too, but make twistd re-raise the
    signal after shutdown (exit status 143), which process supervisors and
    orchestrators report as a failure.
    """

    def stop(number: int, frame: Any) -> None:
        PushService.log.info("signal {signal} received: shutting down", signal=number)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _after_startup() -> None:
    """Move everything allocated at start-up out of the collector's way.

    Modules, config and the resource tree are never freed; ``gc.freeze()``
    parks them in the permanent generation so every full collection no longer
    walks them (shorter GC pauses with many connections).
    """
    gc.collect()
    gc.freeze()


def makeService(options: Options) -> MultiService:
    """Load the configuration named by ``options`` and build the service (twistd hook).

    A configuration error ends the process with status 1 and one ``error:
    <message>`` line per problem on stderr, without a traceback.  With
    ``--check-config`` it prints the effective configuration and exits 0.
    """
    try:
        config = load_config(options["config"])
        if options["check-config"]:
            _check_cluster(config)
            print(check_report(config, options["config"]), end="")
            raise SystemExit(0)
        set_log_level(config.server.log_level)
        filter_observers_at_begin()
        from twisted.internet import reactor

        service = build_service(config, reactor)
    except ConfigError as e:
        raise error_exit(e) from None
    reactor.addSystemEventTrigger("after", "startup", _exit_cleanly_on_signals, reactor)
    reactor.addSystemEventTrigger("after", "startup", _after_startup)
    return service
