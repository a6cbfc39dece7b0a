"""``BucketTimer``: many timeouts on few reactor timers, each cancelled in O(1).

Autobahn runs every connection's handshake, close and auto-ping timeouts on
a txaio "batched timer".  txaio's wraps every call in a lambda (a function,
a closure tuple and three cells per connection, for the five-minute
auto-ping of every idle socket) and removes a cancelled call from its
one-second bucket with ``list.remove``, a scan of up to the thousands of
connections opened in that second.  ``pushtwisted._autobahn_tuning``'s
``LeanServerFactory`` gives Autobahn this one instead.

Calls are grouped into whole-second buckets, one reactor timer per bucket.
A call runs at the end of the second in which it falls due, never before
its delay: a batched timer may fire late, never early (Autobahn's 1 s close
handshake timeout must give the peer at least that second).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from types import MethodType
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pushtwisted.logs import logger

__all__ = ["BucketTimer"]

_log = logger()


class _BucketCall:
    """A call due in one bucket of a ``BucketTimer``; ``cancel()`` drops it.

    A bound method is kept as its function and instance: one object less
    per pending call (every open connection has one, its auto-ping).
    """

    __slots__ = ("_timer", "_due", "_func", "_self")

    def __init__(self, timer: BucketTimer, due: int, func: Callable[..., object]) -> None:
        self._timer: BucketTimer | None = timer
        self._due = due
        if isinstance(func, MethodType):
            self._func: Callable[..., object] = func.__func__
            self._self: object = func.__self__
        else:
            self._func = func
            self._self = _NO_SELF

    def __call__(self) -> object:
        if self._self is _NO_SELF:
            return self._func()
        return self._func(self._self)

    def cancel(self) -> None:
        """Forget the call (no error when it already ran or was cancelled)."""
        if self._timer is not None:
            self._timer._remove(self._due, self)
            self._timer = None


_NO_SELF = object()


class BucketTimer:
    """Timeouts grouped into whole-second buckets, one reactor timer per bucket.

    The same contract as txaio's ``IBatchedTimer`` (``call_later`` returns
    an object with ``cancel``), which Autobahn uses for per-connection
    timeouts, with O(1) cancel and no closure per call.  A bucket's calls run
    in chunks of ``chunk_size``, spread over ``spread`` seconds, so a second
    in which thousands of sockets connected does not stall the reactor five
    minutes later when all their auto-pings fall due.

    :param clock: where the bucket timers run (the factory's reactor).
    """

    def __init__(self, clock: IReactorTime, chunk_size: int = 1000, spread: float = 0.2) -> None:
        self._clock = clock
        self._chunk_size = chunk_size
        self._spread = spread
        self._buckets: dict[int, tuple[IDelayedCall, dict[_BucketCall, None]]] = {}

    def call_later(
        self, delay: float, func: Callable[..., object], *args: Any, **kwargs: Any
    ) -> _BucketCall:
        """Call ``func(*args, **kwargs)`` at the first whole second ``delay`` seconds from now.

        Never earlier than ``delay`` (the due time is rounded up); up to a
        second later, plus the ``spread`` of a crowded bucket.
        """
        if args or kwargs:
            func = partial(func, *args, **kwargs)
        now = self._clock.seconds()
        due = math.ceil(now + delay)
        bucket = self._buckets.get(due)
        if bucket is None:
            timer = self._clock.callLater(max(0.0, due - now), self._run_bucket, due)
            bucket = self._buckets[due] = (timer, {})
        call = _BucketCall(self, due, func)
        bucket[1][call] = None
        return call

    def _remove(self, due: int, call: _BucketCall) -> None:
        bucket = self._buckets.get(due)
        if bucket is not None:
            bucket[1].pop(call, None)
            if not bucket[1]:
                del self._buckets[due]
                bucket[0].cancel()

    def _run_bucket(self, due: int) -> None:
        _, calls = self._buckets.pop(due)
        self._run_chunk(list(calls), 0)

    def _run_chunk(self, calls: list[_BucketCall], start: int) -> None:
        end = start + self._chunk_size
        for call in calls[start:end]:
            if call._timer is None:
                continue  # cancelled after its bucket started
            call._timer = None
            try:
                call()
            except Exception:
                _log.failure("timeout handler failed")
        if end < len(calls):
            chunks = -(-len(calls) // self._chunk_size)
            self._clock.callLater(self._spread / chunks, self._run_chunk, calls, end)
