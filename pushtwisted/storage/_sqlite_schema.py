"""The SQLite schema of ``SqliteStorage`` and its migrations.

Tables (kept in ``PRAGMA user_version`` and migrated when the first
connection opens)::

    users(uaid PRIMARY KEY, seen_at)
    channels(uaid, chid, channel_id, state, version, data, expires_at,
             PRIMARY KEY(uaid, chid))

``state`` uses pushgo's codes (``DELETED`` 0, ``LIVE`` 1, ``REGISTERED`` 2).
``version`` is stored as decimal text so any Python int round-trips (app
servers may send uint64 versions, past SQLite's signed 64-bit INTEGER).
``data`` is a UTF-8 BLOB (``surrogatepass``, ``encode_data``), so every
``str`` round-trips.  Only tombstones have ``expires_at``.  ``seen_at``
(version 2) is when the user last registered or said hello
(``pushtwisted.storage._sqlite_expiry``); version 1 users get it at the
first purge after the migration, which keeps every row.

Version 3 adds WebPush (``pushtwisted.storage._sqlite_messages``)::

    users(..., mode, next_seq)
    wp_channels(uaid, chid, channel_id, PRIMARY KEY(uaid, chid))
    messages(uaid, seq, chid, topic, ttl, stored_at, expires_at, data,
             headers, PRIMARY KEY(uaid, seq), UNIQUE(uaid, chid, topic))

``mode`` is 0 (SimplePush: every user before version 3) or 1 (WebPush);
``next_seq`` is a WebPush user's next message sequence number.  A WebPush
user's channels are rows of ``wp_channels``, never of ``channels``, so the
SimplePush statements never see them.  ``messages`` is ordered per UAID by
``seq``; a topic has one slot per (uaid, chid, topic); ``expires_at`` is
``stored_at + ttl``; ``headers`` is a JSON object.

Everything here runs on the storage pool, on a connection of the storage;
``translated`` and ``as_storage_error`` turn what sqlite3 raises there into
``StorageUnavailable``.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from pushtwisted.errors import StorageUnavailable

__all__ = [
    "DELETED",
    "LIVE",
    "REGISTERED",
    "SCHEMA_VERSION",
    "as_storage_error",
    "decode_data",
    "encode_data",
    "immediate",
    "migrate",
    "translated",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

DELETED = 0
LIVE = 1
REGISTERED = 2

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
    2: (
        "ALTER TABLE users ADD COLUMN seen_at REAL",
        "CREATE INDEX users_seen ON users (seen_at)",
    ),
    3: (
        # Existing users are SimplePush ones (mode 0).
        "ALTER TABLE users ADD COLUMN mode INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN next_seq INTEGER",
        """CREATE TABLE wp_channels (
            uaid TEXT NOT NULL,
            chid TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            PRIMARY KEY (uaid, chid)
        ) WITHOUT ROWID""",
        """CREATE TABLE messages (
            uaid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            chid TEXT NOT NULL,
            topic TEXT,
            ttl INTEGER NOT NULL,
            stored_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            data BLOB,
            headers TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (uaid, seq)
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX messages_topic ON messages (uaid, chid, topic)"
        " WHERE topic IS NOT NULL",
        "CREATE INDEX messages_expiry ON messages (expires_at)",
    ),
}

#: The schema version this code writes and reads.
SCHEMA_VERSION = max(_MIGRATIONS)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in a ``BEGIN IMMEDIATE`` transaction (write lock first)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database up to ``SCHEMA_VERSION``.

    :raises StorageUnavailable: when it was written by a newer version.
    """
    with immediate(conn):
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


def encode_data(data: str | None) -> bytes | None:
    """Return ``data`` as stored (UTF-8, lone surrogates kept)."""
    return None if data is None else data.encode("utf-8", "surrogatepass")


def decode_data(raw: bytes | None) -> str | None:
    """Return stored data as the ``str`` that was written."""
    return None if raw is None else bytes(raw).decode("utf-8", "surrogatepass")


def translated(func: Callable[_P, _T]) -> Callable[_P, _T]:
    """Turn sqlite3 and OS errors raised by ``func`` into ``StorageUnavailable``."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return func(*args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            raise StorageUnavailable(f"sqlite: {e}") from e

    return wrapper


def as_storage_error(e: BaseException) -> BaseException:
    """Map sqlite3 and OS errors to ``StorageUnavailable``; keep others."""
    if isinstance(e, (sqlite3.Error, OSError)):
        error = StorageUnavailable(f"sqlite: {e}")
        error.__cause__ = e
        return error
    return e
