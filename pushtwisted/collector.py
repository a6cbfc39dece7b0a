"""Short full garbage collections with many connections: what survives is frozen.

CPython's full collection walks every object its collector tracks, and one
idle connection keeps about ten (Twisted's TCP transport, its socket, a
bound ``fileno`` and a write buffer list; the protocol, its session and its
auto-ping call; the memory backend's records).  With 19,500 connections one
full collection stopped the reactor for ~95 ms (``bench.gc_server``), and
the pause grows with every connection.

``FreezeSurvivors`` runs on the reactor every ``interval`` seconds (1 by
default): ``gc.collect()``, then ``gc.freeze()``.  The collection walks only
what is not frozen yet, the objects allocated since the last run that are
still alive, and frees the reference cycles among them; the freeze then
moves every survivor into the permanent generation, which no collection
walks again (``gc.freeze`` is a list splice, O(1)).  So a pause, the
periodic one or one CPython starts by itself, is proportional to what one
interval allocated and kept (at the bench's ramp of ~3,600 connections/s,
about 36,000 objects), not to what the process holds.

The price: cyclic garbage among frozen objects is never collected.  Frozen
objects are still freed by reference counting, so whatever lives past one
run and then dies must die by reference counts alone, with no cycle left
for the collector: a closed connection lets go of its session
(``PushServerProtocol.connectionLost``), Twisted's TCP transport lets go of
its protocol, the outbox's retry timer and Autobahn's timeouts clear their
reference when they fire or are cancelled.  ``tests/test_collector.py``
checks that a connection's life, however it ends, leaves nothing for the
collector; ``bench.gc_server``'s probe reports the garbage found among
frozen objects after a run.

A path nobody thought of could still leave a cycle behind, and it would
then stay for the life of the process.  So every ``full_interval`` seconds
(``[server] full_gc_interval``, an hour by default; 0 = never) a run first
collects as usual, then unfreezes everything and collects again: that
second collection walks the whole heap once (the long pause the freezing
avoids, once an hour instead of at every full collection) and frees any
cycle left among formerly frozen objects.  When it finds any it logs a
warning with their number: that is a leak to fix.

With the runs collecting every second, CPython's own young-generation
collections (every 700 net allocations by default) mostly walk objects that
are about to die anyway: a connection that lives a tenth of a second is
walked several times, and promoted, on its way out.  ``young`` (10,000 in
``tap``: ``DEFAULT_YOUNG``) raises that threshold while the runs go on
(``stop()`` puts the old one back).  One young collection then walks at
most ~10,000 objects (~3-5 ms here), and the runs still free every cycle
within a second.  In the churn bench (100 devices reconnecting ~1,100 times
a second) the collector's time went from ~490 ms to ~130 ms in a run of
~10 s of server CPU (``gc.callbacks`` timing in the server process).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from pushtwisted.logs import logger

__all__ = ["DEFAULT_FULL_INTERVAL", "DEFAULT_INTERVAL", "DEFAULT_YOUNG", "FreezeSurvivors"]

#: Seconds between two runs.
DEFAULT_INTERVAL = 1.0
#: Seconds between two runs that also walk the frozen objects.
DEFAULT_FULL_INTERVAL = 3600.0
#: Net allocations between two young-generation collections while the runs go on.
DEFAULT_YOUNG = 10_000


class FreezeSurvivors:
    """Collect what is not frozen, then freeze the survivors, every ``interval`` seconds.

    :param clock: the reactor the runs are scheduled on.
    :param full_interval: seconds between runs that also collect the frozen
        objects (see the module); 0 or less: never.
    :param collect: ``gc.collect`` (tests pass a recorder).
    :param freeze: ``gc.freeze`` (likewise).
    :param unfreeze: ``gc.unfreeze`` (likewise).
    :param young: the young generation's threshold from ``start()`` to
        ``stop()``; None leaves the thresholds alone.
    :param set_threshold: ``gc.set_threshold`` (likewise).
    :ivar longest: the longest run so far, in seconds (full runs included).
    :ivar frozen_garbage: objects the full runs found unreachable among the
        formerly frozen ones, in all (0 unless some path leaks a cycle).
    """

    log = logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
        *,
        full_interval: float = DEFAULT_FULL_INTERVAL,
        collect: Callable[[], int] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        young: int | None = None,
        set_threshold: Callable[..., None] = gc.set_threshold,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._full_interval = full_interval
        self._collect = collect
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._young = young
        self._set_threshold = set_threshold
        #: The thresholds to put back at ``stop()``, while ``young`` is in force.
        self._previous: tuple[int, ...] | None = None
        self._loop = LoopingCall(self.run)
        self._loop.clock = clock
        self._last_full = clock.seconds()
        self.longest = 0.0
        self.frozen_garbage = 0

    def start(self) -> None:
        """Run now, then every ``interval`` seconds until ``stop()``."""
        if self._young is not None and self._previous is None:
            self._previous = gc.get_threshold()
            self._set_threshold(self._young, *self._previous[1:])
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        """Stop the runs (nothing is unfrozen) and put the thresholds back."""
        if self._loop.running:
            self._loop.stop()
        if self._previous is not None:
            self._set_threshold(*self._previous)
            self._previous = None

    def run(self) -> None:
        """Collect what is not frozen (and, when due, what is), then freeze what survived."""
        started = time.perf_counter()
        self._collect()
        now = self._clock.seconds()
        if self._full_interval > 0 and now - self._last_full >= self._full_interval:
            self._last_full = now
            self._unfreeze()
            found = self._collect()
            self.frozen_garbage += found
            if found:
                self.log.warn(
                    "full collection freed {found} objects held in reference cycles that"
                    " had been frozen: some path leaks cycles",
                    found=found,
                )
            else:
                self.log.info(
                    "full collection: no cycle among frozen objects ({ms:.1f} ms)",
                    ms=(time.perf_counter() - started) * 1000,
                )
        self._freeze()
        took = time.perf_counter() - started
        if took > self.longest:
            self.longest = took
            self.log.debug("longest collect and freeze so far: {ms:.1f} ms", ms=took * 1000)
