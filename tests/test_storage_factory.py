"""Tests for ``pushtwisted.storage.factory`` and the memcached client helpers."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from pymemcache.client.base import PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import StorageConfig, parse_config
from pushtwisted.errors import ConfigError
from pushtwisted.metrics import NullMetrics
from pushtwisted.storage._memcache import (
    MAX_RELATIVE_EXPIRE,
    JsonSerde,
    make_memcached_client,
    memcached_expire,
)
from pushtwisted.storage.factory import (
    build_memcache_client,
    build_storage_service,
    build_thread_pool,
    sqlite_path,
)
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.storage.service import PURGE_INTERVAL, StorageService
from pushtwisted.storage.sqlite import SqliteStorage
from pushtwisted.threadpool import ThreadPoolService
from tests.test_threadpool import InlineReactor, ManualPool


class FactoryTests(SynchronousTestCase):
    """``build_storage_service`` picks the backend named by ``[storage] backend``."""

    def setUp(self) -> None:
        self.reactor = InlineReactor()

    def pool(self, config: StorageConfig) -> ThreadPoolService:
        return build_thread_pool(config, reactor=self.reactor, metrics=NullMetrics())

    def build(self, config: StorageConfig, **kwargs: Any) -> StorageService:
        kwargs.setdefault("pool", self.pool(config))
        return build_storage_service(config, reactor=self.reactor, **kwargs)

    def test_memory(self) -> None:
        """The memory backend needs no pool, and nothing to open or purge."""
        service = self.build(StorageConfig(backend="memory"), pool=None)
        self.assertIsInstance(service.storage, MemoryStorage)
        service.startService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_sqlite(self) -> None:
        """``sqlite`` opens ``<path>/pushtwisted.sqlite3`` on the pool."""
        config = StorageConfig(backend="sqlite", path="/var/lib/pushtwisted")
        service = self.build(config)
        self.assertIsInstance(service.storage, SqliteStorage)
        self.assertEqual(
            sqlite_path(config), os.path.join("/var/lib/pushtwisted", "pushtwisted.sqlite3")
        )

    def test_sqlite_opened_and_purged(self) -> None:
        """The sqlite service opens the database at start and purges it every hour."""
        config = StorageConfig(backend="sqlite", path=self.mktemp())
        pool = self.pool(config)
        pool.pool = ManualPool()  # type: ignore[assignment]
        pool.startService()
        service = self.build(config, pool=pool)
        service.startService()
        self.reactor.advance(0)  # the end of the turn: the open goes to the pool
        self.assertEqual(len(pool.pool.jobs), 1)  # type: ignore[attr-defined]
        pool.pool.run_next()  # type: ignore[attr-defined]  # open
        self.reactor.advance(PURGE_INTERVAL - 1)
        self.assertEqual(pool.pool.jobs, [])  # type: ignore[attr-defined]
        self.reactor.advance(1)
        self.reactor.advance(0)
        self.assertEqual(len(pool.pool.jobs), 1)  # type: ignore[attr-defined]
        pool.pool.run_next()  # type: ignore[attr-defined]  # purge
        d = service.stopService()
        self.reactor.advance(0)
        pool.pool.run_next()  # type: ignore[attr-defined]  # close
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_memcached(self) -> None:
        """``memcached`` builds a client over the configured servers (no connection yet)."""
        config = StorageConfig(backend="memcached", servers=["127.0.0.1:1", "127.0.0.1:2"])
        service = self.build(config)
        self.assertIsInstance(service.storage, MemcachedStorage)

    def test_memcached_given_client(self) -> None:
        """``memcached`` uses the client it is given (the one the directory shares)."""
        config = StorageConfig(backend="memcached")
        client = build_memcache_client(config)
        service = self.build(config, memcache=client)
        self.assertIs(service.storage._client, client)  # type: ignore[attr-defined]

    def test_needs_pool(self) -> None:
        """Blocking backends without a pool are a ``ConfigError``."""
        for backend in ("sqlite", "memcached"):
            self.assertRaises(ConfigError, self.build, StorageConfig(backend=backend), pool=None)

    def test_pool_from_config(self) -> None:
        """The pool is sized, bounded and timed by the config."""
        config = StorageConfig(pool_min_threads=2, pool_max_threads=7, queue_limit=33, timeout=4.0)
        pool = self.pool(config)
        self.assertEqual((pool.pool.min, pool.pool.max), (2, 7))
        self.assertEqual((pool._max_queue, pool._timeout), (33, 4.0))


class ConfigTests(SynchronousTestCase):
    """The storage keys of ``[storage]``."""

    def test_defaults(self) -> None:
        """Defaults: durable sqlite, one local memcached, long TTLs, a bounded pool."""
        config = StorageConfig()
        self.assertEqual(config.backend, "sqlite")
        self.assertEqual(config.sqlite_synchronous, "full")
        self.assertEqual(config.servers, ["127.0.0.1:11211"])
        self.assertEqual(config.ttl_registered, 30 * 86400)
        self.assertEqual(config.ttl_live, 30 * 86400)
        self.assertEqual((config.pool_max_threads, config.queue_limit), (10, 1000))

    def test_backends(self) -> None:
        """memory, sqlite and memcached are accepted."""
        for backend in ("memory", "sqlite", "memcached"):
            config = parse_config({"storage": {"backend": backend}}, {})
            self.assertEqual(config.storage.backend, backend)

    def test_bad_values(self) -> None:
        """Bad servers, prefixes, sizes and TTLs are ``ConfigError``s naming the key."""
        for table, key in (
            ({"servers": []}, "storage.servers"),
            ({"servers": ["no-port"]}, "storage.servers"),
            ({"servers": ["host:99999"]}, "storage.servers"),
            ({"key_prefix": "has space"}, "storage.key_prefix"),
            ({"pool_max_threads": 0}, "storage.pool_max_threads"),
            ({"pool_min_threads": 11}, "storage.pool_min_threads"),
            ({"queue_limit": 0}, "storage.queue_limit"),
            ({"timeout": 0}, "storage.timeout"),
            ({"connect_timeout": -1}, "storage.connect_timeout"),
            ({"ttl_live": 0}, "storage.ttl_live"),
            ({"ttl_registered": 0}, "storage.ttl_registered"),
        ):
            error = self.assertRaises(ConfigError, parse_config, {"storage": table}, {})
            self.assertIn(key, str(error))

    def test_servers_from_env(self) -> None:
        """``SIMPLEPUSH_STORAGE_SERVERS`` takes a comma-separated list."""
        config = parse_config({}, {"SIMPLEPUSH_STORAGE_SERVERS": "10.0.0.1:11211, [::1]:11212"})
        self.assertEqual(config.storage.servers, ["10.0.0.1:11211", "[::1]:11212"])


class ExpireTests(SynchronousTestCase):
    """``memcached_expire`` respects memcached's 30-day relative limit."""

    def test_relative(self) -> None:
        """Up to 30 days the TTL is sent as seconds, rounded up, at least 1."""
        self.assertEqual(memcached_expire(0.2, 1e9), 1)
        self.assertEqual(memcached_expire(1.5, 1e9), 2)
        self.assertEqual(memcached_expire(86400, 1e9), 86400)
        self.assertEqual(memcached_expire(MAX_RELATIVE_EXPIRE, 1e9), MAX_RELATIVE_EXPIRE)

    def test_absolute(self) -> None:
        """Past 30 days it is an absolute Unix time."""
        self.assertEqual(memcached_expire(MAX_RELATIVE_EXPIRE + 1, 1_700_000_000.7), 1_702_592_001)
        self.assertEqual(memcached_expire(365 * 86400, 1e9), 1_000_000_000 + 365 * 86400)


