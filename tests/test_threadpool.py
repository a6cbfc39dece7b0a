"""Tests for ``pushtwisted.threadpool``: the storage pool service, without real threads."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pushtwisted.errors import StorageBusy, StorageUnavailable
from pushtwisted.testing import RecordingMetrics
from pushtwisted.threadpool import POOL_NAME, Outcome, ThreadPoolService


@implementer(IReactorFromThreads)
class InlineReactor(Clock):
    """A ``Clock`` whose ``callFromThread`` runs the call at once (and counts it)."""

    from_thread = 0

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_thread += 1
        f(*args, **kwargs)


class ManualPool:
    """A stand-in ``ThreadPool`` that runs submitted work only when told to."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...], Any]] = []
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        self.jobs.append((on_result, func, args, kw))

    def run_next(self) -> None:
        """Run the oldest job, reporting like ``ThreadPool`` does."""
        on_result, func, args, kw = self.jobs.pop(0)
        try:
            result = func(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadPoolServiceTests(SynchronousTestCase):
    """``ThreadPoolService`` batches, bounds, times and reports blocking calls."""

    def make(
        self,
        *,
        max_queue: int = 10,
        timeout: float = 5.0,
        start: bool = True,
        max_batches: int | None = None,
        max_batch: int = 512,
    ) -> tuple[ThreadPoolService, ManualPool, InlineReactor, RecordingMetrics]:
        reactor = InlineReactor()
        metrics = RecordingMetrics()
        service = ThreadPoolService(
            reactor,
            min_threads=0,
            max_threads=2,
            max_queue=max_queue,
            timeout=timeout,
            metrics=metrics,
            max_batches=max_batches,
            max_batch=max_batch,
        )
        pool = ManualPool()
        service.pool = pool  # type: ignore[assignment]
        if start:
            service.startService()
        return service, pool, reactor, metrics

    def test_result(self) -> None:
        """The caller's Deferred fires with the function's result, called with the arguments."""
        service, pool, reactor, _ = self.make()
        d = service.run("op", lambda a, b=0: a + b, 2, b=3)
        reactor.advance(0)
        self.assertNoResult(d)
        pool.run_next()
        self.assertEqual(self.successResultOf(d), 5)

    def test_exception(self) -> None:
        """An exception in the function errbacks the caller's Deferred with it."""
        service, pool, reactor, _ = self.make()

        def boom() -> None:
            raise TooLate("no")

        d = service.run("op", boom)
        reactor.advance(0)
        pool.run_next()
        self.failureResultOf(d, TooLate)

    def test_answered_calls_leave_no_cycle(self) -> None:
        """Calls that answered, with their turns, Deferreds and callbacks, go with their
        last reference: nothing is left for the garbage collector to find."""
        service, pool, reactor, _ = self.make()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        results: list[object] = []
        for i in range(3):
            service.run("op", lambda: 1).addCallback(results.append)
            service.run("op", lambda: 2).addCallback(results.append)
            reactor.advance(0)
            pool.run_next()
            self.assertEqual(len(results), 2 * (i + 1))
        self.assertEqual(gc.collect(), 0)

    def test_one_hop_per_turn(self) -> None:
        """The calls of one reactor turn go to the pool as one job, at the end of the
        turn, and come back with one ``callFromThread``; each gets its own result."""
        service, pool, reactor, _ = self.make()
        calls = [service.run("op", lambda i=i: i * 10) for i in range(5)]
        self.assertEqual(pool.jobs, [], "nothing leaves before the turn ends")
        reactor.advance(0)
        self.assertEqual(len(pool.jobs), 1)
        pool.run_next()
        self.assertEqual(reactor.from_thread, 1)
        self.assertEqual([self.successResultOf(d) for d in calls], [0, 10, 20, 30, 40])
        later = service.run("op", lambda: "next")
        reactor.advance(0)
        self.assertEqual(len(pool.jobs), 1, "a later turn makes a new job")
        pool.run_next()
        self.assertEqual(self.successResultOf(later), "next")

    def test_executors_share_a_run(self) -> None:
        """Items of equal executors run in one executor call; others run apart; every
        caller gets the outcome of its own item, success or error."""
        service, pool, reactor, _ = self.make()
        seen: list[tuple[str, list[int]]] = []

        @dataclass(frozen=True)
        class Doubler:
            name: str

            def __call__(self, items: list[int]) -> list[Outcome]:
                seen.append((self.name, list(items)))
                return [(True, i * 2) if i >= 0 else (False, TooLate(str(i))) for i in items]

        a1 = service.submit("a", Doubler("a"), 1)
        b1 = service.submit("b", Doubler("b"), 5)
        a2 = service.submit("a", Doubler("a"), -2)  # an equal executor: the same run
        a3 = service.submit("a", Doubler("a"), 3)
        plain = service.run("plain", lambda: "p")
        reactor.advance(0)
        pool.run_next()
        self.assertEqual(seen, [("a", [1, -2, 3]), ("b", [5])])
        self.assertEqual(self.successResultOf(a1), 2)
        self.failureResultOf(a2, TooLate)
        self.assertEqual(self.successResultOf(a3), 6)
        self.assertEqual(self.successResultOf(b1), 10)
        self.assertEqual(self.successResultOf(plain), "p")

    def test_executor_failure(self) -> None:
        """An executor that raises, or answers the wrong number of outcomes, fails
        all of its items and only those."""
        service, pool, reactor, _ = self.make()

        def broken(items: list[int]) -> list[Outcome]:
            raise TooLate("executor")

        def short(items: list[int]) -> list[Outcome]:
            return [(True, 1)]

        failed = [service.submit("x", broken, 1), service.submit("x", broken, 2)]
        miscounted = [service.submit("y", short, 1), service.submit("y", short, 2)]
        fine = service.run("z", lambda: "ok")
        reactor.advance(0)
        pool.run_next()
        for d in failed:
            self.failureResultOf(d, TooLate)
        for d in miscounted:
            self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.successResultOf(fine), "ok")

    def test_jobs_in_flight_are_bounded(self) -> None:
        """At ``max_batches`` jobs running, new calls wait; when a job comes back the
        calls that waited leave together as the next job."""
        service, pool, reactor, _ = self.make(max_batches=1)
        first = service.run("op", lambda: 1)
        reactor.advance(0)
        waiting = [service.run("op", lambda i=i: i) for i in range(3)]
        reactor.advance(0)
        reactor.advance(0)
        self.assertEqual(len(pool.jobs), 1)
        pool.run_next()
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(len(pool.jobs), 1, "the waiting calls left as one job")
        pool.run_next()
        self.assertEqual([self.successResultOf(d) for d in waiting], [0, 1, 2])

    def test_job_size_is_bounded(self) -> None:
        """A turn with more than ``max_batch`` calls is split into several jobs."""
        service, pool, reactor, _ = self.make(max_batch=2)
        calls = [service.run("op", lambda i=i: i) for i in range(5)]
        reactor.advance(0)
        self.assertEqual(len(pool.jobs), 2, "two jobs run (max_batches = max_threads)")
        pool.run_next()
        self.assertEqual(len(pool.jobs), 2, "a slot freed: the rest leaves")
        pool.run_next()
        pool.run_next()
        self.assertEqual([self.successResultOf(d) for d in calls], [0, 1, 2, 3, 4])

    def test_metrics(self) -> None:
        """The queue depth is gauged when a job leaves and when it comes back; latency
        is observed per call with the operation name, from its turn's start."""
        service, pool, reactor, metrics = self.make()
        d1 = service.run("register", lambda: 1)
        d2 = service.run("ack", lambda: 2)
        reactor.advance(0)
        reactor.advance(0.25)
        d3 = service.run("ack", lambda: 3)
        reactor.advance(0)
        reactor.advance(0.5)
        pool.run_next()
        pool.run_next()
        for d in (d1, d2, d3):
            self.successResultOf(d)
        self.assertEqual(metrics.gauges("storage_queue_depth"), [2, 3, 1, 0])
        self.assertEqual(
            metrics.observations("storage_latency_seconds"),
            [
                (0.75, {"operation": "register"}),
                (0.75, {"operation": "ack"}),
                (0.5, {"operation": "ack"}),
            ],
        )

    def test_bounded_queue(self) -> None:
        """At ``max_queue`` calls in flight, new work fails at once with ``StorageBusy``."""
        service, pool, reactor, metrics = self.make(max_queue=2)
        d1 = service.run("op", lambda: 1)
        d2 = service.run("op", lambda: 2)
        d3 = service.run("op", lambda: 3)
        self.failureResultOf(d3, StorageBusy)
        reactor.advance(0)
        self.assertEqual(len(pool.jobs), 1)
        self.assertEqual(service.depth, 2)
        self.assertEqual(metrics.gauges("storage_queue_depth")[-1], 2)
        self.failureResultOf(service.run("op", lambda: 3), StorageBusy)
        pool.run_next()
        self.assertEqual(self.successResultOf(d1), 1)
        self.assertEqual(self.successResultOf(d2), 2)
        d4 = service.run("op", lambda: 4)
        reactor.advance(0)
        pool.run_next()
        self.assertEqual(self.successResultOf(d4), 4)

    def test_busy_is_unavailable(self) -> None:
        """``StorageBusy`` is a ``StorageUnavailable``, so callers answer 503."""
        self.assertTrue(issubclass(StorageBusy, StorageUnavailable))

    def test_timeout(self) -> None:
        """A call that outlives ``timeout`` errbacks with ``StorageUnavailable``.

        The thread keeps its slot until it really finishes; its late result
        is dropped and its latency is still observed.
        """
        service, pool, reactor, metrics = self.make(timeout=5.0)
        d = service.run("fetch_pending", lambda: "late")
        reactor.advance(0)
        reactor.advance(4.9)
        self.assertNoResult(d)
        reactor.advance(0.1)
        failure = self.failureResultOf(d, StorageUnavailable)
        self.assertIn("fetch_pending", str(failure.value))
        self.assertEqual(service.depth, 1)
        reactor.advance(1)
        pool.run_next()
        self.assertEqual(service.depth, 0)
        self.assertEqual(
            metrics.observations("storage_latency_seconds")[-1],
            (6.0, {"operation": "fetch_pending"}),
        )

    def test_timeout_while_queued(self) -> None:
        """A call that times out while it waits for a free slot is dropped unrun."""
        service, pool, reactor, _ = self.make(timeout=5.0, max_batches=1)
        first = service.run("op", lambda: 1)
        reactor.advance(0)
        ran: list[int] = []
        queued = service.run("op", ran.append, 2)
        reactor.advance(0)
        reactor.advance(5)
        self.failureResultOf(first, StorageUnavailable)
        self.failureResultOf(queued, StorageUnavailable)
        self.assertEqual(service.depth, 2)
        pool.run_next()
        self.assertEqual(pool.jobs, [], "the timed-out call never reached the pool")
        self.assertEqual(ran, [])
        self.assertEqual(service.depth, 0)

    def test_no_timer_left(self) -> None:
        """Calls that finish in time leave no pending timeout behind."""
        service, pool, reactor, _ = self.make(timeout=5.0)
        d = service.run("op", lambda: 1)
        d2 = service.run("op", lambda: 2)
        reactor.advance(0)
        pool.run_next()
        self.successResultOf(d)
        self.successResultOf(d2)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_no_timeout(self) -> None:
        """With ``timeout`` 0 a call may take as long as it takes."""
        service, pool, reactor, _ = self.make(timeout=0)
        d = service.run("op", lambda: 1)
        reactor.advance(0)
        reactor.advance(3600)
        self.assertNoResult(d)
        pool.run_next()
        self.assertEqual(self.successResultOf(d), 1)

    def test_cancel(self) -> None:
        """A caller may cancel; the slot is freed only when the thread finishes."""
        service, pool, reactor, _ = self.make()
        d = service.run("op", lambda: 1)
        reactor.advance(0)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(service.depth, 1)
        pool.run_next()
        self.assertEqual(service.depth, 0)

    def test_when_idle(self) -> None:
        """``when_idle`` fires at once with nothing in flight, else when the last call
        finishes, even one whose caller timed out."""
        service, pool, reactor, _ = self.make(timeout=1.0)
        self.successResultOf(service.when_idle())
        service.run("a", lambda: 1)
        reactor.advance(0)
        late = service.run("b", lambda: 2)
        reactor.advance(0)
        idle = service.when_idle()
        pool.run_next()
        self.assertNoResult(idle)
        reactor.advance(1.0)
        self.failureResultOf(late, StorageUnavailable)
        self.assertNoResult(idle)
        pool.run_next()
        self.successResultOf(idle)

    def test_when_idle_cancelled(self) -> None:
        """Cancelling a ``when_idle`` wait forgets it; other waits still fire."""
        service, pool, reactor, _ = self.make()
        service.run("op", lambda: 1)
        cancelled, kept = service.when_idle(), service.when_idle()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        reactor.advance(0)
        pool.run_next()
        self.successResultOf(kept)

    def test_not_running(self) -> None:
        """Before start and after stop, calls fail with ``StorageUnavailable``."""
        service, pool, _, _ = self.make(start=False)
        self.failureResultOf(service.run("op", lambda: 1), StorageUnavailable)
        service.startService()
        self.assertTrue(pool.started)
        service.stopService()
        self.assertTrue(pool.stopped)
        self.failureResultOf(service.run("op", lambda: 1), StorageUnavailable)
        self.assertEqual(pool.jobs, [])

    def test_stop_fails_queued_calls(self) -> None:
        """Calls still queued when the service stops fail; none is left pending."""
        service, pool, reactor, _ = self.make()
        d = service.run("op", lambda: 1)
        idle = service.when_idle()
        service.stopService()
        self.failureResultOf(d, StorageUnavailable)
        self.successResultOf(idle)
        reactor.advance(10)
        self.assertEqual(pool.jobs, [])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_real_pool_start_stop(self) -> None:
        """The service owns a named ``ThreadPool`` that starts and stops with it."""
        service = ThreadPoolService(
            InlineReactor(),
            min_threads=0,
            max_threads=3,
            max_queue=5,
            timeout=1,
            metrics=RecordingMetrics(),
        )
        self.assertEqual(service.pool.name, POOL_NAME)
        self.assertEqual((service.pool.min, service.pool.max), (0, 3))
        self.assertFalse(service.pool.started)
        service.startService()
        self.assertTrue(service.running)
        self.assertTrue(service.pool.started)
        service.stopService()
        self.assertFalse(service.running)
        self.assertTrue(service.pool.joined)

    def test_bad_sizes(self) -> None:
        """Impossible pool sizes are refused."""
        for kwargs in (
            {"min_threads": 3, "max_threads": 2, "max_queue": 1},
            {"min_threads": 0, "max_threads": 0, "max_queue": 1},
            {"min_threads": 0, "max_threads": 1, "max_queue": 0},
            {"min_threads": 0, "max_threads": 1, "max_queue": 1, "max_batches": 0},
            {"min_threads": 0, "max_threads": 1, "max_queue": 1, "max_batch": 0},
        ):
            self.assertRaises(
                ValueError,
                ThreadPoolService,
                InlineReactor(),
                timeout=1,
                metrics=RecordingMetrics(),
                **kwargs,
            )


class TooLate(Exception):
    """A test exception."""
