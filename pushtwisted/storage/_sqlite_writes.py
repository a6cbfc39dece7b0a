"""The write operations of ``SqliteStorage``, each on the writer's connection.

``SqliteStorage`` runs them inside the writer's open transaction (its group
commit).  ``register`` and ``unregister`` may write several statements and
run in a savepoint of their own; the others write one statement at most:
in the usual case ``update`` (without ``only_newer``) and ``ack`` are one
``UPDATE ... RETURNING`` each.  They raise ``sqlite3.Error`` (turned into
``StorageUnavailable`` by the caller) or ``TooManyChannels``.  The writes of
expiry (``purge``, several statements; ``touch``, one) are in
``pushtwisted.storage._sqlite_expiry``.
"""

from __future__ import annotations

import sqlite3

from pushtwisted.errors import TooManyChannels
from pushtwisted.storage._sqlite_schema import DELETED, LIVE, REGISTERED, encode_data
from pushtwisted.storage.interface import UpdateOutcome, UpdateResult

__all__ = ["ack", "check", "register", "unregister", "update"]


def register(
    conn: sqlite3.Connection,
    uaid: str,
    chid: str,
    channel_id: str,
    max_channels: int,
    now: float,
) -> None:
    """Create the user (seen at ``now``) and the channel; several statements."""
    conn.execute(
        "INSERT INTO users (uaid, seen_at) VALUES (?, ?)"
        " ON CONFLICT (uaid) DO UPDATE SET seen_at = excluded.seen_at",
        (uaid, now),
    )
    row = conn.execute(
        "SELECT state FROM channels WHERE uaid = ? AND chid = ?", (uaid, chid)
    ).fetchone()
    if row is not None and row[0] != DELETED:
        return
    if max_channels > 0:
        (active,) = conn.execute(
            "SELECT count(*) FROM channels WHERE uaid = ? AND state != ?",
            (uaid, DELETED),
        ).fetchone()
        if active >= max_channels:
            raise TooManyChannels(f"UAID holds {active} channels")
    conn.execute(
        "INSERT OR REPLACE INTO channels"
        " (uaid, chid, channel_id, state, version, data, expires_at)"
        " VALUES (?, ?, ?, ?, '0', NULL, NULL)",
        (uaid, chid, channel_id, REGISTERED),
    )


def unregister(
    conn: sqlite3.Connection, uaid: str, chid: str, now: float, ttl_deleted: float
) -> None:
    """Tombstone the channel, purging the user's expired ones; several statements."""
    conn.execute(
        "DELETE FROM channels WHERE uaid = ? AND state = ? AND expires_at <= ?",
        (uaid, DELETED, now),
    )
    conn.execute(
        "UPDATE channels SET state = ?, data = NULL, expires_at = ?"
        " WHERE uaid = ? AND chid = ? AND state != ?",
        (DELETED, now + ttl_deleted, uaid, chid, DELETED),
    )


def update(
    conn: sqlite3.Connection,
    uaid: str,
    chid: str,
    version: int,
    data: str | None,
    only_newer: bool,
) -> UpdateResult:
    """Store the channel's pending update (``Storage.update``); one write."""
    if not only_newer:
        # One statement: writes any channel but a tombstone.
        rows = conn.execute(
            "UPDATE channels SET state = ?, version = ?, data = ?"
            " WHERE uaid = ? AND chid = ? AND state != ? RETURNING channel_id",
            (LIVE, str(version), encode_data(data), uaid, chid, DELETED),
        ).fetchall()
        if not rows:
            return UpdateResult(outcome=UpdateOutcome.GONE)
        return UpdateResult(outcome=UpdateOutcome.STORED, channel_id=rows[0][0])
    row = conn.execute(
        "SELECT state, channel_id, version FROM channels WHERE uaid = ? AND chid = ?",
        (uaid, chid),
    ).fetchone()
    if row is None or row[0] == DELETED:
        return UpdateResult(outcome=UpdateOutcome.GONE)
    _state, channel_id, stored = row
    if version <= int(stored):
        return UpdateResult(outcome=UpdateOutcome.STALE, channel_id=channel_id)
    conn.execute(
        "UPDATE channels SET state = ?, version = ?, data = ? WHERE uaid = ? AND chid = ?",
        (LIVE, str(version), encode_data(data), uaid, chid),
    )
    return UpdateResult(outcome=UpdateOutcome.STORED, channel_id=channel_id)


def ack(conn: sqlite3.Connection, uaid: str, chid: str, version: int) -> bool:
    """Clear the pending update up to ``version`` (``Storage.ack``); one write."""
    # The usual ack names the stored version: one statement (versions are
    # stored as canonical decimal text, so equal text is an equal number).
    if conn.execute(
        "UPDATE channels SET state = ?, data = NULL"
        " WHERE uaid = ? AND chid = ? AND state = ? AND version = ? RETURNING 1",
        (REGISTERED, uaid, chid, LIVE, str(version)),
    ).fetchall():
        return True
    row = conn.execute(
        "SELECT state, version FROM channels WHERE uaid = ? AND chid = ?", (uaid, chid)
    ).fetchone()
    if row is None or row[0] != LIVE or version < int(row[1]):
        return False
    conn.execute(
        "UPDATE channels SET state = ?, data = NULL WHERE uaid = ? AND chid = ?",
        (REGISTERED, uaid, chid),
    )
    return True


def check(conn: sqlite3.Connection) -> None:
    """Read once inside the batch: the batch holds the write lock, so writes work."""
    conn.execute("SELECT count(*) FROM users WHERE uaid = ''").fetchone()