class ClientTests(SynchronousTestCase):
    """``make_memcached_client`` builds a pooled, strict, JSON ``HashClient``."""

    def test_options(self) -> None:
        """Pooling sized as asked, timeouts, errors raised, replies awaited, JSON values."""
        client = make_memcached_client(
            ["127.0.0.1:11211", "127.0.0.1:11212"], pool_size=6, connect_timeout=1.5, timeout=3.0
        )
        self.addCleanup(client.close)
        self.assertIsInstance(client, HashClient)
        self.assertFalse(client.ignore_exc)
        self.assertEqual(len(client.clients), 2)
        for pooled in client.clients.values():
            self.assertIsInstance(pooled, PooledClient)
            self.assertEqual(pooled.client_pool.max_size, 6)
            self.assertEqual((pooled.connect_timeout, pooled.timeout), (1.5, 3.0))
            self.assertFalse(pooled.default_noreply)
            self.assertIsInstance(pooled.serde, JsonSerde)

    def test_serde(self) -> None:
        """Values are compact ASCII JSON with flags 0, and come back equal."""
        serde = JsonSerde()
        value = {"state": "live", "data": "é\ud800", "version": 2**70}
        raw, flags = serde.serialize("k", value)
        self.assertEqual(flags, 0)
        raw.decode("ascii")
        self.assertEqual(serde.deserialize("k", raw, flags), value)
        self.assertRaises(ValueError, serde.deserialize, "k", b"{not json", 0)

    def test_fail_fast_never_a_miss(self) -> None:
        """After a connection failure, calls raise at once for ``retry_timeout``, then retry.

        Stock ``HashClient`` would answer the default (a miss) meanwhile.
        """
        now = [100.0]
        client = make_memcached_client(
            ["127.0.0.1:11211"],
            pool_size=1,
            connect_timeout=1,
            timeout=1,
            retry_timeout=0.2,
            clock=lambda: now[0],
        )
        server = _StubServer()
        calls: list[str] = []

        def refused() -> Any:
            calls.append("tried")
            raise ConnectionRefusedError(111, "refused")

        self.assertRaises(ConnectionRefusedError, client._safely_run_func, server, refused, None)
        self.assertEqual(server.closed, 1, "the dead server's pooled connections were dropped")
        self.assertRaises(MemcacheError, client._safely_run_func, server, refused, None)
        self.assertEqual(calls, ["tried"], "no connection attempt inside the window")
        now[0] += 0.21
        self.assertEqual(client._safely_run_func(server, lambda: "value", None), "value")
        self.assertEqual(client._safely_run_func(server, lambda: "again", None), "again")

    def test_timeout_keeps_connections(self) -> None:
        """A timeout opens the window but does not drop the other pooled connections."""
        client = make_memcached_client(
            ["127.0.0.1:11211"], pool_size=1, connect_timeout=1, timeout=1, retry_timeout=0.2
        )
        server = _StubServer()

        def slow() -> Any:
            raise TimeoutError("timed out")

        self.assertRaises(TimeoutError, client._safely_run_func, server, slow, None)
        self.assertEqual(server.closed, 0)

    def test_check_servers(self) -> None:
        """``check_servers`` asks every server of the ring its version; a failing one raises."""
        client = make_memcached_client(
            ["127.0.0.1:11211", "127.0.0.1:11212"], pool_size=1, connect_timeout=1, timeout=1
        )
        servers = {key: _VersionServer() for key in client.clients}
        client.clients = servers
        client.check_servers()
        self.assertEqual([server.asked for server in servers.values()], [1, 1])
        list(servers.values())[1].fails = True
        self.assertRaises(MemcacheError, client.check_servers)


