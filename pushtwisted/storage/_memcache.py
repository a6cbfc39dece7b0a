r"""memcached plumbing shared by ``MemcachedStorage`` and ``MemcachedDirectory``.

- ``make_memcached_client``: the thread-safe pymemcache client (a
  ``HashClient`` of ``PooledClient``\ s) that fails fast, never turns a
  failure into a miss, and sends a round of commands to each server in one
  write (``pipeline``, on ``pushtwisted.storage._memcache_wire``);
- ``MemcacheClient``: the part of its API the two users call (a fake in tests);
- ``JsonSerde``: values as plain JSON;
- ``storage_error``: client errors become ``StorageUnavailable``;
- ``memcached_expire``: a TTL as memcached's ``exptime`` (relative up to 30
  days, absolute beyond);
- ``check_key_prefix``: refuses a ``key_prefix`` that would break keys.

Everything here but ``make_memcached_client`` runs on the storage pool's
threads, inside the executor of ``pushtwisted.storage._memcache_steps``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pymemcache.client.base import PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from pushtwisted.config import key_prefix_problem
from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage._memcache_wire import Command, Get, exchange

__all__ = [
    "JsonSerde",
    "MAX_RELATIVE_EXPIRE",
    "MemcacheClient",
    "check_key_prefix",
    "make_memcached_client",
    "memcached_expire",
    "storage_error",
]

#: memcached reads a larger expiry as an absolute Unix time (30 days).
MAX_RELATIVE_EXPIRE = 30 * 24 * 3600


def check_key_prefix(prefix: str) -> None:
    """Refuse a ``key_prefix`` that would make memcached keys invalid.

    The rule is ``[storage] key_prefix``'s (``pushtwisted.config``): printable
    ASCII without spaces, short enough for the longest key of either user.

    :raises ValueError: naming what is wrong with ``prefix``.
    """
    problem = key_prefix_problem(prefix)
    if problem is not None:
        raise ValueError(f"key_prefix {problem}")


def memcached_expire(ttl: float, now: float) -> int:
    """Return the memcached ``exptime`` that expires ``ttl`` seconds after ``now``.

    Up to 30 days it is the relative number of seconds (at least 1, since 0
    means "never"); beyond, memcached expects an absolute Unix time.
    """
    seconds = max(1, math.ceil(ttl))
    if seconds <= MAX_RELATIVE_EXPIRE:
        return seconds
    return int(now) + seconds


class JsonSerde:
    """pymemcache serde storing values as plain JSON (flags 0), thread-safe."""

    def serialize(self, key: bytes | str, value: object) -> tuple[bytes, int]:
        """Encode ``value`` as compact ASCII JSON."""
        return json.dumps(value, separators=(",", ":")).encode("ascii"), 0

    def deserialize(self, key: bytes | str, value: bytes, flags: int) -> Any:
        """Decode JSON; raises ``ValueError`` on corrupt data."""
        return json.loads(value)


class _StoreHashClient(HashClient):  # type: ignore[misc]  # pymemcache is untyped
    """A ``HashClient`` for a *store*: keys never move, and failures raise.

    Stock ``HashClient`` answers the default value (a miss) while a failed
    server waits out ``retry_timeout``, even with ``ignore_exc=False``, and
    after ``retry_attempts`` it drops the server from the ring so its keys
    hash to another server, where they miss too.  For a cache that is fine;
    here a miss resets a UAID.  This subclass keeps every server on the ring
    and, for ``retry_timeout`` seconds after a connection failure, fails the
    server's calls at once with ``MemcacheError`` (no connect attempt, so a
    dead server does not tie up pool threads); the next call after that
    tries again, so service resumes within ``retry_timeout`` of the server's
    return.  When the server went away (not a mere timeout) its pooled
    connections are dropped too, so stale sockets do not fail once each
    after it returns.  ``retry_attempts`` and ``dead_timeout`` are unused.

    Every storage pool thread calls through one client, so the windows
    (``_down_until``, per server) are read and changed under ``_window_lock``.
    A call that succeeds after its window expired clears that window only if
    it is still the one it saw: a failure on another thread meanwhile opened
    a newer one, which stays.  Two failures at once keep the later deadline.
    The lock is held for dict operations only, never during a call.

    :param clock: the monotonic clock (seconds) of the fail-fast window.
    """

    def __init__(self, *args: Any, clock: Callable[[], float], **kwargs: Any) -> None:
        self._clock = clock
        self._window_lock = threading.Lock()
        self._down_until: dict[object, float] = {}
        super().__init__(*args, **kwargs)

    def _safely_run_func(
        self, client: Any, func: Callable[..., Any], default_val: Any, *args: Any, **kwargs: Any
    ) -> Any:
        server = client.server
        with self._window_lock:
            until = self._down_until.get(server)
            down = until is not None and self._clock() < until
        if down:
            raise MemcacheError(f"memcached {server} failed less than {self.retry_timeout}s ago")
        try:
            result = func(*args, **kwargs)
        except (OSError, MemcacheUnexpectedCloseError) as e:
            with self._window_lock:
                deadline = self._clock() + self.retry_timeout
                self._down_until[server] = max(deadline, self._down_until.get(server, deadline))
            if not isinstance(e, TimeoutError):
                # The server went away: its pooled connections are all dead,
                # and reusing them after it returns would fail once each.
                client.close()
            raise
        if until is not None:
            with self._window_lock:
                if self._down_until.get(server) == until:
                    del self._down_until[server]
        return result

    def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """Send ``commands`` to their servers, one write per server; return the replies.

        One reply per command, in order, as ``_memcache_wire.exchange``
        gives them; the commands of a server that fails (or is in its
        fail-fast window) get that error as their reply.  With several
        servers, every write of the round is answered before any read is
        sent, as one server's connection guarantees by itself.
        """
        clients = self.clients
        if len(clients) == 1:
            (client,) = clients.values()
            return self._exchange(client, commands)
        by_server: dict[object, tuple[PooledClient, list[int]]] = {}
        for i, command in enumerate(commands):
            client = self._get_client(command.key)
            entry = by_server.get(client.server)
            if entry is None:
                by_server[client.server] = (client, [i])
            else:
                entry[1].append(i)
        if len(by_server) == 1:
            ((client, _),) = by_server.values()
            return self._exchange(client, commands)
        replies: list[object] = [None] * len(commands)
        for reads in (False, True):  # every write, then every read
            for client, indexes in by_server.values():
                chosen = [i for i in indexes if isinstance(commands[i], Get) is reads]
                if chosen:
                    answers = self._exchange(client, [commands[i] for i in chosen])
                    for i, answer in zip(chosen, answers, strict=True):
                        replies[i] = answer
        return replies

    def _exchange(self, client: PooledClient, commands: Sequence[Command]) -> list[object]:
        """One server's share of a round; its error is every command's reply."""
        try:
            return self._safely_run_func(  # type: ignore[no-any-return]
                client, _pooled_exchange, None, client, commands
            )
        except (MemcacheError, OSError) as e:
            return [e] * len(commands)

    def close(self) -> None:
        """Close every server's connections, whatever its state."""
        for client in self.clients.values():
            client.close()

    def check_servers(self) -> None:
        """Ask every server for its version; raise for the first that fails."""
        for client in self.clients.values():
            client.version()

    def set_many(self, *args: Any, **kwargs: Any) -> Any:
        """Unsupported: stock ``set_many`` reports failures as a key list."""
        raise NotImplementedError("set_many is not used by pushtwisted")


