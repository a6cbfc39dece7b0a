"""Users not seen for ``ttl_registered`` expire from ``SqliteStorage``, on the clock.

The storage runs its blocking calls inline (``inline_run``) on a
``task.Clock``: a user is seen at register and at hello (``fetch_pending``),
and the purge deletes it, with its channels, once it has not been seen for
``ttl_registered`` (plus the lag of ``seen_at``, ``slack``).  A database
written by an older schema (version 1, without ``seen_at``; version 2,
without WebPush) is migrated without losing a row.  Expired WebPush messages
go at the purge, and a purged user's messages with it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.storage._sqlite_expiry import PURGE_USERS, slack
from pushtwisted.storage._sqlite_schema import _MIGRATIONS, DELETED, LIVE, REGISTERED
from pushtwisted.storage.interface import Mode, NewMessage, PendingUpdate, UpdateOutcome
from pushtwisted.storage.sqlite import SCHEMA_VERSION, SqliteStorage
from tests.test_storage_contract import EPOCH, inline_run, new_id

TTL = 1000.0
#: How long after it was last seen a user is purged.
GONE_AFTER = TTL + slack(TTL)

#: The schema the previous release wrote (version 1): migrations are only ever
#: appended, so migration 1 is what it ran.
_VERSION_1 = (*_MIGRATIONS[1], "PRAGMA user_version = 1")
#: The schema of the release before WebPush (version 2).
_VERSION_2 = (*_MIGRATIONS[1], *_MIGRATIONS[2], "PRAGMA user_version = 2")


class _CountingRunner:
    """``inline_run`` that counts the calls made for each operation."""

    def __init__(self) -> None:
        self.operations: list[str] = []

    def __call__(self, operation: str, func: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
        self.operations.append(operation)
        return inline_run(operation, func, *args)


class UserExpiryTests(SynchronousTestCase):
    """The purge deletes users not seen for ``ttl_registered``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.path = os.path.join(self.mktemp(), "pushtwisted.sqlite3")
        self.runner = _CountingRunner()

    def open(self, ttl: float | None = TTL) -> SqliteStorage:
        storage = SqliteStorage(
            self.path, self.runner, self.clock, ttl_deleted=100, ttl_registered=ttl
        )
        self.addCleanup(storage.close)
        self.successResultOf(storage.open())
        return storage

    def registered(self, storage: SqliteStorage, version: int | None = None) -> tuple[str, str]:
        uaid, chid = new_id(), new_id()
        self.successResultOf(storage.register(uaid, chid, chid, 0))
        if version is not None:
            self.successResultOf(storage.update(uaid, chid, version, "payload"))
        return uaid, chid

    def exists(self, storage: SqliteStorage, uaid: str) -> bool:
        return self.successResultOf(storage.user_mode(uaid)) is not None

    def test_unseen_user_purged_with_its_channels(self) -> None:
        """A user not seen since its register is kept until ``ttl`` (plus the slack)
        has passed, then purged with its channels and its pending update."""
        storage = self.open()
        uaid, chid = self.registered(storage, version=5)
        self.clock.advance(GONE_AFTER)
        self.assertEqual(self.successResultOf(storage.purge_expired()), 0)
        self.assertTrue(self.exists(storage, uaid))
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(storage.purge_expired()), 1)
        self.assertFalse(self.exists(storage, uaid))
        self.assertEqual(self.successResultOf(storage.fetch_pending(uaid)), [])
        result = self.successResultOf(storage.update(uaid, chid, 6, None))
        self.assertEqual(result.outcome, UpdateOutcome.GONE)
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT count(*) FROM channels").fetchone(), (0,))

    def test_hello_keeps_a_user(self) -> None:
        """A hello (``fetch_pending``) keeps the user ``ttl`` past it, however late."""
        storage = self.open()
        uaid, chid = self.registered(storage, version=5)
        for _ in range(3):
            self.clock.advance(TTL)  # each time past the slack: seen_at is rewritten
            self.assertEqual(
                self.successResultOf(storage.fetch_pending(uaid)),
                [PendingUpdate(channel_id=chid, version=5, data="payload")],
            )
            self.successResultOf(storage.purge_expired())
            self.assertTrue(self.exists(storage, uaid))
        self.clock.advance(TTL)
        self.successResultOf(storage.purge_expired())
        self.assertTrue(self.exists(storage, uaid))
        self.clock.advance(slack(TTL) + 0.001)
        self.successResultOf(storage.purge_expired())
        self.assertFalse(self.exists(storage, uaid))

    def test_register_keeps_a_user(self) -> None:
        """A register of another channel counts as seen too."""
        storage = self.open()
        uaid, _ = self.registered(storage)
        self.clock.advance(TTL)
        self.successResultOf(storage.register(uaid, new_id(), "x", 0))
        self.clock.advance(GONE_AFTER)
        self.successResultOf(storage.purge_expired())
        self.assertTrue(self.exists(storage, uaid))
        self.clock.advance(0.001)
        self.successResultOf(storage.purge_expired())
        self.assertFalse(self.exists(storage, uaid))

    def test_updates_do_not_keep_a_user(self) -> None:
        """Updates and acks from an app server do not count as the device being seen."""
        storage = self.open()
        uaid, chid = self.registered(storage)
        for version in range(1, 4):
            self.clock.advance(TTL / 2)
            self.successResultOf(storage.update(uaid, chid, version, None))
            self.successResultOf(storage.ack(uaid, chid, version))
        self.clock.advance(GONE_AFTER - 1.5 * TTL + 0.001)
        self.successResultOf(storage.purge_expired())
        self.assertFalse(self.exists(storage, uaid))

    def test_hello_within_the_slack_writes_nothing(self) -> None:
        """A hello soon after the last one only reads: no write is queued."""
        storage = self.open()
        uaid, _ = self.registered(storage)
        self.clock.advance(slack(TTL) - 1)
        before = list(self.runner.operations)
        self.successResultOf(storage.fetch_pending(uaid))
        self.assertEqual(self.runner.operations[len(before) :], ["fetch_pending"])
        self.clock.advance(1)
        self.successResultOf(storage.fetch_pending(uaid))
        self.assertEqual(self.runner.operations[-2:], ["fetch_pending", "write_batch"])

    def test_unknown_user_not_created_by_a_hello(self) -> None:
        """A hello of a UAID storage does not know creates nothing."""
        storage = self.open()
        uaid = new_id()
        self.clock.advance(TTL)
        self.successResultOf(storage.fetch_pending(uaid))
        self.assertFalse(self.exists(storage, uaid))

    def test_purge_in_bounded_steps(self) -> None:
        """More expired users than one purge step takes are all deleted, in several writes."""
        storage = self.open()
        users = [self.registered(storage)[0] for _ in range(PURGE_USERS + 3)]
        kept, _ = self.registered(storage)
        self.clock.advance(TTL)
        self.successResultOf(storage.fetch_pending(kept))
        self.clock.advance(GONE_AFTER - TTL + 0.001)
        before = len(self.runner.operations)
        self.assertEqual(self.successResultOf(storage.purge_expired()), PURGE_USERS + 3)
        self.assertEqual(self.runner.operations[before:].count("write_batch"), 2)
        self.assertFalse(any(self.exists(storage, uaid) for uaid in users[:: PURGE_USERS // 5]))
        self.assertFalse(self.exists(storage, users[-1]))
        self.assertTrue(self.exists(storage, kept))

    def test_forever_without_ttl(self) -> None:
        """Without ``ttl_registered`` users are never purged (tombstones still are)."""
        storage = self.open(ttl=None)
        uaid, chid = self.registered(storage)
        self.successResultOf(storage.unregister(uaid, chid))
        self.clock.advance(100 * TTL)
        self.assertEqual(self.successResultOf(storage.purge_expired()), 1)
        self.assertTrue(self.exists(storage, uaid))


class MigrationTests(SynchronousTestCase):
    """Databases of older schemas open with every row, then expire normally."""

    def old_database(
        self, schema: tuple[str, ...], seen_at: float | None, version: str
    ) -> tuple[str, SqliteStorage, str, list[str]]:
        """Write a database with ``schema`` (one user with a live channel at ``version``,
        a registered one and a tombstone), then open it with this code, which migrates it.

        :returns: its path, the storage, the UAID and its live, registered and
            tombstoned chids.
        """
        self.clock = Clock()
        self.clock.advance(EPOCH)
        path = os.path.join(self.mktemp(), "pushtwisted.sqlite3")
        os.makedirs(os.path.dirname(path))
        uaid, chids = new_id(), [new_id(), new_id(), new_id()]
        live, registered, dead = chids
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in schema:
            conn.execute(statement)
        if seen_at is None:
            conn.execute("INSERT INTO users (uaid) VALUES (?)", (uaid,))
        else:
            conn.execute("INSERT INTO users (uaid, seen_at) VALUES (?, ?)", (uaid, seen_at))
        conn.executemany(
            "INSERT INTO channels (uaid, chid, channel_id, state, version, data, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (uaid, live, "Live", LIVE, version, b"kept", None),
                (uaid, registered, "Reg", REGISTERED, "0", None, None),
                (uaid, dead, "Dead", DELETED, "0", None, EPOCH + 50),
            ],
        )
        conn.close()
        storage = SqliteStorage(path, inline_run, self.clock, ttl_deleted=100, ttl_registered=TTL)
        self.addCleanup(storage.close)
        self.successResultOf(storage.open())
        self.assertIs(self.successResultOf(storage.user_mode(uaid)), Mode.SIMPLEPUSH)
        self.assertEqual(self.successResultOf(storage.expired(uaid, chids)), [dead])
        return path, storage, uaid, chids

    def test_version_1_database(self) -> None:
        """Users, channels, pending updates with data and tombstones survive; the
        users' clock starts at the migration."""
        path, storage, uaid, _ = self.old_database(_VERSION_1, None, "18446744073709551615")
        clock = self.clock
        check = sqlite3.connect(path)
        self.addCleanup(check.close)
        self.assertEqual(check.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))
        self.assertEqual(check.execute("SELECT seen_at FROM users").fetchall(), [(EPOCH,)])
        self.assertEqual(
            self.successResultOf(storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id="Live", version=2**64 - 1, data="kept")],
        )
        clock.advance(GONE_AFTER)
        self.successResultOf(storage.purge_expired())
        self.assertIs(self.successResultOf(storage.user_mode(uaid)), Mode.SIMPLEPUSH)
        clock.advance(0.001)
        self.successResultOf(storage.purge_expired())
        self.assertIsNone(self.successResultOf(storage.user_mode(uaid)))

    def test_version_2_database(self) -> None:
        """Before WebPush: users (with ``seen_at``), channels, pending updates and
        tombstones survive, as SimplePush users."""
        path, storage, uaid, [_, registered, _] = self.old_database(_VERSION_2, EPOCH - 5, "7")
        self.assertEqual(
            self.successResultOf(storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id="Live", version=7, data="kept")],
        )
        self.assertEqual(self.successResultOf(storage.fetch_messages(uaid)), [])
        check = sqlite3.connect(path)
        self.addCleanup(check.close)
        self.assertEqual(check.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))
        self.assertEqual(check.execute("SELECT seen_at FROM users").fetchall(), [(EPOCH - 5,)])
        # The user is still a SimplePush one: updates land, messages do not.
        result = self.successResultOf(storage.update(uaid, registered, 3, None))
        self.assertIs(result.outcome, UpdateOutcome.STORED)
        self.successResultOf(storage.register(uaid, new_id(), "New", 0, Mode.WEBPUSH))
        self.assertIs(self.successResultOf(storage.user_mode(uaid)), Mode.SIMPLEPUSH)


