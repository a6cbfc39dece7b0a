"""The composition root: ``twistd simplepush`` builds the whole server here.

This is the only module that knows the concrete classes and the only one that
imports the reactor (inside ``makeService``).  ``build_service(config,
reactor)`` does the wiring and can be started on a ``MemoryReactorClock`` in
tests.

Each part owns what it starts, as a service in the tree of ``PushService``:
the storage thread pool, the ``StorageService`` (opens, purges and closes the
backend), in a cluster the ``ClusterService``, then the listeners.  With
``[router] listen`` set the node joins a cluster (``docs/cluster.md``): the
``ClusterService`` holds the directory (on the storage's memcached client),
the HTTP client with its own persistent connection pool, the request signer
and the ``Router`` (given to the ``Node``), and a third listener serves the
node-to-node API.
"""

from __future__ import annotations

import signal
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory

from pushtwisted import __version__, _autobahn_tuning
from pushtwisted._reactor import IServerReactor
from pushtwisted.cli import VersionedOptions, check_report, error_exit, report_config_errors
from pushtwisted.cluster.exposure import public_exposure
from pushtwisted.cluster.service import ClusterService, build_cluster
from pushtwisted.collector import DEFAULT_YOUNG, FreezeSurvivors
from pushtwisted.config import Config, load_config
from pushtwisted.errors import ConfigError
from pushtwisted.listeners import ListenerService, ReusePortError, listener_description
from pushtwisted.logs import filter_observers_at_begin, logger, set_log_level
from pushtwisted.node import Node
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import LocalRouter
from pushtwisted.startup import startup_warnings, summary_line
from pushtwisted.statedir import State, prepare_state
from pushtwisted.storage.factory import (
    build_memcache_client,
    build_storage_service,
    build_thread_pool,
)
from pushtwisted.storage.service import StorageService
from pushtwisted.threadpool import ThreadPoolService
from pushtwisted.tokens import EndpointCrypto
from pushtwisted.web.endpoint import build_endpoint_site
from pushtwisted.web.internal import build_internal_site
from pushtwisted.web.status import add_status_children
from pushtwisted.websocket import PushServerFactory

__all__ = ["IServerReactor", "Options", "PushService", "build_service", "makeService"]

_log = logger()


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

    Its children start in the order they were added: the storage thread pool
    (sqlite, memcached), the cluster service (with ``[router] listen``), the
    storage service, then the listeners (``add_listener``).

    Stopping it is a graceful shutdown, in this order: stop accepting on every
    listener; close every client with 1001 (going away) so devices reconnect
    elsewhere; wait, at most ``shutdown_timeout`` seconds in all, until no
    client is left (``ClientRegistry.when_empty``) and then until no storage
    call is in flight (``ThreadPoolService.when_idle``: accepted PUTs, and in
    a cluster the directory entries of the closed clients); then stop the
    other children one after the other, in reverse order: close the storage,
    close the cluster's connections to other nodes, stop the storage thread
    pool last.  Each is waited for before the next; none fails the stop.

    Once started it logs one summary line (``startup.summary_line``: version,
    storage, the bound listeners, ``public_url``, the endpoint key), then the
    ``startup.startup_warnings``.

    :param state: what the state directory holds (``statedir.prepare_state``).
    :ivar listeners: the listening services, stopped first.
    """

    log = logger()

    def __init__(
        self,
        node: Node,
        *,
        pool: ThreadPoolService | None = None,
        shutdown_timeout: float = 10.0,
        state: State | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node
        self.pool = pool
        self.shutdown_timeout = shutdown_timeout
        self.state = state or State()
        self.listeners: list[ListenerService] = []

    def add_listener(self, listener: ListenerService) -> None:
        """Add a listening service: started last, stopped first."""
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]  # Twisted: untyped
        self.listeners.append(listener)

    def startService(self) -> None:
        """Start the children in order, then log the summary line and the warnings."""
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        config = self.node.config
        listening = [
            (
                listener.section,
                listener.port.getHost() if listener.port else None,
                listener.description,
            )
            for listener in self.listeners
        ]
        self.log.info(
            "{summary}",
            summary=summary_line(config, self.state, listening),
            version=__version__,
            backend=config.storage.backend,
            public_url=config.endpoint.public_url,
        )
        for warning in startup_warnings(config, self.state, listening):
            self.log.warn("{problem}", problem=warning)

    def stopService(self) -> Deferred[None]:
        """Shut down gracefully (see the class docstring); never fails."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.running = False
        await DeferredList(
            [maybeDeferred(listener.stopService) for listener in self.listeners if listener.running]
        )
        sessions = self.node.registry.sessions()
        self.log.info("shutting down: closing {count} clients", count=len(sessions))
        for session in sessions:
            session.shutdown()
        drained = Deferred.fromCoroutine(self._drained())
        drained.addTimeout(self.shutdown_timeout, self.node.clock)
        try:
            await drained
        except DeferredTimeout:
            self.log.warn(
                "shutdown timeout: {clients} clients, {calls} storage calls left",
                clients=len(self.node.registry),
                calls=self.pool.depth if self.pool is not None else 0,
            )
        for child in reversed(list(self)):
            if child.running:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self.log.failure("stopping {service} failed", service=child.name)

    async def _drained(self) -> None:
        """Return once no client is connected, then once no storage call is in flight."""
        await self.node.registry.when_empty()
        if self.pool is not None:
            await self.pool.when_idle()


