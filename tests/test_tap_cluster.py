"""Tests for the cluster wiring of ``pushtwisted.tap``, on a fake reactor.

With ``[router] listen`` set, ``build_service`` gives the node a ``Router``
over a memcached directory and opens a third listener (the signed
node-to-node API); ``reuse_port`` listeners share their port through
``SO_REUSEPORT``.  Nothing here talks to memcached: building the clients does
no I/O, and the memcached thread pool is never started.
"""

from __future__ import annotations

import dataclasses
import socket
import uuid
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from pushtwisted import tap
from pushtwisted.cluster.directory import MemcachedDirectory
from pushtwisted.cluster.reuseport import ReusePortEndpoint
from pushtwisted.cluster.router import Router
from pushtwisted.cluster.service import ClusterService
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.config import (
    Config,
    CryptoConfig,
    EndpointConfig,
    RouterConfig,
    StorageConfig,
    WebSocketConfig,
)
from pushtwisted.errors import ConfigError
from pushtwisted.routing import LocalRouter
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.storage.service import StorageService
from pushtwisted.threadpool import POOL_NAME
from pushtwisted.tokens import KEY_FILE, generate_key
from pushtwisted.web._site import ListenerSite
from pushtwisted.websocket import PushServerFactory

SECRET = "a-cluster-secret-of-some-length"
ROUTER_URL = "http://127.0.0.1:3000"


