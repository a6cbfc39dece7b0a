"""Storage backends on real threads and a real memcached.

The ``StorageContract`` runs against ``SqliteStorage`` on the real
``ThreadPoolService`` and against ``MemcachedStorage`` on a real memcached
(``$PUSHTWISTED_TEST_MEMCACHED`` or one started here; skipped without one,
failed under ``CI=true``).  Beyond the contract: concurrent writers racing on
the blocking layer through the pool's threads, memcached expiry in real time,
and a memcached outage: stop, fail fast, restart, recover.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage import _sqlite_writes
from pushtwisted.storage._memcache import make_memcached_client
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage.interface import PendingUpdate, Storage, UpdateOutcome
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.storage.sqlite import SqliteStorage
from pushtwisted.testing import RecordingMetrics
from pushtwisted.threadpool import ThreadPoolService
from tests.integration.memcached_fixture import MemcachedProcess, shared_memcached
from tests.test_storage_contract import EPOCH, StorageContract, new_id, spelling


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the real reactor."""
    await deferLater(_reactor(), seconds, lambda: None)


class _Pooled:
    """Starts a real ``ThreadPoolService`` for the test and stops it afterwards."""

    def start_pool(self, max_threads: int = 8) -> ThreadPoolService:
        self.metrics = RecordingMetrics()
        pool = ThreadPoolService(
            _reactor(),
            min_threads=0,
            max_threads=max_threads,
            max_queue=5000,
            timeout=30,
            metrics=self.metrics,
        )
        pool.startService()
        self.addCleanup(pool.stopService)  # type: ignore[attr-defined]
        return pool


class _Races:
    """Concurrent writers on one UAID, through the pool's real threads."""

    storage: Storage

    async def test_concurrent_registers_lose_nothing(self) -> None:
        """200 registers of one UAID at once (8 threads racing): every channel is kept."""
        uaid = new_id()
        chids = sorted(new_id() for _ in range(200))
        await gatherResults([self.storage.register(uaid, c, spelling(c), 0) for c in chids])
        await gatherResults([self.storage.update(uaid, c, v, None) for v, c in enumerate(chids, 1)])
        pending = await self.storage.fetch_pending(uaid)
        self.assertEqual(  # type: ignore[attr-defined]
            pending,
            [PendingUpdate(channel_id=spelling(c), version=v) for v, c in enumerate(chids, 1)],
        )

    async def test_concurrent_registers_of_one_channel(self) -> None:
        """Concurrent registers of one chid are idempotent: it is counted once."""
        uaid, chid = new_id(), new_id()
        await gatherResults([self.storage.register(uaid, chid, "C", 1) for _ in range(20)])
        await self.storage.update(uaid, chid, 1, None)
        self.assertEqual(  # type: ignore[attr-defined]
            await self.storage.fetch_pending(uaid), [PendingUpdate(channel_id="C", version=1)]
        )

    def blocking_update(self, uaid: str, chid: str, version: int) -> object:
        raise NotImplementedError

    def blocking_ack(self, uaid: str, chid: str, version: int) -> bool:
        raise NotImplementedError

    def blocking_fetch(self, uaid: str) -> list[PendingUpdate]:
        raise NotImplementedError

    async def test_update_vs_ack_never_loses_newer(self) -> None:
        """Acks racing newer updates (tight loops in pool threads) never clear an unseen update.

        Each round, a writer thread stores versions 1..N of a fresh channel
        while two acker threads ack whatever they last read; at the end the
        last version is pending unless an ack of it succeeded.
        """
        pool: ThreadPoolService = self.pool  # type: ignore[attr-defined]
        rounds, last = 40, 40
        lost: list[int] = []
        raced = 0
        for _ in range(rounds):
            uaid, chid, _ = await self._one_channel()
            done: list[bool] = []
            acked: set[int] = set()

            def writer(uaid: str = uaid, chid: str = chid, done: list[bool] = done) -> None:
                try:
                    for version in range(1, last + 1):
                        self.blocking_update(uaid, chid, version)
                finally:
                    done.append(True)  # even on error: the ackers must stop

            def acker(
                uaid: str = uaid, chid: str = chid, done: list[bool] = done, acked: set[int] = acked
            ) -> None:
                while not done:
                    for update in self.blocking_fetch(uaid):
                        if self.blocking_ack(uaid, chid, update.version):
                            acked.add(update.version)

            # Three pool threads at once (``run`` would put the calls of one
            # turn in one job, one after the other).
            await gatherResults(
                [deferToThreadPool(_reactor(), pool.pool, f) for f in (writer, acker, acker)]
            )
            raced += bool(acked)
            pending = await self.storage.fetch_pending(uaid)
            if last not in acked and [p.version for p in pending] != [last]:
                lost.append(len(pending))
        self.assertTrue(raced, "the race never happened")  # type: ignore[attr-defined]
        self.assertEqual(lost, [], "an ack cleared a newer update")  # type: ignore[attr-defined]

    async def test_update_vs_unregister_never_resurrects(self) -> None:
        """Updates racing an unregister never bring the channel back."""
        uaid, chid, _ = await self._one_channel()
        updates = [self.storage.update(uaid, chid, v, None) for v in range(1, 40)]
        unregister = self.storage.unregister(uaid, chid)
        updates += [self.storage.update(uaid, chid, v, None) for v in range(40, 80)]
        await gatherResults([*updates, unregister])
        self.assertEqual(await self.storage.fetch_pending(uaid), [])  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            (await self.storage.update(uaid, chid, 100, None)).outcome, UpdateOutcome.GONE
        )
        self.assertEqual(await self.storage.expired(uaid, [chid]), [chid])  # type: ignore[attr-defined]

    async def _one_channel(self) -> tuple[str, str, str]:
        uaid, chid = new_id(), new_id()
        await self.storage.register(uaid, chid, spelling(chid), 0)
        return uaid, chid, spelling(chid)


