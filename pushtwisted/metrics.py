"""The metrics seam: the ``Metrics`` protocol and its null object.

Domain code (session, endpoint, router, storage pool) reports events by name
through an injected ``Metrics``.  The names, and the Prometheus metric each
one feeds, are listed in ``pushtwisted.prometheus``, whose
``PrometheusMetrics`` is the implementation a running node uses.  This module
imports no metrics library, so the domain layer stays free of one.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Metrics", "NullMetrics"]


class Metrics(Protocol):
    """Where pushtwisted reports what it does."""

    def increment(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to the counter ``name``."""

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Set the gauge ``name`` to ``value``."""

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (a latency in seconds, a size) for ``name``."""


class NullMetrics:
    """A ``Metrics`` that records nothing."""

    def increment(self, name: str, value: float = 1, **labels: str) -> None:
        """Do nothing."""

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Do nothing."""

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Do nothing."""
