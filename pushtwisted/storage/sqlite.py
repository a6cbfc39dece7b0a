"""``SqliteStorage``: the embedded, durable backend (stdlib ``sqlite3``).

One database file in WAL mode; every pool thread opens its own connection
(kept in a ``threading.local``) with a ``busy_timeout``, so readers never
block the writer and concurrent writers wait instead of failing.  Every
read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, which makes it
atomic across threads and processes sharing the file.

Tables (schema version 1, kept in ``PRAGMA user_version`` and migrated when
the first connection opens)::

    users(uaid PRIMARY KEY)
    channels(uaid, chid, channel_id, state, version, data, expires_at,
             PRIMARY KEY(uaid, chid))

``state`` uses pushgo's codes (0 deleted, 1 live, 2 registered).  ``version``
is stored as decimal text so any Python int round-trips (app servers may
send uint64 versions, past SQLite's signed 64-bit INTEGER).  ``data`` is a
UTF-8 BLOB (``surrogatepass``), so every ``str`` round-trips.  Only
tombstones have ``expires_at``; they count as absent once ``now >=
expires_at``, where ``now`` is the reactor clock read on the reactor thread
and passed in.  Expired tombstones are purged at ``open()``, by
``purge_expired()`` and per user at each ``unregister``.

The ``_blocking`` methods run on the storage pool.  They touch only their
arguments, their thread's connection and the connection registry, never
Twisted; every ``sqlite3.Error`` (or ``OSError``) becomes
``StorageUnavailable``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage.interface import PendingUpdate, UpdateOutcome, UpdateResult

if TYPE_CHECKING:
    from pushtwisted.threadpool import Runner

__all__ = ["SqliteStorage", "SCHEMA_VERSION", "DB_FILENAME"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: File name of the database inside the state directory.
DB_FILENAME = "pushtwisted.sqlite3"

_DELETED = 0
_LIVE = 1
_REGISTERED = 2

#: Most host parameters in one ``IN (...)`` list.
_CHUNK = 500

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE users (uaid TEXT NOT NULL PRIMARY KEY) WITHOUT ROWID",
        """CREATE TABLE channels (
            uaid TEXT NOT NULL,
            chid TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            state INTEGER NOT NULL,
            version TEXT NOT NULL DEFAULT '0',
            data BLOB,
            expires_at REAL,
            PRIMARY KEY (uaid, chid)
        ) WITHOUT ROWID""",
        "CREATE INDEX channels_expiry ON channels (expires_at) WHERE expires_at IS NOT NULL",
    ),
}

#: The schema version this code writes and reads.
SCHEMA_VERSION = max(_MIGRATIONS)


def _translated(func: Callable[_P, _T]) -> Callable[_P, _T]:
    """Turn sqlite3 and OS errors raised by ``func`` into ``StorageUnavailable``."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return func(*args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            raise StorageUnavailable(f"sqlite: {e}") from e

    return wrapper


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in a ``BEGIN IMMEDIATE`` transaction (write lock first)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _encode_data(data: str | None) -> bytes | None:
    return None if data is None else data.encode("utf-8", "surrogatepass")


def _decode_data(raw: bytes | None) -> str | None:
    return None if raw is None else bytes(raw).decode("utf-8", "surrogatepass")