class SqliteThreadedTests(_Pooled, _Races, StorageContract, TestCase):
    """``SqliteStorage`` on the real thread pool passes the contract and the races."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.pool = self.start_pool()
        super().setUp()

    def make_storage(self, *, ttl_deleted: float) -> Storage:
        storage = SqliteStorage(
            self.mktemp() + "/pushtwisted.sqlite3",
            self.pool.run,
            self.clock,
            ttl_deleted=ttl_deleted,
        )
        self.addCleanup(storage.close)
        return storage

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def blocking_write(self, op: Any, **kwargs: Any) -> object:
        """Commit one write operation on the writer from this (pool) thread."""
        call = functools.partial(op, **kwargs)
        ((ok, value),) = self.storage._batch_blocking([(call, False)])  # type: ignore[attr-defined]
        if not ok:
            raise value
        return value

    def blocking_update(self, uaid: str, chid: str, version: int) -> object:
        return self.blocking_write(
            _sqlite_writes.update,
            uaid=uaid,
            chid=chid,
            version=version,
            data=None,
            only_newer=False,
        )

    def blocking_ack(self, uaid: str, chid: str, version: int) -> bool:
        op = _sqlite_writes.ack
        return bool(self.blocking_write(op, uaid=uaid, chid=chid, version=version))

    def blocking_fetch(self, uaid: str) -> list[PendingUpdate]:
        pending, _ = self.storage._fetch_pending_blocking(uaid, self.clock.seconds())  # type: ignore[attr-defined]
        return pending  # type: ignore[no-any-return]

    async def test_metrics(self) -> None:
        """Calls through the pool report their latency by operation and the queue depth."""
        await self.storage.user_mode(new_id())
        observed = self.metrics.observations("storage_latency_seconds")
        self.assertIn("user_mode", {labels["operation"] for _, labels in observed})
        self.assertEqual(self.metrics.gauges("storage_queue_depth")[-1], 0)


class MemcachedTests(_Pooled, _Races, StorageContract, TestCase):
    """``MemcachedStorage`` on a real memcached passes the contract and the races."""

    expiry_ttl = 1.0
    expiry_slack = 1.5

    def setUp(self) -> None:
        self.address = shared_memcached()
        self.prefix = f"pt-test-{uuid.uuid4().hex[:8]}:"
        self.pool = self.start_pool()
        super().setUp()

    def make_storage(self, *, ttl_deleted: float, **ttls: float) -> Storage:
        client = make_memcached_client(
            [self.address], pool_size=8, connect_timeout=2.0, timeout=5.0
        )
        self.client = client
        storage = MemcachedStorage(
            client,
            self.pool.submit,
            _reactor(),
            ttl_live=ttls.get("ttl_live", 3600.0),
            ttl_registered=ttls.get("ttl_registered", 3600.0),
            ttl_deleted=ttl_deleted,
            key_prefix=self.prefix,
        )
        self.addCleanup(storage.close)
        return storage

    async def advance(self, seconds: float) -> None:
        await sleep(seconds)

    def alone(self, steps: Steps[Any]) -> Any:
        """Run one operation on this (pool) thread, through the client's pipeline."""
        ((ok, value),) = MemcacheSteps(self.client)([steps])
        if not ok:
            raise value
        return value

    def blocking_update(self, uaid: str, chid: str, version: int) -> object:
        storage = self.storage
        assert isinstance(storage, MemcachedStorage)
        return self.alone(storage.update_steps(uaid, chid, version, None, False, time.time()))

    def blocking_ack(self, uaid: str, chid: str, version: int) -> bool:
        storage = self.storage
        assert isinstance(storage, MemcachedStorage)
        return bool(self.alone(storage.ack_steps(uaid, chid, version, time.time())))

    def blocking_fetch(self, uaid: str) -> list[PendingUpdate]:
        storage = self.storage
        assert isinstance(storage, MemcachedStorage)
        pending: list[PendingUpdate] = self.alone(storage.fetch_pending_steps(uaid, time.time()))
        return pending

    async def test_long_ttl(self) -> None:
        """A TTL over 30 days keeps the record (sent raw, memcached would expire it at once)."""
        storage = self.make_storage(
            ttl_deleted=3600.0, ttl_live=40 * 86400.0, ttl_registered=45 * 86400.0
        )
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0)
        await storage.update(uaid, chid, 1, None)
        self.assertEqual(
            await storage.fetch_pending(uaid), [PendingUpdate(channel_id=chid, version=1)]
        )
        # The control: the same TTL sent as relative seconds is read as 1970.
        raw_key = f"{self.prefix}control-{new_id()}"
        self.client.set(raw_key, "x", expire=40 * 86400, noreply=False)
        self.assertIsNone(self.client.get(raw_key))

    async def test_registration_ttl(self) -> None:
        """Registered records and the user's list expire after ``ttl_registered``."""
        storage = self.make_storage(ttl_deleted=1.0, ttl_live=1.0, ttl_registered=1.0)
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0)
        self.assertIsNotNone(await storage.user_mode(uaid))
        await sleep(2.5)
        self.assertIsNone(await storage.user_mode(uaid))
        self.assertEqual((await storage.update(uaid, chid, 1, None)).outcome, UpdateOutcome.GONE)

    async def test_hello_refreshes(self) -> None:
        """A hello (``user_mode`` + ``fetch_pending``) past half the TTL extends it."""
        storage = self.make_storage(ttl_deleted=1.0, ttl_live=6.0, ttl_registered=6.0)
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0)
        await sleep(3.3)
        self.assertIsNotNone(await storage.user_mode(uaid))
        await storage.fetch_pending(uaid)
        await sleep(3.3)  # 6.6 s after register: gone without the refresh
        self.assertIsNotNone(await storage.user_mode(uaid))
        self.assertEqual((await storage.update(uaid, chid, 1, None)).outcome, UpdateOutcome.STORED)


