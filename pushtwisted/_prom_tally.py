"""Tallies of ``PrometheusMetrics``: counts kept without ``prometheus_client``'s lock.

``prometheus_client`` takes a lock for every counter ``inc`` and histogram
``observe``.  ``PrometheusMetrics`` keeps what the reactor thread reports in
plain objects instead, one per labelled child, and a ``Folder`` registered
first on the registry adds them to the children when the registry is
collected on that same thread:

- ``Tally``: the increments of one counter child, added with one ``inc``;
- ``Observations``: the per-bucket counts and the sum of one histogram
  child, added to the child's bucket and sum values (the values its own
  ``observe`` adds to; the exposition is the same as if each observation
  had been made there);
- ``Latest``: the last value set on one gauge child, set on it once.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

__all__ = ["Folded", "Folder", "Latest", "Observations", "Tally"]


class Folded(Protocol):
    """What a ``Folder`` folds."""

    def fold(self) -> None:
        """Add what was kept to the metric, and start again from zero."""


class Tally:
    """Increments of one labelled counter not yet added to it."""

    __slots__ = ("inc", "value")

    def __init__(self, inc: Callable[[float], object]) -> None:
        self.inc = inc
        self.value: float = 0

    def fold(self) -> None:
        """Add the tally to the counter."""
        value, self.value = self.value, 0
        if value:
            self.inc(value)


class Latest:
    """The last value set on one labelled gauge and not yet set on it (``None``: none)."""

    __slots__ = ("set", "value")

    def __init__(self, set_: Callable[[float], object]) -> None:
        self.set = set_
        self.value: float | None = None

    def fold(self) -> None:
        """Set the gauge to the last value, if one was set since the last fold."""
        value, self.value = self.value, None
        if value is not None:
            self.set(value)


class Observations:
    """Observations of one labelled histogram not yet added to it.

    ``add`` is what the child's ``observe`` does (the first bucket whose
    upper bound is at least the value, and the sum), into plain numbers.

    :raises TypeError: when ``child`` lacks the bucket and sum values of
        ``prometheus_client``'s histogram children (then do not tally it).
    """

    __slots__ = ("_bounds", "_buckets", "_observe", "_sum", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        bounds = getattr(child, "_upper_bounds", None)
        buckets = getattr(child, "_buckets", None)
        total = getattr(child, "_sum", None)
        if not (isinstance(bounds, list) and isinstance(buckets, list)) or total is None:
            raise TypeError("not a prometheus_client histogram child")
        if len(bounds) != len(buckets) or bounds != sorted(bounds):
            raise TypeError("unexpected histogram buckets")
        self._bounds = tuple(bounds)
        self._buckets = buckets
        self._sum = total
        self._observe = child.observe
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def add(self, value: float) -> None:
        """Count one observation."""
        if value != value:  # NaN: the child's own rules apply
            self._observe(value)
            return
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.total += value

    def fold(self) -> None:
        """Add the counts and the sum to the histogram."""
        counts, total = self.counts, self.total
        if not any(counts):
            return
        self.counts, self.total = [0] * len(counts), 0.0
        self._sum.inc(total)
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class Folder:
    """A collector with no metrics of its own: collecting folds the tallies first.

    :param owner: the thread whose tallies these are; a collection on any
        other thread folds nothing.
    """

    def __init__(self, owner: int, folded: list[Folded]) -> None:
        self._owner = owner
        self._folded = folded

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if threading.get_ident() == self._owner:
            for tally in self._folded:
                tally.fold()
        return iter(())
