"""The dedicated storage thread pool, as a service, one hop per reactor turn.

Blocking storage calls (sqlite3, pymemcache) run here and nowhere else, so a
slow store cannot starve the reactor's own pool (DNS lookups).  ``submit``
is the single thread boundary: it queues one *item* for an *executor* (a
function that runs many items on a pool thread and returns one ``Outcome``
per item) and returns a Deferred that fires on the reactor thread.  ``run``
is ``submit`` for one plain function call.

Calls submitted in the same reactor turn travel together: at the end of the
turn (``callLater(0)``) the queue is handed to the pool as *one* job, in
which each executor runs once with all of its items (executors that compare
equal share one run, so a memcached client's executor can merge the requests
of every caller into one pipeline), and the job's outcomes come back with
*one* ``callFromThread``.  At most ``max_batches`` jobs run at once; calls
that arrive meanwhile wait and go together in the next job.  Per call it
keeps

- a bound on submitted-but-unfinished calls: past ``max_queue`` new work fails
  at once with ``StorageBusy`` and never reaches the pool;
- a timeout: the caller's Deferred errbacks with ``StorageUnavailable`` (the
  thread may still finish; its result is dropped, and a call still queued is
  dropped unrun); the calls of one turn share one timer;
- metrics: one ``storage_latency_seconds`` observation per finished call,
  labelled with the operation name the caller passes, and the
  ``storage_queue_depth`` gauge each time a job leaves or comes back;
- ``when_idle``, which lets a shutdown wait for the calls in flight.

The pool is a ``StoragePool``: a Twisted ``ThreadPool`` whose threads each
serve a shared queue for as long as the pool runs, so a job's hand-over is
one queue ``put``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from functools import partial
from queue import SimpleQueue
from typing import Any, ParamSpec, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pushtwisted.errors import StorageBusy, StorageUnavailable
from pushtwisted.logs import logger
from pushtwisted.metrics import Metrics

__all__ = [
    "BatchRunner",
    "Executor",
    "MAX_BATCH",
    "Outcome",
    "POOL_NAME",
    "Runner",
    "StoragePool",
    "ThreadPoolService",
    "call_each",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_I = TypeVar("_I")

#: Name of the pool's threads (visible in thread dumps and logs).
POOL_NAME = "pushtwisted-storage"

#: Most calls in one job.
MAX_BATCH = 512

#: What an executor returns per item: ``(True, result)`` or ``(False, exception)``.
Outcome = tuple[bool, object]

#: Runs many items on a pool thread; one ``Outcome`` per item, in order.
Executor = Callable[[list[_I]], list[Outcome]]


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


class BatchRunner(Protocol):
    """Anything that runs ``item`` with ``executor`` off the reactor thread.

    ``ThreadPoolService.submit`` is the production one (items of equal
    executors that arrive in one reactor turn run in one ``executor`` call);
    tests may pass one that calls ``executor([item])`` inline.
    """

    def __call__(self, operation: str, executor: Executor[_I], item: _I, /) -> Deferred[Any]:
        """Fire with ``item``'s outcome: its result, or its error as a failure."""
        ...


def call_each(calls: list[Callable[[], object]]) -> list[Outcome]:
    """The executor of plain calls: call each in turn, catching its error."""
    outcomes: list[Outcome] = []
    for call in calls:
        try:
            outcomes.append((True, call()))
        except Exception as e:
            outcomes.append((False, e))
    return outcomes


class _Turn:
    """The calls submitted in one reactor turn: one start time, one deadline."""

    __slots__ = ("calls", "started", "timer", "unresolved")

    def __init__(self, started: float) -> None:
        self.started = started
        self.calls: list[_Call] = []
        self.unresolved = 0
        self.timer: IDelayedCall | None = None


class _Call:
    """One submitted call, from ``submit`` until its outcome is delivered."""

    __slots__ = ("deferred", "executor", "item", "operation", "turn")

    def __init__(self, operation: str, executor: Executor[Any], item: object, turn: _Turn) -> None:
        self.operation = operation
        self.executor = executor
        self.item = item
        self.turn = turn
        self.deferred: Deferred[Any] = Deferred()


#: A job as the pool thread sees it: each executor with its items.
_Job = list[tuple[Executor[Any], list[object]]]


def _work(job: _Job) -> list[list[Outcome]]:
    """Run one job (pool thread): each executor once, with all of its items."""
    results: list[list[Outcome]] = []
    for executor, items in job:
        try:
            outcomes = executor(items)
            if len(outcomes) != len(items):
                raise RuntimeError(f"{executor!r} gave {len(outcomes)} outcomes for {len(items)}")
        except Exception as e:
            outcomes = [(False, e)] * len(items)
        results.append(outcomes)
    return results


_log = logger()

#: What ``StoragePool.stop`` puts in the inbox, once per serving thread.
_STOP = None

#: One unit of work in ``StoragePool``'s inbox: ``(on_result, func, args, kwargs)``.
_Work = tuple[Callable[[bool, Any], object] | None, Callable[..., Any], tuple[Any, ...], Any]