class SqliteStorage:
    """A durable ``Storage`` in one SQLite file.

    :param path: the database file; its directory is created if missing.
        ``:memory:`` is not supported (each thread would get its own).
    :param run: the runner of blocking calls (``ThreadPoolService.run``).
    :param clock: the reactor clock; ``seconds()`` dates tombstones.
    :param ttl_deleted: seconds a tombstone of an unregistered channel lives.
    :param busy_timeout: seconds a connection waits for another writer.
    :param synchronous: ``PRAGMA synchronous`` (``FULL`` also survives power
        loss; ``NORMAL`` survives process crashes and is faster in WAL).
    """

    def __init__(
        self,
        path: str,
        run: Runner,
        clock: IReactorTime,
        *,
        ttl_deleted: float,
        busy_timeout: float = 5.0,
        synchronous: str = "FULL",
    ) -> None:
        if path == ":memory:" or path.startswith("file::memory:"):
            raise ValueError("SqliteStorage needs a file; ':memory:' is per connection")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        self._path = path
        self._run = run
        self._clock = clock
        self._ttl_deleted = ttl_deleted
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready = False
        self._closed = False

    # -- the asynchronous API (reactor thread) --------------------------------

    def open(self) -> Deferred[None]:
        """Create or migrate the schema and purge expired tombstones.

        Optional: the first call of any method opens the database too, but
        calling this at startup surfaces a bad path or a newer schema early.
        """
        return self._run("open", self._purge_blocking, self._clock.seconds()).addCallback(
            lambda _: None
        )

    def purge_expired(self) -> Deferred[int]:
        """Delete expired tombstones; fire with how many were deleted."""
        return self._run("purge_expired", self._purge_blocking, self._clock.seconds())

    def user_exists(self, uaid: str) -> Deferred[bool]:
        return self._run("user_exists", self._user_exists_blocking, uaid)

    def register(self, uaid: str, chid: str, channel_id: str, max_channels: int) -> Deferred[None]:
        return self._run("register", self._register_blocking, uaid, chid, channel_id, max_channels)

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        return self._run("unregister", self._unregister_blocking, uaid, chid, self._clock.seconds())

    def update(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool = False,
    ) -> Deferred[UpdateResult]:
        return self._run("update", self._update_blocking, uaid, chid, version, data, only_newer)

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        return self._run("fetch_pending", self._fetch_pending_blocking, uaid)

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        return self._run("ack", self._ack_blocking, uaid, chid, version)

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        return self._run(
            "expired", self._expired_blocking, uaid, list(chids), self._clock.seconds()
        )

    def drop_user(self, uaid: str) -> Deferred[None]:
        return self._run("drop_user", self._drop_user_blocking, uaid)

    def check(self) -> Deferred[None]:
        return self._run("check", self._check_blocking)

    def close(self) -> Deferred[None]:
        """Close every thread's connection; later calls fail ``StorageUnavailable``."""
        return self._run("close", self._close_blocking)

    # -- connections (pool threads) ------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it (and the schema) if new."""
        if self._closed:
            raise StorageUnavailable("sqlite storage is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        directory = os.path.dirname(self._path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # check_same_thread=False only so that close() may close every
        # thread's connection; each connection is used by its own thread only.
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not self._schema_ready:
                self._migrate(conn)
                self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if self._closed:
                conn.close()
                raise StorageUnavailable("sqlite storage is closed")
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        with _immediate(conn):
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            if current > SCHEMA_VERSION:
                raise StorageUnavailable(
                    f"database schema version {current} is newer than this code's "
                    f"{SCHEMA_VERSION}; refusing to touch it"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")

    # -- blocking operations (pool threads) -----------------------------------

    @_translated
    def _purge_blocking(self, now: float) -> int:
        conn = self._conn()
        cursor = conn.execute(
            "DELETE FROM channels WHERE state = ? AND expires_at <= ?", (_DELETED, now)
        )
        return cursor.rowcount

    @_translated
    def _user_exists_blocking(self, uaid: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM users WHERE uaid = ?", (uaid,)).fetchone()
        return row is not None

    @_translated
    def _register_blocking(self, uaid: str, chid: str, channel_id: str, max_channels: int) -> None:
        conn = self._conn()
        with _immediate(conn):
            conn.execute("INSERT OR IGNORE INTO users (uaid) VALUES (?)", (uaid,))
            row = conn.execute(
                "SELECT state FROM channels WHERE uaid = ? AND chid = ?", (uaid, chid)
            ).fetchone()
            if row is not None and row[0] != _DELETED:
                return
            if max_channels > 0:
                (active,) = conn.execute(
                    "SELECT count(*) FROM channels WHERE uaid = ? AND state != ?",
                    (uaid, _DELETED),
                ).fetchone()
                if active >= max_channels:
                    raise TooManyChannels(f"UAID holds {active} channels")
            conn.execute(
                "INSERT OR REPLACE INTO channels"
                " (uaid, chid, channel_id, state, version, data, expires_at)"
                " VALUES (?, ?, ?, ?, '0', NULL, NULL)",
                (uaid, chid, channel_id, _REGISTERED),
            )

    @_translated
    def _unregister_blocking(self, uaid: str, chid: str, now: float) -> None:
        conn = self._conn()
        with _immediate(conn):
            conn.execute(
                "DELETE FROM channels WHERE uaid = ? AND state = ? AND expires_at <= ?",
                (uaid, _DELETED, now),
            )
            conn.execute(
                "UPDATE channels SET state = ?, data = NULL, expires_at = ?"
                " WHERE uaid = ? AND chid = ? AND state != ?",
                (_DELETED, now + self._ttl_deleted, uaid, chid, _DELETED),
            )

    @_translated
    def _update_blocking(
        self, uaid: str, chid: str, version: int, data: str | None, only_newer: bool
    ) -> UpdateResult:
        conn = self._conn()
        with _immediate(conn):
            row = conn.execute(
                "SELECT state, channel_id, version FROM channels WHERE uaid = ? AND chid = ?",
                (uaid, chid),
            ).fetchone()
            if row is None or row[0] == _DELETED:
                return UpdateResult(outcome=UpdateOutcome.GONE)
            state, channel_id, stored = row
            if only_newer and version <= int(stored):
                return UpdateResult(outcome=UpdateOutcome.STALE, channel_id=channel_id)
            conn.execute(
                "UPDATE channels SET state = ?, version = ?, data = ? WHERE uaid = ? AND chid = ?",
                (_LIVE, str(version), _encode_data(data), uaid, chid),
            )
        return UpdateResult(outcome=UpdateOutcome.STORED, channel_id=channel_id)

    @_translated
    def _fetch_pending_blocking(self, uaid: str) -> list[PendingUpdate]:
        rows = self._conn().execute(
            "SELECT channel_id, version, data FROM channels"
            " WHERE uaid = ? AND state = ? ORDER BY chid",
            (uaid, _LIVE),
        )
        return [
            PendingUpdate(channel_id=channel_id, version=int(version), data=_decode_data(data))
            for channel_id, version, data in rows
        ]

    @_translated
    def _ack_blocking(self, uaid: str, chid: str, version: int) -> bool:
        conn = self._conn()
        with _immediate(conn):
            row = conn.execute(
                "SELECT state, version FROM channels WHERE uaid = ? AND chid = ?", (uaid, chid)
            ).fetchone()
            if row is None or row[0] != _LIVE or version < int(row[1]):
                return False
            conn.execute(
                "UPDATE channels SET state = ?, data = NULL WHERE uaid = ? AND chid = ?",
                (_REGISTERED, uaid, chid),
            )
        return True

    @_translated
    def _expired_blocking(self, uaid: str, chids: list[str], now: float) -> list[str]:
        conn = self._conn()
        wanted = sorted(set(chids))
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT chid FROM channels WHERE uaid = ? AND state = ? AND expires_at > ?"
                f" AND chid IN ({marks})",
                (uaid, _DELETED, now, *chunk),
            )
            found.update(chid for (chid,) in rows)
        return [chid for chid in chids if chid in found]

    @_translated
    def _drop_user_blocking(self, uaid: str) -> None:
        conn = self._conn()
        with _immediate(conn):
            conn.execute("DELETE FROM channels WHERE uaid = ?", (uaid,))
            conn.execute("DELETE FROM users WHERE uaid = ?", (uaid,))

    @_translated
    def _check_blocking(self) -> None:
        conn = self._conn()
        # Taking the write lock proves that writes can proceed, not just reads.
        with _immediate(conn):
            conn.execute("SELECT count(*) FROM users WHERE uaid = ''").fetchone()

    def _close_blocking(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
