"""Build the storage backend, its service and its thread pool from ``[storage]``.

``build_thread_pool`` makes the ``ThreadPoolService`` (add it to the service
tree first, so it stops last); ``build_storage_service`` picks the backend
and wraps it in the ``StorageService`` that opens, purges and closes it:

- ``memory``: ``MemoryStorage``, volatile, needs no pool;
- ``sqlite``: ``SqliteStorage`` on ``<path>/pushtwisted.sqlite3``, its write
  queue bounded by ``queue_limit`` and each write by ``timeout``; opened at
  start and purged every hour of expired tombstones and of users not seen
  for ``ttl_registered``;
- ``memcached``: ``MemcachedStorage`` over ``servers``, with the client of
  ``build_memcache_client``, whose connection pools are sized to the thread
  pool.  The cluster directory shares that client (one per server set);
  closing the storage closes it.
"""

from __future__ import annotations

import os

from twisted.internet.interfaces import IReactorTime

from pushtwisted.config import StorageConfig
from pushtwisted.errors import ConfigError
from pushtwisted.metrics import Metrics
from pushtwisted.storage._memcache import MemcacheClient, make_memcached_client
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.storage.service import StorageService
from pushtwisted.storage.sqlite import DB_FILENAME, SqliteStorage
from pushtwisted.threadpool import ThreadPoolService

__all__ = [
    "build_memcache_client",
    "build_storage_service",
    "build_thread_pool",
    "sqlite_path",
]


def sqlite_path(config: StorageConfig) -> str:
    """Return the SQLite database file inside the state directory."""
    return os.path.join(config.path, DB_FILENAME)


def build_thread_pool(
    config: StorageConfig, *, reactor: IReactorTime, metrics: Metrics
) -> ThreadPoolService:
    """Return the storage ``ThreadPoolService`` sized and bounded by ``config``."""
    return ThreadPoolService(
        reactor,
        min_threads=config.pool_min_threads,
        max_threads=config.pool_max_threads,
        max_queue=config.queue_limit,
        timeout=config.timeout,
        metrics=metrics,
    )


def build_memcache_client(config: StorageConfig) -> MemcacheClient:
    """Return the memcached client of ``config.servers``, sized to the storage pool.

    No I/O: connections are made by the first calls.
    """
    client: MemcacheClient = make_memcached_client(
        config.servers,
        pool_size=config.pool_max_threads,
        connect_timeout=config.connect_timeout,
        timeout=config.timeout,
    )
    return client


def build_storage_service(
    config: StorageConfig,
    *,
    reactor: IReactorTime,
    pool: ThreadPoolService | None,
    memcache: MemcacheClient | None = None,
) -> StorageService:
    """Return the ``StorageService`` of the backend named by ``config.backend``.

    :param pool: runs the blocking calls of ``sqlite`` and ``memcached``
        (and reports their latency and queue depth); may be None for ``memory``.
    :param memcache: the client ``memcached`` uses (``build_memcache_client``;
        one is built when None).
    :raises ConfigError: for an unknown backend, or a pool-less blocking one.
    """
    if config.backend == "memory":
        memory = MemoryStorage(clock=reactor, tombstone_ttl=config.ttl_deleted)
        return StorageService(memory, reactor)
    if config.backend not in ("sqlite", "memcached"):
        raise ConfigError(f"storage.backend: unknown backend {config.backend!r}")
    if pool is None:
        raise ConfigError(f"storage.backend: {config.backend} needs the storage thread pool")
    if config.backend == "sqlite":
        sqlite = SqliteStorage(
            sqlite_path(config),
            pool.run,
            reactor,
            ttl_deleted=config.ttl_deleted,
            ttl_registered=config.ttl_registered,
            busy_timeout=config.timeout,
            synchronous=config.sqlite_synchronous,
            max_pending=config.queue_limit,
            timeout=config.timeout,
        )
        return StorageService(sqlite, reactor, opener=sqlite.open, purge=sqlite.purge_expired)
    memcached = MemcachedStorage(
        memcache if memcache is not None else build_memcache_client(config),
        pool.submit,
        reactor,
        ttl_live=config.ttl_live,
        ttl_registered=config.ttl_registered,
        ttl_deleted=config.ttl_deleted,
        key_prefix=config.key_prefix,
    )
    return StorageService(memcached, reactor)
