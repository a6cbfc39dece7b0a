"""Tests for ``pushtwisted.threadpool``: the storage pool service, without real threads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pushtwisted.errors import StorageBusy, StorageUnavailable
from pushtwisted.testing import RecordingMetrics
from pushtwisted.threadpool import POOL_NAME, ThreadPoolService


@implementer(IReactorFromThreads)
class InlineReactor(Clock):
    """A ``Clock`` whose ``callFromThread`` runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
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
    """``ThreadPoolService.run`` bounds, times and reports blocking calls."""

    def make(
        self, *, max_queue: int = 10, timeout: float = 5.0, start: bool = True
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
        )
        pool = ManualPool()
        service.pool = pool  # type: ignore[assignment]
        if start:
            service.startService()
        return service, pool, reactor, metrics

    def test_result(self) -> None:
        """The caller's Deferred fires with the function's result, called with the arguments."""
        service, pool, _, _ = self.make()
        d = service.run("op", lambda a, b=0: a + b, 2, b=3)
        self.assertNoResult(d)
        pool.run_next()
        self.assertEqual(self.successResultOf(d), 5)

    def test_exception(self) -> None:
        """An exception in the function errbacks the caller's Deferred with it."""
        service, pool, _, _ = self.make()

        def boom() -> None:
            raise TooLate("no")

        d = service.run("op", boom)
        pool.run_next()
        self.failureResultOf(d, TooLate)

    def test_metrics(self) -> None:
        """Queue depth is gauged on every change; latency is observed with the operation name."""
        service, pool, reactor, metrics = self.make()
        d1 = service.run("register", lambda: 1)
        reactor.advance(0.25)
        d2 = service.run("ack", lambda: 2)
        reactor.advance(0.5)
        pool.run_next()
        pool.run_next()
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual(
            [(name, value) for kind, name, value, _ in metrics.events if kind == "gauge"],
            [
                ("storage_queue_depth", 1),
                ("storage_queue_depth", 2),
                ("storage_queue_depth", 1),
                ("storage_queue_depth", 0),
            ],
        )
        self.assertEqual(
            [
                (name, value, labels)
                for kind, name, value, labels in metrics.events
                if kind == "observe"
            ],
            [
                ("storage_latency_seconds", 0.75, {"operation": "register"}),
                ("storage_latency_seconds", 0.5, {"operation": "ack"}),
            ],
        )

    def test_bounded_queue(self) -> None:
        """At ``max_queue`` calls in flight, new work fails at once with ``StorageBusy``."""
        service, pool, _, metrics = self.make(max_queue=2)
        d1 = service.run("op", lambda: 1)
        d2 = service.run("op", lambda: 2)
        d3 = service.run("op", lambda: 3)
        self.failureResultOf(d3, StorageBusy)
        self.assertEqual(len(pool.jobs), 2, "the rejected call never reached the pool")
        self.assertEqual(service.depth, 2)
        self.assertEqual(metrics.gauges("storage_queue_depth")[-1], 2)
        pool.run_next()
        self.assertEqual(self.successResultOf(d1), 1)
        d4 = service.run("op", lambda: 4)
        pool.run_next()
        pool.run_next()
        self.assertEqual(self.successResultOf(d2), 2)
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

    def test_no_timer_left(self) -> None:
        """A call that finishes in time leaves no pending timeout behind."""
        service, pool, reactor, _ = self.make(timeout=5.0)
        d = service.run("op", lambda: 1)
        pool.run_next()
        self.successResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_no_timeout(self) -> None:
        """With ``timeout`` 0 a call may take as long as it takes."""
        service, pool, reactor, _ = self.make(timeout=0)
        d = service.run("op", lambda: 1)
        reactor.advance(3600)
        self.assertNoResult(d)
        pool.run_next()
        self.assertEqual(self.successResultOf(d), 1)

    def test_cancel(self) -> None:
        """A caller may cancel; the slot is freed only when the thread finishes."""
        service, pool, _, _ = self.make()
        d = service.run("op", lambda: 1)
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
        late = service.run("b", lambda: 2)
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
        service, pool, _, _ = self.make()
        service.run("op", lambda: 1)
        cancelled, kept = service.when_idle(), service.when_idle()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
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
