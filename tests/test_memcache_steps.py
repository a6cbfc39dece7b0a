"""Tests for ``pushtwisted.storage._memcache_steps``: operations run together in rounds.

On ``FakeMemcache`` (``pushtwisted.testing.memcache``), which counts the
rounds (``pipeline`` calls) and the commands they carry.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage._memcache_wire import Command, Get, Store
from pushtwisted.storage.interface import Mode, PendingUpdate, UpdateOutcome
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.testing import inline_submit
from pushtwisted.testing.memcache import FakeMemcache

EPOCH = 1_700_000_000.0


def new_id() -> str:
    return uuid.uuid4().hex


class _PartlyBroken:
    """A client whose commands on ``bad`` keys fail like a dead server's."""

    def __init__(self, fake: FakeMemcache, bad: set[str]) -> None:
        self.fake = fake
        self.bad = bad

    def pipeline(self, commands: Sequence[Command]) -> list[object]:
        replies = self.fake.pipeline([c for c in commands if c.key not in self.bad])
        good = iter(replies)
        return [
            ConnectionRefusedError(111, "refused") if c.key in self.bad else next(good)
            for c in commands
        ]

    def close(self) -> None:
        pass

    def check_servers(self) -> None:
        pass


class MemcacheStepsTests(SynchronousTestCase):
    """``MemcacheSteps`` advances many operations in shared pipelined rounds."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.fake = FakeMemcache(self.clock)
        self.storage = MemcachedStorage(
            self.fake,
            inline_submit,
            self.clock,
            ttl_live=3600.0,
            ttl_registered=3600.0,
            ttl_deleted=600.0,
        )
        self.steps = MemcacheSteps(self.fake)

    def channels(self, n: int) -> list[tuple[str, str]]:
        pairs = [(new_id(), new_id()) for _ in range(n)]
        for uaid, chid in pairs:
            self.successResultOf(self.storage.register(uaid, chid, chid.upper(), 0))
        self.fake.rounds = 0
        self.fake.commands.clear()
        return pairs

    def run_all(self, operations: list[Steps[Any]]) -> list[tuple[bool, object]]:
        outcomes = self.steps(operations)
        self.assertEqual(len(outcomes), len(operations))
        return outcomes

    def test_many_updates_two_rounds(self) -> None:
        """Ten updates of different channels take two rounds: all reads, then all writes."""
        pairs = self.channels(10)
        outcomes = self.run_all(
            [self.storage.update_steps(u, c, 7, "d", False, EPOCH) for u, c in pairs]
        )
        self.assertEqual([ok for ok, _ in outcomes], [True] * 10)
        self.assertEqual({r.outcome for _, r in outcomes}, {UpdateOutcome.STORED})  # type: ignore[attr-defined]
        self.assertEqual(self.fake.rounds, 2)
        self.assertEqual(len(self.fake.commands), 20)
        for uaid, chid in pairs:
            self.assertEqual(
                self.successResultOf(self.storage.fetch_pending(uaid)),
                [PendingUpdate(channel_id=chid.upper(), version=7, data="d")],
            )

    def test_one_key_one_operation_at_a_time(self) -> None:
        """An ack and a newer update of one channel in one batch run one after the
        other: no cas is lost, so no command is repeated."""
        ((uaid, chid),) = self.channels(1)
        self.successResultOf(self.storage.update(uaid, chid, 5, "five"))
        self.fake.commands.clear()
        self.fake.rounds = 0
        ack, update = self.run_all(
            [
                self.storage.ack_steps(uaid, chid, 5, EPOCH),
                self.storage.update_steps(uaid, chid, 6, "six", False, EPOCH),
            ]
        )
        self.assertEqual(ack, (True, True))
        self.assertTrue(update[0])
        self.assertEqual(len(self.fake.commands), 4, "gets + cas, twice, none lost")
        self.assertEqual(self.fake.rounds, 4)
        self.assertEqual(
            self.successResultOf(self.storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id=chid.upper(), version=6, data="six")],
        )

    def test_waiting_does_not_block_other_keys(self) -> None:
        """While an operation waits for a key, operations on other keys go on."""
        (a_uaid, a_chid), (b_uaid, b_chid) = self.channels(2)
        outcomes = self.run_all(
            [
                self.storage.update_steps(a_uaid, a_chid, 1, None, False, EPOCH),
                self.storage.update_steps(a_uaid, a_chid, 2, None, False, EPOCH),
                self.storage.update_steps(b_uaid, b_chid, 1, None, False, EPOCH),
            ]
        )
        self.assertEqual([ok for ok, _ in outcomes], [True, True, True])
        self.assertEqual(self.fake.rounds, 4)
        rounds_of_b = [c for c in self.fake.commands[:4] if c.key.endswith(b_chid)]
        self.assertEqual(len(rounds_of_b), 2, "b finished in the first two rounds")

    def test_errors_stay_with_their_operation(self) -> None:
        """A failed server, a corrupt value or a refused register fail their own
        operation only; the others of the batch succeed."""
        (good_u, good_c), (dead_u, dead_c), (bad_u, bad_c) = self.channels(3)
        self.fake.set(f"{bad_u}.{bad_c}", ["not", "a record"])
        client = _PartlyBroken(self.fake, {f"{dead_u}.{dead_c}"})
        full_uaid = new_id()
        for _ in range(2):
            self.successResultOf(self.storage.register(full_uaid, new_id(), "x", 0))
        outcomes = MemcacheSteps(client)(
            [
                self.storage.update_steps(good_u, good_c, 1, None, False, EPOCH),
                self.storage.update_steps(dead_u, dead_c, 1, None, False, EPOCH),
                self.storage.update_steps(bad_u, bad_c, 1, None, False, EPOCH),
                self.storage.register_steps(full_uaid, new_id(), "y", 2, EPOCH),
            ]
        )
        self.assertTrue(outcomes[0][0])
        self.assertEqual([ok for ok, _ in outcomes[1:]], [False, False, False])
        self.assertIsInstance(outcomes[1][1], StorageUnavailable)
        self.assertIsInstance(outcomes[1][1].__cause__, ConnectionRefusedError)
        self.assertIsInstance(outcomes[2][1], StorageUnavailable)
        self.assertIsInstance(outcomes[3][1], TooManyChannels)

    def test_undecodable_value(self) -> None:
        """A ``ValueError`` as a ``Get`` reply (corrupt JSON) is ``StorageUnavailable``."""

        class Corrupt:
            def pipeline(self, commands: Sequence[Command]) -> list[object]:
                return [ValueError("Expecting value") for _ in commands]

            def close(self) -> None:
                pass

            def check_servers(self) -> None:
                pass

        def read() -> Steps[object]:
            value = yield Get("k")
            return value

        ((ok, error),) = MemcacheSteps(Corrupt())([read()])
        self.assertFalse(ok)
        self.assertIsInstance(error, StorageUnavailable)
        self.assertIn("undecodable", str(error))

    def test_tuple_steps_and_plain_work(self) -> None:
        """A tuple of commands is answered with a tuple of replies in one round; an
        operation that yields nothing runs its blocking body and returns."""

        def pair() -> Steps[object]:
            stored, (value, _) = yield (Store(b"set", "k", [1], 0), Get("k"))
            return stored, value

        def nothing() -> Steps[str]:
            yield from ()
            return "done"

        outcomes = self.run_all([pair(), nothing()])
        self.assertEqual(outcomes, [(True, (True, [1])), (True, "done")])
        self.assertEqual(self.fake.rounds, 1, "the read saw the write of its round")

    def test_wait_cycle_is_broken(self) -> None:
        """Two operations that each hold a key the other wants are both sent."""

        def cross(first: str, second: str) -> Steps[object]:
            a, _ = yield Get(first)
            b, _ = yield Get(second)
            return a, b

        self.fake.set("k1", 1)
        self.fake.set("k2", 2)
        outcomes = self.run_all([cross("k1", "k2"), cross("k2", "k1")])
        self.assertEqual(outcomes, [(True, (1, 2)), (True, (2, 1))])
        self.assertEqual(self.fake.rounds, 2)

    def test_equal_on_one_client(self) -> None:
        """Executors on one client compare (and hash) equal, so the pool merges them."""
        self.assertEqual(MemcacheSteps(self.fake), MemcacheSteps(self.fake))
        self.assertEqual(hash(MemcacheSteps(self.fake)), hash(self.steps))
        self.assertNotEqual(MemcacheSteps(self.fake), MemcacheSteps(FakeMemcache(self.clock)))

    def test_contended_operation_gives_up(self) -> None:
        """A cas lost at every round ends in ``StorageUnavailable``, not a loop."""
        ((uaid, chid),) = self.channels(1)
        key = f"{uaid}.{chid}"

        def meddle() -> None:
            self.fake.set(key, {**self.fake.get(key), "touched": 1.0})
            self.fake.interpose(key, meddle)

        self.fake.interpose(key, meddle)
        ((ok, error),) = self.run_all([self.storage.update_steps(uaid, chid, 1, None, False, 0)])
        self.assertFalse(ok)
        self.assertIsInstance(error, StorageUnavailable)

    def test_hello_reads(self) -> None:
        """A hello with a UAID: ``user_mode`` touches and reads the list in one round,
        then ``fetch_pending`` reads it and the records (2 rounds), without a second touch."""
        ((uaid, chid),) = self.channels(1)
        self.successResultOf(self.storage.update(uaid, chid, 3, None))
        self.fake.commands.clear()
        self.fake.rounds = 0
        self.assertIs(self.successResultOf(self.storage.user_mode(uaid)), Mode.SIMPLEPUSH)
        self.assertEqual([type(c).__name__ for c in self.fake.commands], ["Touch", "Get"])
        self.assertEqual(self.fake.rounds, 1)
        self.fake.commands.clear()
        self.fake.rounds = 0
        self.assertEqual(
            self.successResultOf(self.storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id=chid.upper(), version=3)],
        )
        self.assertEqual(
            [(type(c).__name__, c.key) for c in self.fake.commands],
            [("Get", uaid), ("Get", f"{uaid}.{chid}")],
        )
        self.assertEqual(self.fake.rounds, 2)

    def test_hellos_keep_an_idle_user(self) -> None:
        """Hellos (``user_mode``, then ``fetch_pending``) keep the list and the records
        of a device that does nothing else well past their TTLs."""
        ((uaid, chid),) = self.channels(1)
        for _ in range(4):
            self.clock.advance(3000)
            self.assertIs(self.successResultOf(self.storage.user_mode(uaid)), Mode.SIMPLEPUSH)
            self.assertEqual(self.successResultOf(self.storage.fetch_pending(uaid)), [])
        stored = self.successResultOf(self.storage.update(uaid, chid, 1, None))
        self.assertIs(stored.outcome, UpdateOutcome.STORED)
        self.assertIs(self.successResultOf(self.storage.user_mode(uaid)), Mode.SIMPLEPUSH)