class StoragePool(ThreadPool):
    """A Twisted ``ThreadPool`` whose threads stay on duty between calls.

    ``ThreadPool.callInThreadWithCallback`` hands each call to an idle worker
    through the pool's coordinator, a ``queue.Queue`` per worker and a
    context wrapper, then gives the worker back through the coordinator:
    ~30 us of Python per call on a shared core (``bench/pool_hop.py``).  Here
    each of the pool's threads runs one long call, ``_serve``, that takes work
    from a shared ``SimpleQueue`` (C code, one lock) until ``stop``; a call
    is one ``put`` on the calling side.  The contract is
    ``callInThreadWithCallback``'s: ``on_result(True, result)`` or
    ``on_result(False, Failure)`` on the thread, nothing once stopped.

    A thread is added (up to ``max``) whenever a call would otherwise have to
    wait behind calls that are still running, so a call never waits for a
    blocked one while the pool has room: ``_spare`` is the number of serving
    threads minus the calls handed in and not yet finished; it goes below
    zero only when all ``max`` threads are busy.  ``twisted.python.context``
    is not carried into the calls (storage calls do not read it).
    """

    def __init__(self, minthreads: int = 5, maxthreads: int = 20, name: str | None = None):
        super().__init__(minthreads, maxthreads, name)
        self._inbox: SimpleQueue[_Work | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._serving = 0
        self._spare = 0

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        """Run ``func(*args, **kw)`` on a serving thread; report to ``onResult`` there."""
        if self.joined:
            return
        with self._lock:
            self._spare -= 1
            more = self._spare < 0 and self._serving < self.max
            if more:
                self._serving += 1
                self._spare += 1
        self._inbox.put((onResult, func, args, kw))
        if more:
            super().callInThreadWithCallback(None, self._serve)

    def stop(self) -> None:
        """Tell each serving thread to finish (after the work queued before), then join."""
        with self._lock:
            serving, self._serving, self._spare = self._serving, 0, 0
        for _ in range(serving):
            self._inbox.put(_STOP)
        super().stop()
        self._inbox = SimpleQueue()  # a serving call the pool never started left its work

    def _serve(self) -> None:
        """(Pool thread) run work from the inbox until told to stop."""
        get = self._inbox.get
        lock = self._lock
        while (work := get()) is not _STOP:
            on_result, func, args, kw = work
            ok = True
            try:
                result = func(*args, **kw)
            except BaseException:
                ok, result = False, Failure()  # type: ignore[no-untyped-call]  # Twisted: untyped
            del work, func, args, kw
            # Spare before the result is reported: a call its caller makes on
            # seeing the result must find this thread free, not start another.
            with lock:
                self._spare += 1
            try:
                if on_result is not None:
                    on_result(ok, result)
                elif not ok:
                    _log.failure("storage pool call failed", result)
            except BaseException:
                _log.failure("storage pool result callback failed")
            del on_result, result


class ThreadPoolService(Service):
    """Own a dedicated ``ThreadPool``, start/stop it with the service, batch its calls.

    :param reactor: provides ``IReactorTime`` (the end of a turn, timeouts,
        latency) and ``IReactorFromThreads`` (results come back through
        ``callFromThread``).
    :param min_threads: threads kept even when idle.
    :param max_threads: most threads; size client connection pools to it.
    :param max_queue: most calls submitted and not yet finished (queued or
        running); beyond it ``submit`` fails fast with ``StorageBusy``.
    :param timeout: seconds a caller waits for one call before its Deferred
        errbacks with ``StorageUnavailable``; 0 or less waits forever.
    :param metrics: where queue depth and latency are reported.
    :param max_batches: most jobs running at once (default: ``max_threads``).
    :param max_batch: most calls in one job.
    :ivar pool: the ``StoragePool`` (a ``twisted.python.threadpool.ThreadPool``).
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
        max_batches: int | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if not 0 <= min_threads <= max_threads or max_threads < 1:
            raise ValueError("need 0 <= min_threads <= max_threads and max_threads >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if max_batches is None:
            max_batches = max_threads
        if max_batches < 1 or max_batch < 1:
            raise ValueError("max_batches and max_batch must be >= 1")
        self._clock = reactor
        self._from_threads = IReactorFromThreads(reactor)
        self._max_queue = max_queue
        self._timeout = timeout
        self._metrics = metrics
        self._max_batches = max_batches
        self._max_batch = max_batch
        self._depth = 0
        self._jobs = 0
        self._queue: deque[_Call] = deque()
        self._turn: _Turn | None = None
        self._flush_call: IDelayedCall | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.pool = StoragePool(min_threads, max_threads, name=POOL_NAME)

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
        """Stop the pool; blocks until running jobs finish.

        Calls still queued fail with ``StorageUnavailable``, and so do new
        calls from here on.  Like the reactor's own pool at shutdown,
        ``ThreadPool.stop`` joins the threads; each blocking call is bounded
        by its client's timeouts (memcached socket timeout, sqlite
        ``busy_timeout``), so the wait is bounded too.
        """
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._turn = None
        queued, self._queue = self._queue, deque()
        for call in queued:
            self._settle(call)
        self._after_change()
        for call in queued:
            if not call.deferred.called:
                call.deferred.errback(StorageUnavailable("storage thread pool stopped"))
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
        call: Callable[[], object] = partial(func, *args, **kwargs)
        return self.submit(operation, call_each, call)

    def submit(self, operation: str, executor: Executor[_I], item: _I) -> Deferred[Any]:
        """Queue ``item`` for ``executor`` (run in the pool at the end of this turn).

        Items of executors that compare equal, queued in the same turn, are
        passed to one ``executor`` call.  Fires with the item's outcome.

        :raises StorageBusy: (as an errback, at once) when ``max_queue`` calls
            are already in flight.
        :raises StorageUnavailable: (as an errback) when the service is not
            running, or when the call outlives ``timeout``.
        """
        if not self.running:
            return fail(StorageUnavailable("storage thread pool is not running"))
        if self._depth >= self._max_queue:
            return fail(StorageBusy(f"storage queue full ({self._depth} calls in flight)"))
        turn = self._turn
        if turn is None:
            turn = self._turn = _Turn(self._clock.seconds())
            if self._timeout > 0:
                turn.timer = self._clock.callLater(self._timeout, self._expire, turn)
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self._flush)
        call = _Call(operation, executor, item, turn)
        turn.calls.append(call)
        turn.unresolved += 1
        self._queue.append(call)
        self._depth += 1
        return call.deferred

    # -- the reactor side of a job --------------------------------------------

    def _flush(self) -> None:
        """Hand the queued calls to the pool, a job at a time, while slots are free."""
        self._flush_call = None
        self._turn = None
        queue = self._queue
        while queue and self._jobs < self._max_batches:
            calls: list[_Call] = []
            groups: dict[Hashable, tuple[Executor[Any], list[object]]] = {}
            while queue and len(calls) < self._max_batch:
                call = queue.popleft()
                if call.deferred.called:  # timed out or cancelled while queued
                    self._settle(call)
                    continue
                calls.append(call)
                group = groups.get(call.executor)
                if group is None:
                    groups[call.executor] = (call.executor, [call.item])
                else:
                    group[1].append(call.item)
            if not calls:
                continue
            self._jobs += 1
            job: _Job = list(groups.values())
            self.pool.callInThreadWithCallback(partial(self._job_done, calls), _work, job)
        self._after_change()

    def _job_done(self, calls: list[_Call], ok: bool, result: object) -> None:
        """(Pool thread) send the job's outcomes to the reactor thread."""
        self._from_threads.callFromThread(self._deliver, calls, ok, result)

    def _deliver(self, calls: list[_Call], ok: bool, result: object) -> None:
        """Account for a finished job, then fire each call's Deferred (reactor thread).

        The depth is settled and the next job sent before any caller runs,
        so the callers see the pool as it is after their job.
        """
        self._jobs -= 1
        outcomes: list[Outcome]
        if ok:
            assert isinstance(result, list)
            # Outcomes come grouped by executor, in the order of the groups.
            by_executor: dict[Hashable, Any] = {}
            groups = iter(result)
            outcomes = []
            for call in calls:
                executor_outcomes = by_executor.get(call.executor)
                if executor_outcomes is None:
                    executor_outcomes = by_executor[call.executor] = iter(next(groups))
                outcomes.append(next(executor_outcomes))
        else:
            outcomes = [(False, result)] * len(calls)
        now = self._clock.seconds()
        observe = self._metrics.observe
        for call in calls:
            self._settle(call)
            observe("storage_latency_seconds", now - call.turn.started, operation=call.operation)
        if self._queue and self._flush_call is None:
            self._flush()
        else:
            self._after_change()
        for call, (succeeded, value) in zip(calls, outcomes, strict=True):
            d = call.deferred
            if d.called:
                continue  # timed out or cancelled by the caller: nobody wants it now
            if succeeded:
                d.callback(value)
            else:
                d.errback(value)  # type: ignore[arg-type]  # an exception or a Failure

    def _settle(self, call: _Call) -> None:
        """Account for a call that left: its depth slot and its turn's timer.

        The last call of a turn to leave also empties the turn's list of
        calls: each call points back at its turn, and that cycle (with the
        calls' Deferreds and whatever their callbacks hold) would otherwise
        wait for the garbage collector instead of going with its last
        reference.
        """
        self._depth -= 1
        turn = call.turn
        turn.unresolved -= 1
        if turn.unresolved == 0:
            turn.calls = []
            if turn.timer is not None:
                if turn.timer.active():
                    turn.timer.cancel()
                turn.timer = None

    def _expire(self, turn: _Turn) -> None:
        """Fail every call of ``turn`` still unanswered: it outlived ``timeout``."""
        turn.timer = None
        for call in turn.calls:
            if not call.deferred.called:
                call.deferred.errback(
                    StorageUnavailable(
                        f"storage call {call.operation} took more than {self._timeout} s"
                    )
                )

    def _after_change(self) -> None:
        self._metrics.gauge("storage_queue_depth", self._depth)
        if self._depth == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
