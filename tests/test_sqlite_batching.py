"""Group commit in ``SqliteStorage``: batching, isolation, bounds and draining.

A ``ManualRunner`` holds every blocking call until the test runs it, so a
test can queue writes while the writer is busy and count what
``max_pending`` still lets in.
A trace callback on the writer connection counts its transactions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageBusy, StorageUnavailable, TooManyChannels
from pushtwisted.storage.interface import PendingUpdate, UpdateOutcome, UpdateResult
from pushtwisted.storage.sqlite import SqliteStorage
from tests.test_storage_contract import EPOCH, new_id


class ManualRunner:
    """A runner that queues each call until ``run_next`` runs it on the spot."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, operation: str, func: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((operation, func, args, d))
        return d

    @property
    def operations(self) -> list[str]:
        return [operation for operation, _, _, _ in self.calls]

    def run_next(self) -> None:
        _, func, args, d = self.calls.pop(0)
        try:
            result = func(*args)
        except BaseException as e:
            d.errback(e)
        else:
            d.callback(result)

    def fail_next(self, error: BaseException) -> None:
        """Fail the next call without running it (as a pool timeout would)."""
        _, _, _, d = self.calls.pop(0)
        d.errback(error)

    def run_all(self) -> None:
        while self.calls:
            self.run_next()


