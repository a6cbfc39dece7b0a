"""What expires in ``SqliteStorage``: tombstones, messages, and users not seen for a while.

A tombstone counts as absent once ``now >= expires_at`` and is deleted by
the purge.  A user (UAID) is *seen* when it registers a channel or says
hello (its ``fetch_pending``): ``users.seen_at`` records it, like
memcached's refresh of a user's records at hello.  Updates and acks do not
count: an app server that keeps sending to an abandoned device does not
keep it.  To keep hellos free of writes, ``seen_at`` is rewritten only when
it is older than ``slack(ttl)`` (an hour, or half the TTL when that is
shorter), so it may lag the last hello by that much; the purge therefore
deletes a user (with its channels, pending updates, tombstones and WebPush
messages) once
``seen_at`` is more than ``ttl + slack`` old, so that no user goes before
``ttl`` has passed since it was last seen.

Each function here but ``purge_all`` (which queues ``purge`` writes from the
reactor thread) runs on the storage pool, inside the writer's transaction
(``purge``, ``touch``) or on a read connection (``stale``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from twisted.internet.defer import Deferred

from pushtwisted.storage import _sqlite_messages as messages
from pushtwisted.storage._sqlite_schema import DELETED

__all__ = ["PURGE_USERS", "purge", "purge_all", "slack", "stale", "touch"]

#: Most users one ``purge`` deletes, so one purge never holds the writer long.
PURGE_USERS = 500

#: Longest lag of ``seen_at`` behind the last hello, in seconds.
_MAX_SLACK = 3600.0


def slack(ttl: float) -> float:
    """Return how old ``seen_at`` may get before a hello rewrites it."""
    return min(_MAX_SLACK, ttl / 2)


def purge(conn: sqlite3.Connection, now: float, ttl: float | None) -> tuple[int, int]:
    """Delete what expired, and up to ``PURGE_USERS`` users not seen for ``ttl``.

    Expired tombstones and WebPush messages go at once.

    Users with no ``seen_at`` (written before it existed) are given ``now``.

    :param ttl: seconds a user lives unseen; None keeps users forever.
    :returns: how many tombstones and expired messages, and how many users,
        were deleted.
    """
    tombstones = conn.execute(
        "DELETE FROM channels WHERE state = ? AND expires_at <= ?", (DELETED, now)
    ).rowcount
    tombstones += messages.purge(conn, now)
    if ttl is None:
        return tombstones, 0
    conn.execute("UPDATE users SET seen_at = ? WHERE seen_at IS NULL", (now,))
    uaids = [
        uaid
        for (uaid,) in conn.execute(
            "SELECT uaid FROM users WHERE seen_at < ? LIMIT ?",
            (now - ttl - slack(ttl), PURGE_USERS),
        )
    ]
    if uaids:
        marks = ", ".join("?" * len(uaids))
        conn.execute(f"DELETE FROM channels WHERE uaid IN ({marks})", uaids)
        conn.execute(f"DELETE FROM wp_channels WHERE uaid IN ({marks})", uaids)
        conn.execute(f"DELETE FROM messages WHERE uaid IN ({marks})", uaids)
        conn.execute(f"DELETE FROM users WHERE uaid IN ({marks})", uaids)
    return tombstones, len(uaids)


def touch(conn: sqlite3.Connection, uaid: str, now: float) -> None:
    """Record that ``uaid`` was seen at ``now`` (an unknown user is left unknown)."""
    conn.execute("UPDATE users SET seen_at = ? WHERE uaid = ?", (now, uaid))


def stale(conn: sqlite3.Connection, uaid: str, now: float, ttl: float | None) -> bool:
    """Return True when ``uaid`` is a user whose ``seen_at`` a hello should rewrite.

    :param ttl: seconds a user lives unseen; None (forever): always False.
    """
    if ttl is None:
        return False
    row = conn.execute("SELECT seen_at FROM users WHERE uaid = ?", (uaid,)).fetchone()
    return row is not None and (row[0] is None or now - row[0] >= slack(ttl))


async def purge_all(purge_once: Callable[[], Deferred[tuple[int, int]]]) -> int:
    """Run ``purge_once`` (a write of ``purge``) until it leaves no expired user.

    :returns: how many tombstones and users were deleted in all.
    """
    total, users = 0, PURGE_USERS
    while users == PURGE_USERS:
        tombstones, users = await purge_once()
        total += tombstones + users
    return total