def _token_keys(config: Config, state: State) -> list[str]:
    """Return the configured keys, or the one kept in the state directory."""
    if config.crypto.keys:
        return list(config.crypto.keys)
    assert state.key is not None  # prepare_state reads or generates it without keys
    return [state.key.key]


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


#: Most bytes of request headers twisted.web reads (``HTTPChannel.totalHeadersSize``).
_MAX_HEADERS = 16384


def _router_max_body(config: Config) -> int:
    """Largest ``PUT /push`` body another node may send: the data, JSON-escaped."""
    # Each character of ``data`` is at most 6 bytes once JSON-escaped (\uXXXX).
    simplepush = 6 * config.endpoint.max_data + 1024
    # A WebPush message: its body in base64, and the crypto headers forwarded
    # (printable ASCII from the request's headers: at most 2 bytes each escaped).
    webpush = 4 * -(-config.webpush.max_message_bytes // 3) + 2 * _MAX_HEADERS + 1024
    return max(config.endpoint.max_body, simplepush, webpush)


def build_service(config: Config, reactor: IServerReactor) -> PushService:
    """Wire one node from ``config`` and return its (not yet started) root service.

    :param reactor: the reactor (``MemoryReactorClock`` in tests; with
        ``callFromThread`` added for the sqlite and memcached backends).
    :raises ConfigError: when a token key or a listener description is invalid,
        a cluster (``router.listen``) is configured without memcached or
        ``crypto.keys``, or the state directory (``statedir.prepare_state``)
        cannot be used.
    """
    _check_cluster(config)
    state = prepare_state(config.storage, need_key=not config.crypto.keys)
    # Autobahn's eager debug formatting and per-frame native unmasking are
    # module-level names: replaced once, for the whole process.
    _autobahn_tuning.apply()
    crypto = EndpointCrypto(_token_keys(config, state))
    metrics = PrometheusMetrics()
    pool = None
    if config.storage.backend != "memory":
        pool = build_thread_pool(config.storage, reactor=reactor, metrics=metrics)
    # One memcached client per server set: the storage's, shared by the directory.
    memcache = None
    if config.storage.backend == "memcached":
        memcache = build_memcache_client(config.storage)
    storage: StorageService = build_storage_service(
        config.storage, reactor=reactor, pool=pool, memcache=memcache
    )
    registry: ClientRegistry[Any] = ClientRegistry()
    cluster: ClusterService | None = None
    if config.router.enabled:
        exposure = public_exposure(config.router.listen)
        if exposure is not None:
            _log.warn(
                "router.listen {listen!r}: {exposure}; the node-to-node API belongs on a"
                " private network (docs/cluster.md)",
                listen=config.router.listen,
                exposure=exposure,
            )
        assert pool is not None and memcache is not None  # memcached, checked above
        cluster = build_cluster(
            config,
            reactor=reactor,
            submit=pool.submit,
            memcache=memcache,
            registry=registry,
            metrics=metrics,
        )
    node = Node(
        config=config,
        storage=storage.storage,
        registry=registry,
        crypto=crypto,
        clock=reactor,
        metrics=metrics,
        router=cluster.router if cluster is not None else LocalRouter(registry),
    )
    root = PushService(
        node, pool=pool, shutdown_timeout=config.server.shutdown_timeout, state=state
    )
    # Started in this order, stopped in the reverse one (see PushService).
    for child in (pool, cluster, storage):
        if child is not None:
            child.setServiceParent(root)  # type: ignore[no-untyped-call]  # Twisted: untyped
    site = build_endpoint_site(node)
    add_status_children(site.resource, node, metrics)
    # (section, listen description, backlog, reuse_port, factory)
    listeners: list[tuple[str, str, int, bool, IProtocolFactory]] = [
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
        internal = build_internal_site(
            registry, cluster.signer, metrics, reactor, max_body=_router_max_body(config)
        )
        # The router listener takes the endpoint's backlog: it carries its traffic.
        listeners.append(("router", config.router.listen, config.endpoint.backlog, False, internal))
    for section, description, backlog, reuse_port, factory in listeners:
        root.add_listener(
            _build_listener(section, description, backlog, reuse_port, factory, reactor)
        )
    return root


def _build_listener(
    section: str,
    description: str,
    backlog: int,
    reuse_port: bool,
    factory: IProtocolFactory,
    reactor: IServerReactor,
) -> ListenerService:
    """Return the service listening on ``description`` with the section's options.

    ``serverFromString`` parses it, through ``pushtwisted.listeners``'
    endpoint type, which adds the ``backlog`` and, with ``reuse_port``, a
    ``SO_REUSEPORT`` socket; a ``ListenerService`` listens on it.  The
    factory is made quiet (``noisy = False``): no "Starting factory" lines.

    :raises ConfigError: naming ``<section>.listen`` (or ``<section>.reuse_port``
        for a description ``reuse_port`` cannot serve).
    """
    full = listener_description(description, backlog=backlog, reuse_port=reuse_port)
    try:
        endpoint = serverFromString(reactor, full)  # type: ignore[no-untyped-call]
    except ReusePortError as e:
        raise ConfigError(f"{section}.reuse_port: {e} (listen = {description!r})") from None
    except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
        raise ConfigError(
            f"{section}.listen: invalid endpoint description {description!r}: {e}"
        ) from None
    if isinstance(factory, Factory):
        factory.noisy = False
    return ListenerService(section, description, endpoint, factory)


def _exit_cleanly_on_signals(reactor: IServerReactor) -> None:
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


def _take_signals(reactor: IServerReactor) -> None:
    """Handle SIGTERM and SIGINT with ``_exit_cleanly_on_signals`` from now on.

    The listeners are bound as soon as the service starts, before the reactor
    runs, so a supervisor may signal the process at once: the handlers are
    installed now, and again during startup, just after the reactor installed
    its own (its trigger was added when it was made, so it runs first).
    """
    _exit_cleanly_on_signals(reactor)
    reactor.addSystemEventTrigger("during", "startup", _exit_cleanly_on_signals, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", _forget_exit_signal, reactor)


def _forget_exit_signal(reactor: IServerReactor) -> None:
    """Exit with status 0 even when Twisted's own handler took SIGTERM or SIGINT.

    Between the reactor installing its handlers and ``_take_signals``
    installing ours again (the same startup phase, a few statements apart) a
    signal goes to Twisted's handler, which stops the reactor too but makes
    twistd re-raise the signal once it has stopped.  The stop was graceful
    either way, so the signal Twisted noted (``_exitSignal``, read by twistd
    after ``run()``) is forgotten.
    """
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None  # type: ignore[attr-defined]


def _after_startup(reactor: IServerReactor, full_interval: float) -> FreezeSurvivors:
    """Keep the collector's pauses short for the life of the process.

    Modules, config and the resource tree, and then every connection and
    record that lives past a second, are moved into the permanent
    generation, which no collection walks again (``pushtwisted.collector``):
    at 19,500 connections a full collection went from ~95 ms to the
    objects of the last second.  Without it, or with ``gc.freeze()`` only
    once after start-up as before, each full collection walks every
    connection; raising the collector's thresholds only makes those pauses
    rarer, not shorter.  With the runs in place the young generation's
    threshold is raised (``DEFAULT_YOUNG``): fewer collections of objects
    about to die.
    """
    survivors = FreezeSurvivors(reactor, full_interval=full_interval, young=DEFAULT_YOUNG)
    survivors.start()
    return survivors


def makeService(options: Options) -> MultiService:
    """Load the configuration named by ``options`` and build the service (twistd hook).

    A configuration error ends the process with status 1 and one ``error:
    <message>`` line per problem on stderr, without a traceback; so does one
    found when the service starts (a listener that cannot bind), through
    ``report_config_errors``.  With ``--check-config`` it prints the
    effective configuration and exits 0.
    """
    report_config_errors()
    try:
        config = load_config(options["config"])
        if options["check-config"]:
            _check_cluster(config)
            print(check_report(config, options["config"]), end="")
            raise SystemExit(0)
        set_log_level(config.server.log_level)
        filter_observers_at_begin()
        from twisted.internet import reactor as installed

        reactor = cast(IServerReactor, installed)
        service = build_service(config, reactor)
    except ConfigError as e:
        raise error_exit(e) from None
    _take_signals(reactor)
    reactor.addSystemEventTrigger(
        "after", "startup", _after_startup, reactor, config.server.full_gc_interval
    )
    return service
