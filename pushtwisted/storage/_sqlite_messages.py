"""The WebPush half of ``SqliteStorage``: user modes, channels and messages.

The tables are schema version 3 of ``pushtwisted.storage._sqlite_schema``:
``users.mode`` (``SIMPLEPUSH`` 0, ``WEBPUSH`` 1) and ``users.next_seq``,
``wp_channels`` (a WebPush user's channels) and ``messages``.  A WebPush
channel is a row of ``wp_channels`` and never of ``channels``, so the
SimplePush operations (``update``, ``ack``, ``fetch_pending``,
``expired``) never find one; unregister deletes it with its messages and
leaves no tombstone (``expired`` is SimplePush's).

The write functions (``register``, ``unregister``, ``store``, ``delete``,
``purge``) run inside the writer's transaction, the reads (``user_mode``,
``fetch``, ``fetch_pending``, ``open_user``) on a read connection; all on
the storage pool.  They raise ``sqlite3.Error`` (turned into
``StorageUnavailable`` by the caller) or ``TooManyChannels``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Concatenate, ParamSpec

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage._sqlite_schema import LIVE, decode_data, encode_data
from pushtwisted.storage.interface import (
    Keep,
    Mode,
    NewMessage,
    Opened,
    PendingUpdate,
    StoredMessage,
    StoreOutcome,
    StoreResult,
)
from pushtwisted.storage.opening import fetch_kind

__all__ = [
    "SIMPLEPUSH",
    "WEBPUSH",
    "delete",
    "fetch",
    "fetch_pending",
    "first_seq",
    "open_user",
    "purge",
    "register",
    "store",
    "unregister",
    "user_mode",
]

#: ``users.mode`` of a SimplePush user (every user of an older schema).
SIMPLEPUSH = 0
#: ``users.mode`` of a WebPush user.
WEBPUSH = 1

_P = ParamSpec("_P")

_MODES = {SIMPLEPUSH: Mode.SIMPLEPUSH, WEBPUSH: Mode.WEBPUSH}


def first_seq(now: float) -> int:
    """The first sequence number of a user created at ``now`` (the clock in µs)."""
    return int(now * 1_000_000)


def user_mode(conn: sqlite3.Connection, uaid: str) -> Mode | None:
    """Return the mode of ``uaid``, or None when there is no such user (a read)."""
    row = conn.execute("SELECT mode FROM users WHERE uaid = ?", (uaid,)).fetchone()
    if row is None:
        return None
    mode = _MODES.get(row[0])
    if mode is None:
        raise StorageUnavailable(f"sqlite: user has an unknown mode {row[0]!r:.20}")
    return mode


def fetch_pending(conn: sqlite3.Connection, uaid: str) -> list[PendingUpdate]:
    """Return the live SimplePush updates of ``uaid``, by chid (a read)."""
    rows = conn.execute(
        "SELECT channel_id, version, data FROM channels WHERE uaid = ? AND state = ? ORDER BY chid",
        (uaid, LIVE),
    )
    return [
        PendingUpdate(channel_id=channel_id, version=int(version), data=decode_data(data))
        for channel_id, version, data in rows
    ]


def open_user(conn: sqlite3.Connection, uaid: str, keep: Keep, now: float) -> Opened:
    """``Storage.open_user`` without a claim, as one read: the mode, then the fetch."""
    mode = user_mode(conn, uaid)
    if not keep(mode):
        return Opened(mode, False)
    kind = fetch_kind(mode, False)
    if kind == "messages":
        return Opened(mode, True, messages=fetch(conn, uaid, now))
    if kind == "pending":
        return Opened(mode, True, pending=fetch_pending(conn, uaid))
    return Opened(mode, True)


#: The SimplePush ``register`` write: (conn, uaid, chid, channel_id, max_channels, now).
_RegisterSimplePush = Callable[[sqlite3.Connection, str, str, str, int, float], None]


def register(
    conn: sqlite3.Connection,
    uaid: str,
    chid: str,
    channel_id: str,
    max_channels: int,
    now: float,
    mode: Mode,
    simplepush: _RegisterSimplePush,
) -> None:
    """``Storage.register``: a WebPush channel here, else ``simplepush``'s.

    The user is a WebPush one when it exists with that mode, or when it is
    new and ``mode`` is ``WEBPUSH``; then it is created (or seen at ``now``)
    and the channel added unless it exists.  Several statements.
    """
    row = conn.execute("SELECT mode FROM users WHERE uaid = ?", (uaid,)).fetchone()
    if (row is None and mode is not Mode.WEBPUSH) or (row is not None and row[0] != WEBPUSH):
        simplepush(conn, uaid, chid, channel_id, max_channels, now)
        return
    conn.execute(
        "INSERT INTO users (uaid, seen_at, mode, next_seq) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (uaid) DO UPDATE SET seen_at = excluded.seen_at",
        (uaid, now, WEBPUSH, first_seq(now)),
    )
    if conn.execute(
        "SELECT 1 FROM wp_channels WHERE uaid = ? AND chid = ?", (uaid, chid)
    ).fetchone():
        return
    if max_channels > 0:
        (active,) = conn.execute(
            "SELECT count(*) FROM wp_channels WHERE uaid = ?", (uaid,)
        ).fetchone()
        if active >= max_channels:
            raise TooManyChannels(f"UAID holds {active} channels")
    conn.execute(
        "INSERT INTO wp_channels (uaid, chid, channel_id) VALUES (?, ?, ?)",
        (uaid, chid, channel_id),
    )


def unregister(
    conn: sqlite3.Connection,
    uaid: str,
    chid: str,
    simplepush: Callable[Concatenate[sqlite3.Connection, str, str, _P], None],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> None:
    """``Storage.unregister``: ``simplepush(conn, uaid, chid, *args)``, then a WebPush
    channel's, with its messages."""
    simplepush(conn, uaid, chid, *args, **kwargs)
    conn.execute("DELETE FROM wp_channels WHERE uaid = ? AND chid = ?", (uaid, chid))
    conn.execute("DELETE FROM messages WHERE uaid = ? AND chid = ?", (uaid, chid))


