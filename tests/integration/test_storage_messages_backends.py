"""WebPush messages on real threads and a real memcached.

The ``MessageContract`` runs against ``SqliteStorage`` on the real
``ThreadPoolService`` and against ``MemcachedStorage`` on a real memcached
(``$PUSHTWISTED_TEST_MEMCACHED`` or one started here; skipped without one,
failed under ``CI=true``), both timed by a ``task.Clock`` so the contract's
expiries need no waiting.  Beyond the contract, for memcached: a message
expiring in real time (its entry and its body), and writers racing on one
UAID from the pool's threads in tight loops (stores at once, stores against
acks, stores against an unregister), which must lose nothing and leave no
stray body.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from pushtwisted.storage._memcache import make_memcached_client
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage._memcache_webpush import WebPushRecords
from pushtwisted.storage.interface import Mode, NewMessage, StoreOutcome, StoreResult
from pushtwisted.storage.memcached import MemcachedStorage
from tests.integration import test_storage_backends as backends
from tests.integration.memcached_fixture import shared_memcached
from tests.integration.test_storage_backends import _Pooled, _reactor, sleep
from tests.test_storage_contract import EPOCH, new_id
from tests.test_storage_messages import MessageContract

#: User records' TTL in these tests.
_TTL_USER = 3600.0


class SqliteThreadedMessageTests(_Pooled, MessageContract, TestCase):
    """``SqliteStorage`` on the real thread pool passes the message contract."""

    make_storage = backends.SqliteThreadedTests.make_storage

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.pool = self.start_pool()
        super().setUp()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


class MemcachedMessageTests(_Pooled, MessageContract, TestCase):
    """``MemcachedStorage`` on a real memcached passes the message contract and the races."""

    def setUp(self) -> None:
        self.address = shared_memcached()
        self.prefix = f"pt-wp-{uuid.uuid4().hex[:8]}:"
        self.pool = self.start_pool()
        # Now, not EPOCH: bodies get memcached expiries relative to the real clock.
        self.clock = Clock()
        self.clock.advance(time.time())
        self.client = make_memcached_client(
            [self.address], pool_size=8, connect_timeout=2.0, timeout=5.0
        )
        self.records = WebPushRecords(self.prefix, _TTL_USER)
        super().setUp()

    def make_storage(self, *, ttl_deleted: float, clock: Any = None) -> MemcachedStorage:
        storage = MemcachedStorage(
            self.client,
            self.pool.submit,
            clock or self.clock,
            ttl_live=_TTL_USER,
            ttl_registered=_TTL_USER,
            ttl_deleted=ttl_deleted,
            key_prefix=self.prefix,
        )
        self.addCleanup(storage.close)
        return storage

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def alone(self, steps: Steps[Any]) -> Any:
        """Run one operation on this (pool) thread, through the client's pipeline."""
        ((ok, value),) = MemcacheSteps(self.client)([steps])
        if not ok:
            raise value
        return value

    def body(self, uaid: str, seq: int) -> Any:
        return self.client.get(self.records.body_key(uaid, seq))

    async def in_threads(self, *functions: Any) -> None:
        """Run ``functions`` at once, each on a pool thread of its own."""
        pool = self.pool.pool
        await gatherResults([deferToThreadPool(_reactor(), pool, f) for f in functions])

    async def test_real_expiry(self) -> None:
        """A message with TTL 1 is gone a moment after its second: entry and body."""
        storage = self.make_storage(ttl_deleted=60.0, clock=_reactor())
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0, Mode.WEBPUSH)
        short = await storage.store_message(uaid, NewMessage(chid=chid, ttl=1, data="cw"), 0)
        await storage.store_message(uaid, NewMessage(chid=chid, ttl=60, data="bA"), 0)
        assert short.message is not None
        self.assertIsNotNone(self.body(uaid, short.message.seq))
        await sleep(2.5)
        self.assertEqual([m.data for m in await storage.fetch_messages(uaid)], ["bA"])
        self.assertIsNone(self.body(uaid, short.message.seq))

    async def test_concurrent_stores_lose_nothing(self) -> None:
        """8 threads storing 25 messages each to one UAID at once: all 200 are kept."""
        uaid, chid = new_id(), new_id()
        await self.storage.register(uaid, chid, chid, 0, Mode.WEBPUSH)
        results: list[StoreResult] = []

        def writer(n: int) -> None:
            for i in range(25):
                new = NewMessage(chid=chid, ttl=600, data=f"{n}-{i}")
                results.append(self.alone(self.records.store(uaid, new, 0, time.time())))

        await self.in_threads(*(lambda n=n: writer(n) for n in range(8)))
        self.assertEqual({r.outcome for r in results}, {StoreOutcome.STORED})
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual(
            sorted(m.data or "" for m in fetched),
            sorted(r.message.data or "" for r in results if r.message),
        )
        self.assertEqual(len({m.seq for m in fetched}), 200)

    async def test_stores_racing_acks(self) -> None:
        """A writer stores while two ackers fetch and delete: each message is acked once or
        still stored, never lost."""
        uaid, chid = new_id(), new_id()
        await self.storage.register(uaid, chid, chid, 0, Mode.WEBPUSH)
        stored: list[int] = []
        acked: list[int] = []
        done: list[bool] = []

        def writer() -> None:
            try:
                for i in range(100):
                    new = NewMessage(chid=chid, ttl=600, data=str(i))
                    result = self.alone(self.records.store(uaid, new, 0, time.time()))
                    stored.append(result.message.seq)
            finally:
                done.append(True)  # even on error: the ackers must stop

        def acker() -> None:
            while not done:
                for found in self.alone(self.records.fetch(uaid, time.time())):
                    if self.alone(self.records.delete(uaid, found.seq, time.time())):
                        acked.append(found.seq)

        await self.in_threads(writer, acker, acker)
        self.assertTrue(acked, "the race never happened")
        remaining = [m.seq for m in await self.storage.fetch_messages(uaid)]
        self.assertEqual(len(acked), len(set(acked)), "a message was acked twice")
        self.assertEqual(sorted(acked + remaining), sorted(stored))
        for seq in acked:
            self.assertIsNone(self.body(uaid, seq))

    async def test_stores_racing_unregister(self) -> None:
        """Stores racing an unregister: none survives it, and no body is left behind."""
        uaid, chid = new_id(), new_id()
        await self.storage.register(uaid, chid, chid, 0, Mode.WEBPUSH)
        results: list[StoreResult] = []
        started: list[bool] = []

        def writer() -> None:
            for i in range(60):
                new = NewMessage(chid=chid, ttl=600, data=str(i))
                results.append(self.alone(self.records.store(uaid, new, 0, time.time())))
                started.append(True)

        def unregister() -> None:
            while len(started) < 20:
                time.sleep(0.001)
            self.alone(self.records.unregister(uaid, chid, time.time()))

        await self.in_threads(writer, writer, unregister)
        outcomes = [r.outcome for r in results]
        self.assertIn(StoreOutcome.STORED, outcomes)
        self.assertIn(StoreOutcome.GONE, outcomes)
        self.assertEqual(await self.storage.fetch_messages(uaid), [])
        for result in results:
            if result.message is not None:
                self.assertIsNone(self.body(uaid, result.message.seq))