class _VersionServer:
    """Counts ``version()`` calls; raises like a dead server when told to."""

    def __init__(self) -> None:
        self.asked = 0
        self.fails = False

    def version(self) -> bytes:
        self.asked += 1
        if self.fails:
            raise MemcacheError("down")
        return b"1.6"


class FailFastThreadTests(SynchronousTestCase):
    """The fail-fast window is shared by every pool thread calling through one client."""

    def setUp(self) -> None:
        self.now = [100.0]
        self.client = make_memcached_client(
            ["127.0.0.1:11211"],
            pool_size=8,
            connect_timeout=1,
            timeout=1,
            retry_timeout=0.2,
            clock=lambda: self.now[0],
        )
        self.addCleanup(self.client.close)
        self.server = _StubServer()

    def in_threads(self, *targets: Callable[[], object]) -> list[threading.Thread]:
        threads = [threading.Thread(target=target, daemon=True) for target in targets]
        for thread in threads:
            thread.start()
        return threads

    def join(self, threads: list[threading.Thread]) -> None:
        for thread in threads:
            thread.join(timeout=30)
            self.assertFalse(thread.is_alive(), "a thread is stuck")

    def assert_fails_fast(self) -> None:
        """A call now fails with ``MemcacheError`` without reaching the server."""
        reached: list[bool] = []
        with self.assertRaises(MemcacheError):
            self.client._safely_run_func(self.server, lambda: reached.append(True), None)
        self.assertEqual(reached, [])

    def test_concurrent_failures(self) -> None:
        """Eight threads failing at the same moment leave one open window, then it clears."""
        together = threading.Barrier(8, timeout=30)
        raised: list[BaseException] = []

        def refused() -> Any:
            together.wait()  # all eight are inside a call before any fails
            raise ConnectionRefusedError(111, "refused")

        def call() -> None:
            try:
                self.client._safely_run_func(self.server, refused, None)
            except BaseException as e:
                raised.append(e)

        self.join(self.in_threads(*[call] * 8))
        self.assertEqual([type(e) for e in raised], [ConnectionRefusedError] * 8)
        self.assertEqual(self.server.closed, 8)
        self.assert_fails_fast()
        self.now[0] += 0.21
        self.assertEqual(self.client._safely_run_func(self.server, lambda: "back", None), "back")
        self.assertEqual(self.client._safely_run_func(self.server, lambda: "again", None), "again")

    def test_success_keeps_a_newer_window(self) -> None:
        """A call that started after a window expired and succeeds late does not clear
        the window another thread's failure opened meanwhile."""
        with self.assertRaises(ConnectionRefusedError):
            self.client._safely_run_func(self.server, _refuse, None)
        self.now[0] += 0.21  # the first window has expired
        inside, proceed = threading.Event(), threading.Event()
        answers: list[object] = []

        def slow_success() -> Any:
            inside.set()
            proceed.wait(timeout=30)
            return "late"

        threads = self.in_threads(
            lambda: answers.append(self.client._safely_run_func(self.server, slow_success, None))
        )
        self.assertTrue(inside.wait(timeout=30))
        with self.assertRaises(ConnectionRefusedError):  # meanwhile, on this thread
            self.client._safely_run_func(self.server, _refuse, None)
        proceed.set()
        self.join(threads)
        self.assertEqual(answers, ["late"])
        self.assert_fails_fast()


