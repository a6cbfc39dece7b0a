"""Latency histograms (stored in every result) and CDF plots (``--plot``, needs matplotlib)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["histogram", "plot_latencies"]


def histogram(values_s: Iterable[float], buckets_per_decade: int = 10) -> dict[str, Any]:
    """A log-spaced histogram of latencies (seconds) from 10 µs to 100 s, in ms edges."""
    lo_exp = -5  # 10 µs
    nb = 7 * buckets_per_decade
    counts = [0] * (nb + 1)
    for v in values_s:
        if v <= 0:
            idx = 0
        else:
            idx = int((math.log10(v) - lo_exp) * buckets_per_decade)
            idx = min(max(idx, 0), nb)
        counts[idx] += 1
    edges_ms = [round(10 ** (lo_exp + i / buckets_per_decade) * 1000, 6) for i in range(nb + 1)]
    # Trim empty ends.
    first = next((i for i, c in enumerate(counts) if c), 0)
    last = max((i for i, c in enumerate(counts) if c), default=0)
    return {
        "lower_edges_ms": edges_ms[first : last + 1],
        "counts": counts[first : last + 1],
    }


def plot_latencies(series: dict[str, list[float]], title: str, path: Path) -> Path | None:
    """A latency CDF (log x) as PNG, if matplotlib is installed; None otherwise."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("bench: --plot needs matplotlib (pip install matplotlib); skipped", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, vals in series.items():
        if not vals:
            continue
        xs = sorted(v * 1000.0 for v in vals)
        n = len(xs)
        ax.plot(xs, [(i + 1) / n for i in range(n)], label=f"{label} (n={n:,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction ≤ x")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
