"""``GroupCommit``: a single writer's queue, each batch committed in one call.

Writes are queued on the reactor thread.  While no batch runs, the queue is
drained: up to ``max_batch`` writes go to the runner as *one* call of the
blocking ``commit`` function, which runs them in one transaction and returns
one outcome per write.  Each caller's Deferred fires on the reactor thread
once its batch is done; writes queued meanwhile form the next batch.  Past
``max_pending`` queued or running writes, new ones fail at once with
``StorageBusy``; a write that waits more than ``timeout`` seconds fails with
``StorageUnavailable`` (it may still be committed, but a write still queued
then is dropped).  The writes that will form one batch share one timer, set
for the deadline of the earliest of them; when it fires, the writes past
their own deadline fail and it is set again for the next one, so each write
gets its whole ``timeout``, no more and no less.
``SqliteStorage`` uses it for its one writer connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from pushtwisted.errors import StorageBusy, StorageUnavailable

if TYPE_CHECKING:
    from pushtwisted.threadpool import Runner

__all__ = ["GroupCommit", "Outcome"]

_W = TypeVar("_W")

#: What ``commit`` returns per write: (True, result) or (False, exception).
Outcome = tuple[bool, object]


class _Cohort:
    """Writes queued between two batch starts: one deadline for them all."""

    __slots__ = ("timer", "unresolved", "writes")

    def __init__(self) -> None:
        self.writes: list[_Queued] = []
        self.unresolved = 0
        self.timer: IDelayedCall | None = None


@dataclass(slots=True)
class _Queued:
    """One queued write (reactor thread only)."""

    operation: str
    write: Any
    deferred: Deferred[Any]
    cohort: _Cohort
    #: When the write fails unless answered (``clock.seconds()``).
    deadline: float


class GroupCommit(Generic[_W]):
    """Queue writes of type ``_W`` and commit them in batches, one batch at a time.

    :param name: names the store in error messages (``"sqlite"``).
    :param run: the runner of blocking calls; one call per batch.
    :param commit: runs a batch of writes in one transaction (pool thread)
        and returns one ``Outcome`` per write, in order.
    :param clock: times writes out.
    :param max_pending: most writes queued or running.
    :param max_batch: most writes in one batch.
    :param timeout: seconds a write may wait for its batch; 0 or less waits
        forever.
    """

    def __init__(
        self,
        name: str,
        run: Runner,
        commit: Callable[[list[_W]], list[Outcome]],
        clock: IReactorTime,
        *,
        max_pending: int,
        max_batch: int,
        timeout: float,
    ) -> None:
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be >= 1")
        self._name = name
        self._run = run
        self._commit = commit
        self._clock = clock
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._timeout = timeout
        self._queue: deque[_Queued] = deque()
        self._cohort: _Cohort | None = None
        self._pending = 0
        self._busy = False
        self._kicking = False
        self._closing = False
        self._drain_waiters: list[Deferred[None]] = []

    def submit(self, operation: str, write: _W) -> Deferred[Any]:
        """Queue ``write``; fire with its result once its batch is done."""
        if self._closing:
            return fail(StorageUnavailable(f"{self._name} storage is closed"))
        if self._pending >= self._max_pending:
            return fail(
                StorageBusy(f"{self._name} write queue full ({self._pending} writes pending)")
            )
        d: Deferred[Any] = Deferred()
        cohort = self._cohort
        if cohort is None:
            cohort = self._cohort = _Cohort()
            if self._timeout > 0:
                cohort.timer = self._clock.callLater(self._timeout, self._expire, cohort)
        queued = _Queued(operation, write, d, cohort, self._clock.seconds() + self._timeout)
        cohort.writes.append(queued)
        cohort.unresolved += 1
        self._queue.append(queued)
        self._pending += 1
        self._kick()
        return d

    def close(self) -> Deferred[None]:
        """Refuse new writes; fire once every queued write is done."""
        self._closing = True
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        self._kick()
        return waiter

    def _kick(self) -> None:
        """Start batches while writes are queued and none runs.

        A loop rather than recursion: with an inline runner a batch finishes
        (and its callers queue more writes) inside ``self._run``.
        """
        if self._kicking:
            return
        self._kicking = True
        try:
            while self._queue and not self._busy:
                self._cohort = None  # later writes wait for a later batch
                batch: list[_Queued] = []
                while self._queue and len(batch) < self._max_batch:
                    queued = self._queue.popleft()
                    if queued.deferred.called:  # timed out or cancelled while queued
                        self._settle(queued)
                        continue
                    batch.append(queued)
                if not batch:
                    continue
                self._busy = True
                writes = cast(list[_W], [queued.write for queued in batch])
                self._run("write_batch", self._commit, writes).addBoth(self._batch_done, batch)
        finally:
            self._kicking = False
        if not self._busy and not self._queue and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _batch_done(self, result: list[Outcome] | Failure, batch: list[_Queued]) -> None:
        """Deliver each write's outcome (its batch has committed, or failed)."""
        if isinstance(result, Failure):
            outcomes: list[Outcome] = [(False, result.value)] * len(batch)
        else:
            outcomes = result
        for queued, (ok, value) in zip(batch, outcomes, strict=True):
            self._settle(queued)
            if queued.deferred.called:
                continue
            if ok:
                queued.deferred.callback(value)
            else:
                assert isinstance(value, BaseException)
                queued.deferred.errback(value)
        self._busy = False
        self._kick()

    def _settle(self, queued: _Queued) -> None:
        """Account for a write that left: its slot and its cohort's timer."""
        self._pending -= 1
        cohort = queued.cohort
        cohort.unresolved -= 1
        if cohort.unresolved == 0 and cohort.timer is not None:
            if cohort.timer.active():
                cohort.timer.cancel()
            cohort.timer = None

    def _expire(self, cohort: _Cohort) -> None:
        """Fail the writes of ``cohort`` past their deadline; wait for the next one."""
        cohort.timer = None
        now = self._clock.seconds()
        waiting: list[_Queued] = []
        for queued in cohort.writes:
            if queued.deferred.called:
                continue
            if queued.deadline <= now:
                queued.deferred.errback(
                    StorageUnavailable(
                        f"{self._name} {queued.operation} took more than {self._timeout} s"
                    )
                )
            else:
                waiting.append(queued)
        cohort.writes = waiting
        if waiting:  # in submit order, so the first deadline is the earliest
            cohort.timer = self._clock.callLater(waiting[0].deadline - now, self._expire, cohort)