class MessageExpiryTests(SynchronousTestCase):
    """Expired WebPush messages go at the purge; a purged user takes its messages."""

    setUp = UserExpiryTests.setUp
    open = UserExpiryTests.open

    def webpush(self, storage: SqliteStorage, ttl: int) -> tuple[str, str]:
        uaid, chid = new_id(), new_id()
        self.successResultOf(storage.register(uaid, chid, chid, 0, Mode.WEBPUSH))
        stored = self.successResultOf(
            storage.store_message(uaid, NewMessage(chid=chid, ttl=ttl), 0)
        )
        self.assertIsNotNone(stored.message)
        return uaid, chid

    def count(self, table: str) -> int:
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        (rows,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(rows)

    def test_expired_messages_purged(self) -> None:
        """The purge deletes the rows of expired messages only."""
        storage = self.open(ttl=None)
        self.webpush(storage, 10)
        uaid, _ = self.webpush(storage, 100)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(storage.purge_expired()), 1)
        self.assertEqual(self.count("messages"), 1)
        self.assertEqual(len(self.successResultOf(storage.fetch_messages(uaid))), 1)

    def test_unseen_webpush_user_purged_with_its_messages(self) -> None:
        """A WebPush user not seen goes with its channels and messages; a hello keeps one."""
        storage = self.open()
        gone, _ = self.webpush(storage, 10 * int(GONE_AFTER))
        kept, _ = self.webpush(storage, 10 * int(GONE_AFTER))
        self.clock.advance(GONE_AFTER / 2)
        self.assertEqual(len(self.successResultOf(storage.fetch_messages(kept))), 1)
        self.clock.advance(GONE_AFTER / 2 + 1)
        self.successResultOf(storage.purge_expired())
        self.assertIsNone(self.successResultOf(storage.user_mode(gone)))
        self.assertIs(self.successResultOf(storage.user_mode(kept)), Mode.WEBPUSH)
        self.assertEqual((self.count("wp_channels"), self.count("messages")), (1, 1))