class BatchingTests(SynchronousTestCase):
    """Writes queued while a batch runs are committed together, after the commit."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.runner = ManualRunner()
        self.path = os.path.join(self.mktemp(), "db.sqlite3")
        self.statements: list[str] = []

    def make(self, **kwargs: Any) -> SqliteStorage:
        storage = SqliteStorage(self.path, self.runner, self.clock, ttl_deleted=100, **kwargs)
        self.successResultOf(self.settle(storage.open()))
        writer = storage._writer
        assert writer is not None
        writer.set_trace_callback(self.statements.append)
        self.addCleanup(lambda: self.settle(storage.close()))
        return storage

    def settle(self, d: Deferred[Any]) -> Deferred[Any]:
        self.runner.run_all()
        return d

    def assert_slots_free(self, storage: SqliteStorage, max_pending: int) -> None:
        """Assert every one of ``max_pending`` write slots is free again.

        Queues ``max_pending + 1`` health checks (writes): all but the last
        must be accepted; then runs them.
        """
        refused: list[Failure] = []
        probes = [storage.check() for _ in range(max_pending + 1)]
        for d in probes:
            d.addErrback(refused.append)
        self.assertEqual([f.type for f in refused], [StorageBusy])
        self.runner.run_all()
        self.assertEqual(len(refused), 1)

    def commits(self) -> int:
        return sum(1 for s in self.statements if s == "COMMIT")

    def peek(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Read with a connection of our own: sees only committed data."""
        conn = sqlite3.connect(self.path)
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.close()

    def test_queued_writes_share_one_commit(self) -> None:
        """Writes queued while a batch runs form the next batch: one transaction."""
        storage = self.make(max_pending=10, timeout=5)
        uaid = new_id()
        chids = [new_id() for _ in range(5)]
        first = storage.register(uaid, chids[0], "C0", 0)
        self.assertEqual(self.runner.operations, ["write_batch"])
        rest = [storage.register(uaid, c, f"C{i}", 0) for i, c in enumerate(chids[1:], 1)]
        updates = [storage.update(uaid, c, 7, "x") for c in chids]
        # Still one runner call: the writer is busy, the rest waits in the queue.
        self.assertEqual(self.runner.operations, ["write_batch"])
        # All ten count against max_pending, running or queued.
        self.failureResultOf(storage.check(), StorageBusy)
        for d in [first, *rest, *updates]:
            self.assertNoResult(d)

        self.runner.run_next()
        self.successResultOf(first)
        self.assertEqual(self.commits(), 1)
        self.assertEqual(self.runner.operations, ["write_batch"])
        for d in [*rest, *updates]:
            self.assertNoResult(d)

        self.runner.run_next()
        self.assertEqual(self.commits(), 2)
        self.assertEqual(sum(1 for s in self.statements if s == "BEGIN IMMEDIATE"), 2)
        for d in rest:
            self.assertIsNone(self.successResultOf(d))
        for d, i in zip(updates, range(5), strict=True):
            self.assertEqual(
                self.successResultOf(d),
                UpdateResult(outcome=UpdateOutcome.STORED, channel_id=f"C{i}"),
            )
        self.assertEqual(self.runner.calls, [])
        self.assert_slots_free(storage, 10)
        self.assertEqual(self.clock.getDelayedCalls(), [], "no write timer left behind")

    def test_max_batch(self) -> None:
        """No batch holds more than ``max_batch`` writes."""
        storage = self.make(max_batch=2)
        uaid = new_id()
        busy = storage.register(uaid, new_id(), "B", 0)
        queued = [storage.register(uaid, new_id(), "Q", 0) for _ in range(5)]
        self.runner.run_next()
        self.successResultOf(busy)
        sizes = []
        while self.runner.calls:
            sizes.append(len(self.runner.calls[0][2][0]))
            self.runner.run_next()
        self.assertEqual(sizes, [2, 2, 1])
        for d in queued:
            self.successResultOf(d)

    def test_failing_op_fails_alone(self) -> None:
        """An operation that fails in a batch is rolled back; the others commit."""
        storage = self.make()
        uaid, full, extra, other = new_id(), new_id(), new_id(), new_id()
        busy = storage.register(uaid, full, "Full", 1)
        before = storage.update(uaid, full, 1, None)
        too_many = storage.register(uaid, extra, "Extra", 1)
        other_user = storage.register(other, new_id(), "Other", 1)
        after = storage.update(uaid, full, 2, "two")
        self.runner.run_next()
        self.successResultOf(busy)
        self.runner.run_next()
        self.assertEqual(self.commits(), 2)
        self.assertEqual(self.successResultOf(before).outcome, UpdateOutcome.STORED)
        self.failureResultOf(too_many, TooManyChannels)
        self.successResultOf(other_user)
        self.assertEqual(self.successResultOf(after).outcome, UpdateOutcome.STORED)
        self.assertEqual(self.peek("SELECT chid FROM channels WHERE chid = ?", extra), [])
        self.assertEqual(self.peek("SELECT version FROM channels WHERE chid = ?", full), [("2",)])

    def trigger(self, chid: str, action: str) -> None:
        """Make every UPDATE of ``chid`` fail with ``RAISE(<action>)``."""
        conn = sqlite3.connect(self.path)
        try:
            conn.execute(
                f"CREATE TRIGGER fail_{chid} BEFORE UPDATE ON channels"
                f" WHEN NEW.chid = '{chid}' BEGIN SELECT RAISE({action}, 'refused'); END"
            )
            conn.commit()
        finally:
            conn.close()

    def test_failing_single_write_fails_alone(self) -> None:
        """A one-statement write (no savepoint) that fails is undone by SQLite alone;
        the rest of its batch commits."""
        storage = self.make()
        uaid, a, bad, c = new_id(), new_id(), new_id(), new_id()
        for chid in (a, bad, c):
            self.successResultOf(self.settle(storage.register(uaid, chid, chid, 0)))
        self.trigger(bad, "ABORT")
        busy = storage.check()
        writes = [storage.update(uaid, chid, 3, None) for chid in (a, bad, c)]
        self.runner.run_all()
        self.successResultOf(busy)
        self.assertEqual(self.successResultOf(writes[0]).outcome, UpdateOutcome.STORED)
        self.failureResultOf(writes[1], StorageUnavailable)
        self.assertEqual(self.successResultOf(writes[2]).outcome, UpdateOutcome.STORED)
        self.assertEqual(
            sorted(self.peek("SELECT chid, version FROM channels WHERE uaid = ?", uaid)),
            sorted([(a, "3"), (bad, "0"), (c, "3")]),
        )

    def test_write_that_rolls_back_fails_the_batch(self) -> None:
        """A write whose error rolled back the whole transaction fails its batch:
        nothing of it is committed, and later batches work."""
        storage = self.make()
        uaid, a, bad = new_id(), new_id(), new_id()
        for chid in (a, bad):
            self.successResultOf(self.settle(storage.register(uaid, chid, chid, 0)))
        self.trigger(bad, "ROLLBACK")
        busy = storage.check()
        writes = [storage.update(uaid, a, 3, None), storage.update(uaid, bad, 3, None)]
        self.runner.run_next()
        self.successResultOf(busy)
        later = storage.ack(uaid, a, 3)  # queued behind the batch of the writes
        self.runner.run_next()
        for d in writes:
            self.failureResultOf(d, StorageUnavailable)
        self.assertNoResult(later)
        self.runner.run_next()
        self.assertFalse(self.successResultOf(later), "the update of a was rolled back")
        self.assertEqual(self.peek("SELECT version FROM channels WHERE chid = ?", a), [("0",)])

    def test_results_fire_after_commit(self) -> None:
        """When a caller's Deferred fires, its write is visible to other connections."""
        storage = self.make()
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.settle(storage.register(uaid, chid, "C", 0)))
        busy = storage.ack(uaid, chid, 0)
        seen: list[list[tuple[Any, ...]]] = []
        update = storage.update(uaid, chid, 9, "nine")
        update.addCallback(
            lambda _: seen.append(
                self.peek("SELECT state, version FROM channels WHERE chid = ?", chid)
            )
        )
        self.runner.run_next()
        self.successResultOf(busy)
        self.assertNoResult(update)
        self.assertEqual(seen, [])
        self.runner.run_next()
        self.assertEqual(seen, [[(1, "9")]])

    def test_failed_batch_fails_every_op(self) -> None:
        """When the batch call itself fails, every write of it fails; later ones run."""
        storage = self.make(max_pending=5)
        uaid, chid = new_id(), new_id()
        busy = storage.register(uaid, chid, "C", 0)
        queued = [storage.update(uaid, chid, v, None) for v in (1, 2)]
        self.runner.run_next()
        self.successResultOf(busy)
        self.runner.fail_next(StorageUnavailable("pool gone"))
        for d in queued:
            self.failureResultOf(d, StorageUnavailable)
        self.assert_slots_free(storage, 5)
        later = self.settle(storage.update(uaid, chid, 3, None))
        self.assertEqual(self.successResultOf(later).outcome, UpdateOutcome.STORED)

    def test_commit_failure_fails_every_op(self) -> None:
        """When the batch cannot take the write lock or commit, every write of it fails."""
        storage = self.make()
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.settle(storage.register(uaid, chid, "C", 0)))
        blocker = sqlite3.connect(self.path, timeout=0)
        self.addCleanup(blocker.close)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writer = storage._writer
        assert writer is not None
        writer.execute("PRAGMA busy_timeout = 0")
        writes = [storage.update(uaid, chid, v, None) for v in (1, 2)]
        self.runner.run_all()
        for d in writes:
            self.failureResultOf(d, StorageUnavailable)
        blocker.execute("ROLLBACK")
        again = self.settle(storage.update(uaid, chid, 3, None))
        self.assertEqual(self.successResultOf(again).outcome, UpdateOutcome.STORED)

    def test_busy_past_bound(self) -> None:
        """Past ``max_pending`` writes queued or running, new writes fail at once."""
        storage = self.make(max_pending=3)
        uaid, chid = new_id(), new_id()
        accepted = [storage.register(uaid, chid, "C", 0) for _ in range(3)]
        self.failureResultOf(storage.update(uaid, chid, 1, None), StorageBusy)
        self.failureResultOf(storage.ack(uaid, chid, 1), StorageUnavailable)
        # Reads do not queue behind the writer.
        self.assertEqual(self.runner.operations, ["write_batch"])
        reads = storage.fetch_pending(uaid)
        self.assertEqual(self.runner.operations, ["write_batch", "fetch_pending"])
        self.runner.run_all()
        for d in accepted:
            self.successResultOf(d)
        self.assertEqual(self.successResultOf(reads), [])
        self.assert_slots_free(storage, 3)
        self.successResultOf(self.settle(storage.update(uaid, chid, 1, None)))

    def test_timeout(self) -> None:
        """A write waiting past ``timeout`` fails; still queued, it is never run."""
        storage = self.make(timeout=5, max_pending=4)
        uaid, chid = new_id(), new_id()
        busy = storage.register(uaid, chid, "C", 0)
        late = storage.update(uaid, chid, 1, "late")
        self.clock.advance(5)
        self.failureResultOf(busy, StorageUnavailable)
        self.failureResultOf(late, StorageUnavailable)
        self.runner.run_all()
        # The running batch committed anyway; the queued write was dropped.
        self.assertEqual(
            self.peek("SELECT state, data FROM channels WHERE chid = ?", chid), [(2, None)]
        )
        self.assert_slots_free(storage, 4)

    def test_timeout_is_per_write(self) -> None:
        """Writes that wait for one batch share a timer, yet each gets its whole timeout."""
        storage = self.make(timeout=5, max_pending=4)
        uaid, chid = new_id(), new_id()
        busy = storage.register(uaid, chid, "C", 0)
        self.clock.advance(1)
        first = storage.update(uaid, chid, 1, "first")
        self.clock.advance(3)
        second = storage.update(uaid, chid, 2, "second")  # joins the first's batch
        self.clock.advance(1)  # 5 s after the register
        self.failureResultOf(busy, StorageUnavailable)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.clock.advance(1)  # 5 s after the first update
        self.failureResultOf(first, StorageUnavailable)
        self.assertNoResult(second)
        self.clock.advance(2.5)
        self.assertNoResult(second)
        self.clock.advance(0.5)  # 5 s after the second update
        self.failureResultOf(second, StorageUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [], "no write timer left behind")
        self.runner.run_all()
        self.assert_slots_free(storage, 4)

    def test_close_drains(self) -> None:
        """``close`` commits every queued write before closing; new calls fail."""
        storage = self.make()
        uaid, chid = new_id(), new_id()
        busy = storage.register(uaid, chid, "C", 0)
        queued = storage.update(uaid, chid, 4, "four")
        closed = storage.close()
        self.assertNoResult(closed)
        self.failureResultOf(storage.update(uaid, chid, 5, None), StorageUnavailable)
        self.failureResultOf(storage.fetch_pending(uaid), StorageUnavailable)
        self.runner.run_next()
        self.successResultOf(busy)
        self.assertNoResult(closed)
        self.runner.run_next()
        self.assertEqual(self.successResultOf(queued).outcome, UpdateOutcome.STORED)
        self.assertEqual(self.runner.operations, ["close"])
        self.runner.run_next()
        self.successResultOf(closed)

        again = SqliteStorage(self.path, self.runner, self.clock, ttl_deleted=100)
        self.addCleanup(lambda: self.settle(again.close()))
        self.assertEqual(
            self.successResultOf(self.settle(again.fetch_pending(uaid))),
            [PendingUpdate(channel_id="C", version=4, data="four")],
        )
