"""The dedicated storage thread pool, as a service.

Blocking storage calls (sqlite3, pymemcache) run here and nowhere else, so a
slow store cannot starve the reactor's own pool (DNS lookups).  ``run`` is
the single thread boundary: it hands a function and its arguments to the
pool and returns a Deferred that fires on the reactor thread.  On top of
``deferToThreadPool`` it adds

- a bound on submitted-but-unfinished calls: past ``max_queue`` new work fails
  at once with ``StorageBusy`` and never reaches the pool;
- a per-call timeout: the caller's Deferred errbacks with
  ``StorageUnavailable`` (the thread may still finish; its result is dropped);
- metrics: the ``storage_queue_depth`` gauge on every change and one
  ``storage_latency_seconds`` observation per finished call, labelled with the
  operation name the caller passes;
- ``when_idle``, which lets a shutdown wait for the calls in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pushtwisted.errors import StorageBusy, StorageUnavailable
from pushtwisted.metrics import Metrics

__all__ = ["POOL_NAME", "Runner", "ThreadPoolService", "storage_deadline"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Name of the pool's threads (visible in thread dumps and logs).
POOL_NAME = "pushtwisted-storage"


class Runner(Protocol):
    """Anything that runs ``func(*args, **kwargs)`` off the reactor thread.

    ``ThreadPoolService.run`` is the production runner; tests may pass one
    that calls ``func`` inline.  ``operation`` names the call for metrics.
    """

    def __call__(
        self,
        operation: str,
        func: Callable[_P, _T],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        """Run ``func`` with the arguments; fire with its result or failure."""
        ...


class ThreadPoolService(Service):
    """Own a dedicated ``ThreadPool`` and start/stop it with the service.

    :param reactor: provides ``IReactorTime`` (timeouts, latency) and
        ``IReactorFromThreads`` (results come back through ``callFromThread``).
    :param min_threads: threads kept even when idle.
    :param max_threads: most threads; size client connection pools to it.
    :param max_queue: most calls submitted and not yet finished (queued or
        running); beyond it ``run`` fails fast with ``StorageBusy``.
    :param timeout: seconds a caller waits for one call before its Deferred
        errbacks with ``StorageUnavailable``; 0 or less waits forever.
    :param metrics: where queue depth and latency are reported.
    :ivar pool: the ``twisted.python.threadpool.ThreadPool``.
    """

    name = POOL_NAME

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        min_threads: int,
        max_threads: int,
        max_queue: int,
        timeout: float,
        metrics: Metrics,
    ) -> None:
        if not 0 <= min_threads <= max_threads or max_threads < 1:
            raise ValueError("need 0 <= min_threads <= max_threads and max_threads >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._clock = reactor
        self._from_threads = IReactorFromThreads(reactor)
        self._max_queue = max_queue
        self._timeout = timeout
        self._metrics = metrics
        self._depth = 0
        self._idle_waiters: list[Deferred[None]] = []
        self.pool = ThreadPool(min_threads, max_threads, name=POOL_NAME)

    @property
    def depth(self) -> int:
        """The number of calls submitted and not yet finished."""
        return self._depth

    def when_idle(self) -> Deferred[None]:
        """Return a Deferred that fires once no call is in flight (at once if none is).

        A call counts until its thread finishes, even when its caller timed
        out.  Cancelling the Deferred only stops the wait.
        """
        if self._depth == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        """Start the pool's threads."""
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        self.pool.start()

    def stopService(self) -> None:
        """Stop the pool; blocks until running calls finish.

        New calls fail with ``StorageUnavailable`` from here on.  Like the
        reactor's own pool at shutdown, ``ThreadPool.stop`` joins the
        threads; each blocking call is bounded by its client's timeouts
        (memcached socket timeout, sqlite ``busy_timeout``), so the wait is
        bounded too.
        """
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        self.pool.stop()

    def run(
        self,
        operation: str,
        func: Callable[_P, _T],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        """Run ``func(*args, **kwargs)`` in the pool; fire with its result.

        :param operation: the name reported as the ``operation`` label.
        :raises StorageBusy: (as an errback, at once) when ``max_queue`` calls
            are already in flight.
        :raises StorageUnavailable: (as an errback) when the service is not
            running, or when the call outlives ``timeout``.
        """
        if not self.running:
            return fail(StorageUnavailable("storage thread pool is not running"))
        if self._depth >= self._max_queue:
            return fail(StorageBusy(f"storage queue full ({self._depth} calls in flight)"))
        self._set_depth(self._depth + 1)
        started = self._clock.seconds()
        outer: Deferred[_T] = Deferred()

        def finished(result: _T | Failure) -> None:
            self._set_depth(self._depth - 1)
            self._metrics.observe(
                "storage_latency_seconds", self._clock.seconds() - started, operation=operation
            )
            if outer.called:
                # Timed out or cancelled by the caller: nobody wants it now.
                return None
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
            return None

        inner = deferToThreadPool(self._from_threads, self.pool, func, *args, **kwargs)
        inner.addBoth(finished)
        if self._timeout > 0 and not outer.called:
            storage_deadline(outer, self._timeout, self._clock, f"storage call {operation}")
        return outer

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._metrics.gauge("storage_queue_depth", depth)
        if depth == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


def storage_deadline(d: Deferred[Any], seconds: float, clock: IReactorTime, what: str) -> None:
    """Fail ``d`` with ``StorageUnavailable`` unless it fires within ``seconds``.

    The message says ``"<what> took more than <seconds> s"``; ``d`` is
    cancelled at the deadline (``Deferred.addTimeout``).
    """
    d.addTimeout(seconds, clock)
    d.addErrback(_timed_out, what, seconds)


def _timed_out(failure: Failure, what: str, seconds: float) -> Failure:
    if isinstance(failure.value, TimeoutError):
        raise StorageUnavailable(f"{what} took more than {seconds} s") from failure.value
    return failure