@implementer(IReactorFromThreads)
class _Reactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` the storage thread pool accepts (calls run inline)."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ClusterBuildTests(SynchronousTestCase):
    """``build_service`` with ``[router] listen`` set."""

    def config(self, **sections: Any) -> Config:
        """A cluster node's ``Config``: memcached, shared keys, a router listener."""
        sections.setdefault(
            "storage", StorageConfig(path=self.mktemp(), backend="memcached", key_prefix="p:")
        )
        sections.setdefault("crypto", CryptoConfig(keys=[generate_key()]))
        sections.setdefault(
            "router",
            RouterConfig(
                listen="tcp:3000:interface=127.0.0.1", public_url=ROUTER_URL + "/", secret=SECRET
            ),
        )
        return dataclasses.replace(Config(), **sections)

    def build(self, config: Config) -> tuple[MemoryReactorClock, tap.PushService]:
        reactor = _Reactor()
        return reactor, tap.build_service(config, reactor)

    def start_listeners(self, service: tap.PushService) -> None:
        """Start only the listeners (the storage thread pool stays down)."""
        for listener in service.listeners:
            listener.startService()
            self.addCleanup(listener.stopService)

    def test_three_listeners(self) -> None:
        """WebSocket, endpoint and router listeners, in that order; the router one
        serves the node-to-node API (a ``ListenerSite`` without access log) with the
        endpoint's backlog."""
        reactor, service = self.build(self.config())
        self.start_listeners(service)
        self.assertEqual(
            [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers],
            [(8080, 1024, "127.0.0.1"), (8081, 1024, "127.0.0.1"), (3000, 1024, "127.0.0.1")],
        )
        factories = [entry[1] for entry in reactor.tcpServers]
        self.assertIsInstance(factories[0], PushServerFactory)
        self.assertIsInstance(factories[2], ListenerSite)
        self.assertIsNone(factories[2].limit)
        self.assertEqual(len(service.listeners), 3)

    def test_public_router_listener_warned(self) -> None:
        """When the router listener binds every interface or a public address, a
        warning at start says so; on a private or loopback address, none."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def warnings(listen: str) -> list[str]:
            del events[:]
            router = RouterConfig(listen=listen, public_url=ROUTER_URL, secret=SECRET)
            self.build(self.config(router=router))
            return [
                formatEvent(e)
                for e in events
                if e.get("log_level") is LogLevel.warn and "router.listen" in formatEvent(e)
            ]

        [warning] = warnings("tcp:3000")
        self.assertIn("every address", warning)
        self.assertIn("private network", warning)
        [warning] = warnings("tcp:3000:interface=8.8.4.4")
        self.assertIn("8.8.4.4", warning)
        self.assertEqual(warnings("tcp:3000:interface=10.0.0.5"), [])
        self.assertEqual(warnings("tcp:3000:interface=127.0.0.1"), [])

    def test_node_gets_router(self) -> None:
        """The node's router is a ``Router`` named by ``public_url`` over the memcached
        directory, sharing the node's registry."""
        _, service = self.build(self.config())
        router = service.node.router
        assert isinstance(router, Router)
        self.assertEqual(router.node_url, ROUTER_URL)
        self.assertIsInstance(router.directory, MemcachedDirectory)

    def test_router_listener_checks_the_shared_secret(self) -> None:
        """The router listener accepts requests signed with ``router.secret`` and refuses
        others with 401."""
        reactor, service = self.build(self.config())
        self.start_listeners(service)
        site = reactor.tcpServers[2][1]
        stub = StubTreq(site.resource)
        path = f"/notif/{uuid.uuid4().hex}"

        def put(secret: str) -> int:
            headers = RequestSigner(secret, clock=reactor).sign(b"PUT", path.encode())
            d = stub.request("PUT", "http://node" + path, headers=headers)
            stub.flush()
            return int(self.successResultOf(d).code)

        self.assertEqual(put(SECRET), 404)  # signed well: no such session here
        self.assertEqual(put("another-secret-entirely"), 401)

    def test_cluster_service(self) -> None:
        """The cluster service holds the router's persistent HTTP pool, and the directory
        shares the storage's memcached client (one client per server set)."""
        _, service = self.build(self.config())
        cluster = service.getServiceNamed("cluster")
        assert isinstance(cluster, ClusterService)
        self.assertIsInstance(cluster.http_pool, HTTPConnectionPool)
        self.assertTrue(cluster.http_pool.persistent)
        self.assertIs(service.node.router, cluster.router)
        storage = service.node.storage
        assert isinstance(storage, MemcachedStorage)
        directory = cluster.router.directory
        self.assertIs(directory._steps.client, storage._client)  # type: ignore[attr-defined]

    def test_stop_order(self) -> None:
        """Stopping the node closes the storage (and with it the shared memcached client),
        then the connections to other nodes, then stops the storage pool."""
        _, service = self.build(self.config())
        order: list[str] = []
        storage = service.getServiceNamed("storage")
        assert isinstance(storage, StorageService)
        storage.storage = _Storage(order)  # type: ignore[assignment]
        cluster = service.getServiceNamed("cluster")
        assert isinstance(cluster, ClusterService)
        cluster.http_pool = _HTTPPool(order)  # type: ignore[assignment]
        assert service.pool is not None
        service.pool.pool = _Pool(order)  # type: ignore[assignment]
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(order, ["storage", "http", "pool"])

    def test_single_node_has_local_router(self) -> None:
        """Without ``router.listen``: a local router, two listeners, no cluster service."""
        reactor, service = self.build(self.config(router=RouterConfig()))
        self.start_listeners(service)
        self.assertIsInstance(service.node.router, LocalRouter)
        self.assertEqual(len(reactor.tcpServers), 2)
        self.assertEqual([child.name for child in service if child.name], [POOL_NAME, "storage"])

    def test_backend_must_be_memcached(self) -> None:
        """A cluster on sqlite or memory is a ``ConfigError`` naming ``router.listen``."""
        for backend in ("sqlite", "memory"):
            config = self.config(storage=StorageConfig(path=self.mktemp(), backend=backend))
            error = self.assertRaises(ConfigError, tap.build_service, config, _Reactor())
            self.assertIn("router.listen", str(error))
            self.assertIn("memcached", str(error))

    def test_keys_required(self) -> None:
        """A cluster without ``crypto.keys`` is a ``ConfigError`` naming it, and no
        per-node key is generated."""
        config = self.config(crypto=CryptoConfig())
        error = self.assertRaises(ConfigError, tap.build_service, config, _Reactor())
        self.assertIn("crypto.keys", str(error))
        self.assertFalse((Path(config.storage.path) / KEY_FILE).exists())

    def test_invalid_router_listen(self) -> None:
        """An unusable router description is a ``ConfigError`` naming ``router.listen``."""
        router = RouterConfig(listen="carrierpigeon:3000", public_url=ROUTER_URL, secret=SECRET)
        error = self.assertRaises(
            ConfigError, tap.build_service, self.config(router=router), _Reactor()
        )
        self.assertIn("router.listen", str(error))


class ReusePortTests(SynchronousTestCase):
    """``reuse_port`` serves a ``tcp:`` listener on a ``ReusePortEndpoint``."""

    def config(self, **sections: Any) -> Config:
        sections.setdefault("storage", StorageConfig(path=self.mktemp(), backend="memory"))
        return dataclasses.replace(Config(), **sections)

    def test_reuse_port_listeners(self) -> None:
        """Both listeners with ``reuse_port`` bind their own ``SO_REUSEPORT`` sockets
        (real ones, on free loopback ports) and hand them to the reactor."""
        config = self.config(
            websocket=WebSocketConfig(listen="tcp:0:interface=127.0.0.1", reuse_port=True),
            endpoint=EndpointConfig(listen="tcp:0:interface=127.0.0.1", reuse_port=True, backlog=7),
        )
        reactor = MemoryReactorClock()
        service = tap.build_service(config, reactor)
        endpoints = [getattr(listener, "endpoint", None) for listener in service.listeners]
        self.assertTrue(all(isinstance(e, ReusePortEndpoint) for e in endpoints), endpoints)
        assert isinstance(endpoints[1], ReusePortEndpoint)
        self.assertEqual(endpoints[1].backlog, 7)
        service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(len(reactor.adoptedPorts), 2)
        self.assertIsInstance(reactor.adoptedPorts[0][2], PushServerFactory)

    def test_only_one_listener(self) -> None:
        """``reuse_port`` on the endpoint only leaves the WebSocket listener as it was."""
        config = self.config(
            endpoint=EndpointConfig(listen="tcp:0:interface=127.0.0.1", reuse_port=True)
        )
        reactor = MemoryReactorClock()
        service = tap.build_service(config, reactor)
        service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        self.assertEqual([entry[0] for entry in reactor.tcpServers], [8080])
        self.assertEqual(len(reactor.adoptedPorts), 1)

    def test_port_held_without_reuse_port(self) -> None:
        """When another socket holds the port without ``SO_REUSEPORT``, starting fails
        with a ``ConfigError`` naming the listener instead of running without it."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        config = self.config(
            websocket=WebSocketConfig(listen=f"tcp:{port}:interface=127.0.0.1", reuse_port=True)
        )
        service = tap.build_service(config, MemoryReactorClock())
        error = self.assertRaises(ConfigError, service.privilegedStartService)
        self.assertEqual(
            str(error),
            f"websocket.listen: cannot listen on 127.0.0.1:{port}: address already in use",
        )

    def test_needs_tcp(self) -> None:
        """``reuse_port`` with a non-tcp description is a ``ConfigError`` naming
        ``<section>.reuse_port``."""
        config = self.config(websocket=WebSocketConfig(listen="unix:/tmp/x.sock", reuse_port=True))
        error = self.assertRaises(ConfigError, tap.build_service, config, MemoryReactorClock())
        self.assertIn("websocket.reuse_port", str(error))
        self.assertIn("unix:/tmp/x.sock", str(error))


class _Storage:
    """Storage stand-in that only records ``close``."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def close(self) -> Deferred[None]:
        self.order.append("storage")
        return succeed(None)


class _HTTPPool:
    """HTTP connection pool stand-in that records ``closeCachedConnections``."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def closeCachedConnections(self) -> Deferred[None]:
        self.order.append("http")
        return succeed(None)


class _Pool:
    """Thread pool stand-in that records ``stop`` (no threads)."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.order.append("pool")


class _Failing(Service):
    """A child service whose stop fails."""

    name = "failing"

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return fail(RuntimeError("stop failed"))


class StopTests(SynchronousTestCase):
    """``PushService`` stops its children one after the other, whatever happens."""

    def test_failing_child(self) -> None:
        """A child whose stop fails is logged; the children before it still stop."""
        config = dataclasses.replace(
            Config(), storage=StorageConfig(path=self.mktemp(), backend="memory")
        )
        service = tap.build_service(config, MemoryReactorClock())
        order: list[str] = []
        storage = service.getServiceNamed("storage")
        assert isinstance(storage, StorageService)
        storage.storage = _Storage(order)  # type: ignore[assignment]
        _Failing().setServiceParent(service)  # added last: stopped before the storage
        events: list[LogEvent] = []
        service.log = Logger(observer=events.append)  # type: ignore[misc]
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(order, ["storage"])
        self.assertEqual(
            [e["log_format"] for e in events if "log_failure" in e], ["stopping {service} failed"]
        )
        self.assertFalse(any(child.running for child in service))