def _refuse() -> Any:
    raise ConnectionRefusedError(111, "refused")


class _StubServer:
    """One server's pooled client, as ``_safely_run_func`` sees it (thread-safe)."""

    server = ("127.0.0.1", 11211)

    def __init__(self) -> None:
        self._closes: list[None] = []

    @property
    def closed(self) -> int:
        """How many times ``close`` was called."""
        return len(self._closes)

    def close(self) -> None:
        self._closes.append(None)  # list.append is atomic under the GIL


class ClockUseTests(SynchronousTestCase):
    """The storages read ``now`` on the calling (reactor) thread."""

    def test_sqlite_tombstone_uses_clock(self) -> None:
        """Tombstones are dated by the injected clock, not the wall clock."""
        from pushtwisted.testing import inline_run
        from tests.test_storage_contract import new_id

        clock = Clock()
        storage = SqliteStorage(
            os.path.join(self.mktemp(), "db.sqlite3"), inline_run, clock, ttl_deleted=10
        )
        self.addCleanup(storage.close)
        uaid, chid = new_id(), new_id()
        self.successResultOf(storage.register(uaid, chid, chid, 0))
        self.successResultOf(storage.unregister(uaid, chid))
        clock.advance(10)
        self.assertEqual(self.successResultOf(storage.expired(uaid, [chid])), [])
