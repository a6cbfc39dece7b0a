"""``ClusterService``: what a cluster node owns beyond a single node, as a service.

``build_cluster`` makes, from ``[router]`` and ``[storage]``, the memcached
directory, the request signer, the HTTP client with its own persistent
connection pool, and the ``Router`` that uses them all.  The service closes
that connection pool when it stops.

The directory uses the storage's memcached client (one client per server
set, ``storage.factory.build_memcache_client``) and its thread pool, so it
opens nothing of its own; closing the storage closes the client.  Stop this
service after the storage and before the thread pool (``tap.PushService``).
"""

from __future__ import annotations

from typing import Any, cast

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from pushtwisted._reactor import IServerReactor
from pushtwisted.cluster.directory import MemcachedDirectory
from pushtwisted.cluster.router import HTTPClient as RouterHTTPClient
from pushtwisted.cluster.router import Router
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.config import Config
from pushtwisted.logs import logger
from pushtwisted.metrics import Metrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage._memcache import MemcacheClient
from pushtwisted.threadpool import BatchRunner

__all__ = ["ClusterService", "build_cluster"]

#: Idle keep-alive connections kept per other node by the router's HTTP client.
_PERSISTENT_PER_NODE = 16
#: Seconds an idle keep-alive connection to another node is kept.
_IDLE_TIMEOUT = 120


class ClusterService(Service):
    """The cluster side of one node; closes its HTTP connection pool when stopped.

    :param router: delivers updates wherever the device is (``Node.router``).
    :param signer: signs and verifies node-to-node requests (shared with the
        router listener).
    :param http_pool: the router's persistent connections to other nodes.
    """

    name = "cluster"
    log = logger()

    def __init__(
        self, *, router: Router, signer: RequestSigner, http_pool: HTTPConnectionPool
    ) -> None:
        self.router = router
        self.signer = signer
        self.http_pool = http_pool

    def stopService(self) -> Deferred[None]:
        """Close the idle connections to other nodes; fires when they are closed."""
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        try:
            await self.http_pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        except Exception:
            self.log.failure("closing the connections to other nodes failed")


def build_cluster(
    config: Config,
    *,
    reactor: IServerReactor,
    submit: BatchRunner,
    memcache: MemcacheClient,
    registry: ClientRegistry[Any],
    metrics: Metrics,
) -> ClusterService:
    """Build a cluster node's directory, signer, HTTP client and router (no I/O).

    :param reactor: the reactor (its clock, and TCP for the HTTP client).
    :param submit: the storage thread pool's ``submit`` (directory calls block;
        they share the storage's batches).
    :param memcache: the storage's memcached client.
    :param registry: this node's connected sessions.
    """
    storage = config.storage
    directory = MemcachedDirectory(
        memcache, submit, reactor, ttl=storage.ttl_registered, key_prefix=storage.key_prefix
    )
    http_pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    http_pool.maxPersistentPerHost = _PERSISTENT_PER_NODE
    http_pool.cachedConnectionTimeout = _IDLE_TIMEOUT
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
    return ClusterService(router=router, signer=signer, http_pool=http_pool)
