"""Metrics seam: the ``Metrics`` protocol and its null object.

Domain code (session, endpoint, storage pool) reports events by name through
an injected ``Metrics``; the Prometheus implementation maps each name to a
declared metric.  Calls never block and never raise.

Names used so far (counters unless noted):

- ``connections`` (gauge, via ``gauge``), ``handshakes``, ``hellos``,
  ``registers``, ``unregisters``, ``acks``, ``pings``, ``too_many_pings``,
  ``protocol_errors`` (label ``reason``)
- ``notifications_received``, ``notifications_delivered``,
  ``notifications_stored``, ``notifications_rejected`` (label ``reason``),
  ``notifications_resent``
- ``endpoint_requests`` (label ``status``), ``endpoint_latency_seconds``
  (observation, label ``status``)
- ``storage_latency_seconds`` (observation, label ``operation``),
  ``storage_queue_depth`` (gauge)
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