class MemcachedOutageTests(_Pooled, TestCase):
    """A memcached outage: every call fails fast, nothing reads as a miss, service recovers."""

    def start_memcached(self, *, warm_restart: bool) -> MemcachedProcess:
        server = MemcachedProcess(warm_restart=warm_restart)
        server.start()
        self.addCleanup(server.cleanup)
        return server

    def make(self, server: MemcachedProcess) -> MemcachedStorage:
        client = make_memcached_client(
            [server.address], pool_size=8, connect_timeout=0.5, timeout=1.0, retry_timeout=0.5
        )
        storage = MemcachedStorage(
            client,
            self.start_pool().submit,
            _reactor(),
            ttl_live=3600.0,
            ttl_registered=3600.0,
            ttl_deleted=3600.0,
        )
        self.addCleanup(storage.close)
        return storage

    async def assert_all_fail_fast(self, storage: Storage, uaid: str, chid: str) -> None:
        calls: list[tuple[str, Any]] = [
            ("user_mode", lambda: storage.user_mode(uaid)),
            ("register", lambda: storage.register(uaid, new_id(), "x", 0)),
            ("unregister", lambda: storage.unregister(uaid, chid)),
            ("update", lambda: storage.update(uaid, chid, 9, None)),
            ("fetch_pending", lambda: storage.fetch_pending(uaid)),
            ("ack", lambda: storage.ack(uaid, chid, 9)),
            ("expired", lambda: storage.expired(uaid, [chid])),
            ("check", lambda: storage.check()),
        ]
        for name, call in calls:
            started = time.monotonic()
            try:
                result = await call()
            except StorageUnavailable:
                pass
            else:
                self.fail(f"{name} answered {result!r} while memcached was down")
            self.assertLess(time.monotonic() - started, 2.5, f"{name} was slow to fail")

    async def wait_recovered(self, storage: Storage, limit: float = 10.0) -> float:
        started = time.monotonic()
        while True:
            try:
                await storage.check()
                return time.monotonic() - started
            except StorageUnavailable:
                if time.monotonic() - started > limit:
                    self.fail(f"no recovery within {limit} s")
                await sleep(0.1)

    async def test_kill_and_restart(self) -> None:
        """memcached killed: every call errbacks fast (``user_mode`` too); a restart heals."""
        server = self.start_memcached(warm_restart=False)
        storage = self.make(server)
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0)
        await storage.update(uaid, chid, 1, None)
        server.stop()
        for _ in range(3):  # before, inside and after the fail-fast window
            await self.assert_all_fail_fast(storage, uaid, chid)
            await sleep(0.3)
        server.start()
        recovered = await self.wait_recovered(storage)
        self.assertLess(recovered, 5.0)
        # A killed memcached lost its items; the store works again for new ones.
        other, channel = new_id(), new_id()
        await storage.register(other, channel, channel, 0)
        self.assertIsNotNone(await storage.user_mode(other))

    async def test_warm_restart_keeps_uaids(self) -> None:
        """memcached restarted with its items: after the outage the UAID and updates are intact."""
        server = self.start_memcached(warm_restart=True)
        storage = self.make(server)
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0)
        await storage.update(uaid, chid, 7, "kept")
        await sleep(1.1)  # memcached refuses a warm restart in its start second
        server.stop(graceful=True)
        await self.assert_all_fail_fast(storage, uaid, chid)
        await sleep(1.2)
        await self.assert_all_fail_fast(storage, uaid, chid)
        server.start()
        recovered = await self.wait_recovered(storage)
        self.assertLess(recovered, 5.0)
        self.assertIsNotNone(await storage.user_mode(uaid))
        self.assertEqual(
            await storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=chid, version=7, data="kept")],
        )
