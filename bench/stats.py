"""Percentiles, latency summaries, medians of runs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["percentile", "summarize", "median", "merge_counts", "LATENCY_KEYS"]

#: The keys of a latency summary, in display order (values in milliseconds).
LATENCY_KEYS = ("n", "min", "p50", "p90", "p95", "p99", "max", "mean")


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) of already sorted values, linearly interpolated.

    Same definition as numpy's default ("linear"): rank ``(n - 1) * p / 100``
    between the two nearest samples.  None for no samples.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile out of range: {p}")
    n = len(sorted_values)
    if n == 0:
        return None
    if n == 1:
        return float(sorted_values[0])
    rank = (n - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    return float(sorted_values[lo]) + (float(sorted_values[hi]) - float(sorted_values[lo])) * frac


def summarize(values_s: Iterable[float]) -> dict[str, float | int | None]:
    """Summary of latencies given in seconds, reported in milliseconds (3 decimals)."""
    vals = sorted(values_s)
    n = len(vals)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)

    return {
        "n": n,
        "min": ms(vals[0]) if n else None,
        "p50": ms(percentile(vals, 50)),
        "p90": ms(percentile(vals, 90)),
        "p95": ms(percentile(vals, 95)),
        "p99": ms(percentile(vals, 99)),
        "max": ms(vals[-1]) if n else None,
        "mean": ms(math.fsum(vals) / n) if n else None,
    }


def median(values: Iterable[float | int | None]) -> float | None:
    """Median of the values that are not None (None if there are none)."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    if len(vals) % 2:
        return vals[mid]
    return (vals[mid - 1] + vals[mid]) / 2.0


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """Add up failure-by-kind dictionaries."""
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))
