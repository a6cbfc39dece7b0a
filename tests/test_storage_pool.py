"""Tests for ``pushtwisted.threadpool.StoragePool``, with real threads."""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pushtwisted.threadpool import StoragePool

#: Seconds a test waits for a thread before it calls the pool stuck.
WAIT = 10.0


class Results:
    """An ``on_result`` that records what each call reported, and on which thread."""

    def __init__(self) -> None:
        self.got: list[tuple[bool, Any, str]] = []
        self.cond = threading.Condition()

    def __call__(self, ok: bool, result: Any) -> None:
        with self.cond:
            self.got.append((ok, result, threading.current_thread().name))
            self.cond.notify_all()

    def wait_for(self, n: int) -> list[tuple[bool, Any, str]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.got) >= n, WAIT):
                raise AssertionError(f"{len(self.got)} of {n} results after {WAIT} s")
            return list(self.got)


class StoragePoolTests(SynchronousTestCase):
    """Serving threads run the calls, report like ``ThreadPool``, and stop cleanly."""

    def pool(self, maxthreads: int = 3, minthreads: int = 0) -> StoragePool:
        pool = StoragePool(minthreads, maxthreads, name="test-storage")
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_is_a_threadpool(self) -> None:
        """It is a Twisted ``ThreadPool`` with the given name and sizes."""
        pool = StoragePool(1, 4, name="x")
        self.assertIsInstance(pool, ThreadPool)
        self.assertEqual((pool.name, pool.min, pool.max), ("x", 1, 4))

    def test_results_and_failures(self) -> None:
        """``on_result`` gets ``(True, result)`` or ``(False, Failure)``, off the caller's
        thread, in the order the calls were made when one thread serves them."""
        pool = self.pool(maxthreads=1)
        results = Results()
        pool.callInThreadWithCallback(results, lambda a, b=0: a + b, 2, b=3)
        pool.callInThreadWithCallback(results, lambda: 1 // 0)
        got = results.wait_for(2)
        self.assertEqual(got[0][:2], (True, 5))
        self.assertFalse(got[1][0])
        self.assertIsInstance(got[1][1], Failure)
        self.assertTrue(got[1][1].check(ZeroDivisionError))
        self.assertNotEqual(got[0][2], threading.current_thread().name)
        self.assertIn("test-storage", got[0][2])

    def test_threads_are_reused(self) -> None:
        """Calls one after another keep using the one thread that serves them."""
        pool = self.pool(maxthreads=5)
        results = Results()
        for i in range(20):
            pool.callInThreadWithCallback(results, lambda i=i: i)
            results.wait_for(i + 1)
        self.assertEqual([r[1] for r in results.got], list(range(20)))
        self.assertEqual(len({r[2] for r in results.got}), 1)
        self.assertEqual(len(pool.threads), 1)

    def test_blocked_call_does_not_hold_up_others(self) -> None:
        """While a call blocks, the next one gets a thread of its own (up to ``max``)."""
        pool = self.pool(maxthreads=2)
        release = threading.Event()
        results = Results()
        pool.callInThreadWithCallback(results, lambda: release.wait(WAIT) and "slow")
        pool.callInThreadWithCallback(results, lambda: "fast")
        self.assertEqual(results.wait_for(1)[0][:2], (True, "fast"))
        release.set()
        self.assertEqual(results.wait_for(2)[1][:2], (True, "slow"))

    def test_at_most_max_threads(self) -> None:
        """With every thread busy, further calls wait for one and then all run."""
        pool = self.pool(maxthreads=2)
        release = threading.Event()
        running = threading.Semaphore(0)
        results = Results()

        def block(i: int) -> int:
            running.release()
            release.wait(WAIT)
            return i

        for i in range(5):
            pool.callInThreadWithCallback(results, block, i)
        self.assertTrue(running.acquire(timeout=WAIT))
        self.assertTrue(running.acquire(timeout=WAIT))
        # Both threads are blocked and no third was started: the other calls wait.
        self.assertEqual(len(pool.threads), 2)
        self.assertEqual(results.got, [])
        release.set()
        got = results.wait_for(5)
        self.assertEqual(sorted(r[1] for r in got), [0, 1, 2, 3, 4])
        self.assertLessEqual(len(pool.threads), 2)
        self.assertLessEqual(len({r[2] for r in got}), 2)

    def test_on_result_error_keeps_the_thread(self) -> None:
        """An ``on_result`` that raises is logged; the thread goes on serving."""
        pool = self.pool(maxthreads=1)

        def bad(ok: bool, result: Any) -> None:
            raise RuntimeError("callback broke")

        results = Results()
        pool.callInThreadWithCallback(bad, lambda: 1)
        pool.callInThreadWithCallback(results, lambda: 2)
        self.assertEqual(results.wait_for(1)[0][:2], (True, 2))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failure_without_on_result_is_logged(self) -> None:
        """A call with no ``on_result`` that raises is logged, not lost silently."""
        pool = self.pool(maxthreads=1)
        results = Results()
        pool.callInThread(lambda: 1 // 0)
        pool.callInThreadWithCallback(results, lambda: "after")
        results.wait_for(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_stop_runs_queued_work_then_joins(self) -> None:
        """``stop`` lets the calls already handed in finish, then no thread is left."""
        release = threading.Event()

        class ReleasingInbox(SimpleQueue[Any]):
            """Lets the blocked calls go on at the first stop signal ``stop`` hands in."""

            def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
                if item is None:
                    release.set()
                super().put(item, block, timeout)

        pool = StoragePool(0, 2, name="test-storage")
        pool._inbox = ReleasingInbox()
        pool.start()
        results = Results()
        for i in range(4):
            pool.callInThreadWithCallback(results, lambda i=i: release.wait(WAIT) and i)
        self.assertEqual(results.got, [])  # two calls blocked, two queued behind them
        pool.stop()
        self.assertTrue(release.is_set())
        self.assertEqual(sorted(r[1] for r in results.got), [0, 1, 2, 3])
        self.assertTrue(pool.threads)
        self.assertFalse(any(t.is_alive() for t in pool.threads))

    def test_no_calls_after_stop(self) -> None:
        """Once stopped, calls are dropped, like ``ThreadPool``'s."""
        pool = StoragePool(0, 2)
        pool.start()
        pool.stop()
        results = Results()
        pool.callInThreadWithCallback(results, lambda: 1)
        self.assertEqual(results.got, [])
        self.assertEqual(pool.threads, [])


class DeferToStoragePoolTests(TestCase):
    """Twisted's own helpers work with it unchanged."""

    def test_defer_to_thread_pool(self) -> None:
        """``deferToThreadPool`` fires with the result, or with the call's failure."""
        from twisted.internet import reactor

        pool = StoragePool(0, 2)
        pool.start()
        self.addCleanup(pool.stop)
        ok: Deferred[int] = deferToThreadPool(reactor, pool, lambda: 7)  # type: ignore[arg-type]
        bad: Deferred[int] = deferToThreadPool(reactor, pool, lambda: 1 // 0)  # type: ignore[arg-type]
        self.assertFailure(bad, ZeroDivisionError)
        d = ok.addCallback(self.assertEqual, 7)
        return d.addCallback(lambda _: bad)