def _pooled_exchange(client: PooledClient, commands: Sequence[Command]) -> list[object]:
    """Run ``exchange`` on a connection of ``client``'s pool (dropped if it fails)."""
    with client.client_pool.get_and_release(destroy_on_fail=True) as connection:
        return exchange(connection, commands)


def make_memcached_client(
    servers: list[str],
    *,
    pool_size: int,
    connect_timeout: float,
    timeout: float,
    retry_timeout: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> HashClient:
    """Build the thread-safe pymemcache client of ``MemcachedStorage``.

    A ``HashClient`` (rendezvous hashing over ``servers``, each
    ``host:port``, ``[v6]:port`` or ``unix:/path``) of ``PooledClient``s, each
    pool holding up to ``pool_size`` connections (size it to the storage
    pool's ``max_threads``), with socket timeouts, JSON values, errors that
    raise (``ignore_exc=False``), replies awaited on every store command
    (``default_noreply=False``, so failed sets are seen) and a fail-fast
    window of ``retry_timeout`` seconds after a server fails, timed by
    ``clock`` (see ``_StoreHashClient``).
    """
    if not servers:
        raise ValueError("at least one memcached server is needed")
    return _StoreHashClient(
        servers,
        serde=JsonSerde(),
        connect_timeout=connect_timeout,
        timeout=timeout,
        no_delay=True,
        use_pooling=True,
        max_pool_size=pool_size,
        ignore_exc=False,
        default_noreply=False,
        retry_attempts=0,
        retry_timeout=retry_timeout,
        dead_timeout=retry_timeout,
        clock=clock,
    )


class MemcacheClient(Protocol):
    """The part of the memcached client that ``MemcachedStorage`` and the directory use."""

    def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """Run a round of commands: the writes in order, then the reads.

        One reply per command (see ``_memcache_wire.exchange``); a command
        whose server failed gets the error (``MemcacheError``, ``OSError``)
        as its reply.
        """

    def close(self) -> None:
        """Close every connection."""

    def check_servers(self) -> None:
        """Reach every server (a ``HashClient`` spreads keys); raise when one fails."""


def storage_error(error: Exception) -> Exception:
    """Return ``error`` as the error a storage caller sees.

    Client errors (``MemcacheError``, ``OSError``) and undecodable values
    (``ValueError``) become ``StorageUnavailable``; the rest (already a
    ``StorageUnavailable``, ``TooManyChannels``) is returned as it is.
    """
    if isinstance(error, (MemcacheError, OSError)):
        translated = StorageUnavailable(f"memcached: {error!r}")
    elif isinstance(error, ValueError):
        translated = StorageUnavailable(f"memcached: undecodable value: {error}")
    else:
        return error
    translated.__cause__ = error
    return translated
