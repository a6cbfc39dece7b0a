"""Tests for ``pushtwisted.cluster.service``: the cluster side of a node, as a service."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.directory import MemcachedDirectory
from pushtwisted.cluster.service import ClusterService, build_cluster
from pushtwisted.config import Config, RouterConfig, StorageConfig
from pushtwisted.metrics import NullMetrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage._memcache_steps import MemcacheSteps
from pushtwisted.storage.factory import build_memcache_client
from pushtwisted.testing.cluster import SECRET


def _no_submit(operation: str, executor: Any, item: Any, /) -> Deferred[Any]:
    raise AssertionError("no blocking call expected")


class _HTTPPool:
    """Records ``closeCachedConnections`` and answers with ``result``."""

    def __init__(self, result: Deferred[None]) -> None:
        self.result = result
        self.closed = 0

    def closeCachedConnections(self) -> Deferred[None]:
        self.closed += 1
        return self.result


class BuildClusterTests(SynchronousTestCase):
    """``build_cluster`` wires the router from ``[router]`` and ``[storage]``, without I/O."""

    def test_wiring(self) -> None:
        """The router is named by ``public_url`` and reads a memcached directory on the
        given client; its HTTP pool keeps connections to other nodes."""
        config = dataclasses.replace(
            Config(),
            storage=StorageConfig(backend="memcached", key_prefix="p:"),
            router=RouterConfig(
                listen="tcp:3000", public_url="http://10.0.0.5:3000/", secret=SECRET
            ),
        )
        memcache = build_memcache_client(config.storage)
        registry: ClientRegistry[Any] = ClientRegistry()
        cluster = build_cluster(
            config,
            reactor=MemoryReactorClock(),
            submit=_no_submit,
            memcache=memcache,
            registry=registry,
            metrics=NullMetrics(),
        )
        self.assertEqual(cluster.router.node_url, "http://10.0.0.5:3000")
        directory = cluster.router.directory
        assert isinstance(directory, MemcachedDirectory)
        # The storage's executor on the same client: their calls share batches.
        self.assertEqual(directory._steps, MemcacheSteps(memcache))
        self.assertEqual(directory._key("u"), "p:node:u")
        self.assertTrue(cluster.http_pool.persistent)
        self.assertEqual(cluster.http_pool.maxPersistentPerHost, 16)


class ClusterServiceTests(SynchronousTestCase):
    """Stopping the service closes the connections to other nodes."""

    def service(self, result: Deferred[None]) -> tuple[ClusterService, _HTTPPool]:
        pool = _HTTPPool(result)
        service = ClusterService(router=object(), signer=object(), http_pool=pool)  # type: ignore[arg-type]
        return service, pool

    def test_stop_closes_http_pool(self) -> None:
        """Stopping closes the HTTP pool's cached connections and waits for it."""
        waiting: Deferred[None] = Deferred()
        service, pool = self.service(waiting)
        service.startService()
        d = service.stopService()
        self.assertEqual(pool.closed, 1)
        self.assertNoResult(d)
        waiting.callback(None)
        self.successResultOf(d)

    def test_failure_logged(self) -> None:
        """A failed close is logged; the stop still succeeds."""
        service, _ = self.service(fail(RuntimeError("nope")))
        events: list[LogEvent] = []
        service.log = Logger(observer=events.append)  # type: ignore[misc]
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(len([e for e in events if "log_failure" in e]), 1)

    def test_not_running_after_stop(self) -> None:
        """The service reports it is stopped."""
        service, _ = self.service(succeed(None))
        service.startService()
        self.successResultOf(service.stopService())
        self.assertFalse(service.running)