def store(
    conn: sqlite3.Connection, uaid: str, message: NewMessage, max_pending: int, now: float
) -> StoreResult:
    """``Storage.store_message`` on the writer's connection; several statements."""
    row = conn.execute(
        "SELECT c.channel_id, u.next_seq FROM wp_channels AS c JOIN users AS u"
        " ON u.uaid = c.uaid WHERE c.uaid = ? AND c.chid = ? AND u.mode = ?",
        (uaid, message.chid, WEBPUSH),
    ).fetchone()
    if row is None:
        return StoreResult(outcome=StoreOutcome.GONE)
    channel_id, next_seq = row
    if message.ttl <= 0:
        return StoreResult(outcome=StoreOutcome.NOT_STORED, channel_id=channel_id)
    slot = None
    if message.topic is not None:
        slot = conn.execute(
            "SELECT seq, expires_at FROM messages WHERE uaid = ? AND chid = ? AND topic = ?",
            (uaid, message.chid, message.topic),
        ).fetchone()
    replaces = slot is not None and now < slot[1]
    if not replaces and max_pending > 0:
        (count,) = conn.execute(
            "SELECT count(*) FROM messages WHERE uaid = ? AND expires_at > ?", (uaid, now)
        ).fetchone()
        if count >= max_pending:
            return StoreResult(outcome=StoreOutcome.FULL, channel_id=channel_id)
    seq = first_seq(now) if next_seq is None else int(next_seq)
    conn.execute("UPDATE users SET next_seq = ? WHERE uaid = ?", (seq + 1, uaid))
    if slot is not None:  # the topic's slot, live or expired: one row per slot
        conn.execute("DELETE FROM messages WHERE uaid = ? AND seq = ?", (uaid, slot[0]))
    stored = StoredMessage(
        chid=message.chid,
        channel_id=channel_id,
        seq=seq,
        ttl=message.ttl,
        stored_at=now,
        topic=message.topic,
        data=message.data,
        headers=dict(message.headers),
    )
    conn.execute(
        "INSERT INTO messages"
        " (uaid, seq, chid, topic, ttl, stored_at, expires_at, data, headers)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            uaid,
            seq,
            message.chid,
            message.topic,
            message.ttl,
            now,
            stored.expires_at,
            encode_data(message.data),
            json.dumps(stored.headers, separators=(",", ":")),
        ),
    )
    return StoreResult(outcome=StoreOutcome.STORED, channel_id=channel_id, message=stored)


def fetch(conn: sqlite3.Connection, uaid: str, now: float) -> list[StoredMessage]:
    """Return the live messages of ``uaid`` in delivery order (a read)."""
    rows = conn.execute(
        "SELECT m.chid, c.channel_id, m.seq, m.ttl, m.stored_at, m.topic, m.data, m.headers"
        " FROM messages AS m JOIN wp_channels AS c ON c.uaid = m.uaid AND c.chid = m.chid"
        " WHERE m.uaid = ? AND m.expires_at > ? ORDER BY m.topic IS NULL, m.seq",
        (uaid, now),
    )
    return [
        StoredMessage(
            chid=chid,
            channel_id=channel_id,
            seq=seq,
            ttl=ttl,
            stored_at=stored_at,
            topic=topic,
            data=decode_data(data),
            headers=_decode_headers(headers),
        )
        for chid, channel_id, seq, ttl, stored_at, topic, data, headers in rows
    ]


def delete(conn: sqlite3.Connection, uaid: str, seq: int, now: float) -> bool:
    """Delete one live message; True when there was one.  One statement."""
    rows = conn.execute(
        "DELETE FROM messages WHERE uaid = ? AND seq = ? AND expires_at > ? RETURNING 1",
        (uaid, seq, now),
    ).fetchall()
    return bool(rows)


def purge(conn: sqlite3.Connection, now: float) -> int:
    """Delete every expired message; return how many.  One statement."""
    return conn.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount


def _decode_headers(raw: str) -> dict[str, str]:
    try:
        headers = json.loads(raw)
    except ValueError:
        headers = None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise StorageUnavailable(f"sqlite: corrupt message headers {raw!r:.80}")
    return headers
