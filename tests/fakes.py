"""Test doubles shared by several test modules."""

from __future__ import annotations

__all__ = ["RecordingMetrics"]


class RecordingMetrics:
    """A ``Metrics`` that records every call as ``(kind, name, value, labels)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float, dict[str, str]]] = []

    def increment(self, name: str, value: float = 1, **labels: str) -> None:
        self.events.append(("increment", name, value, labels))

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self.events.append(("gauge", name, value, labels))

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.events.append(("observe", name, value, labels))

    def count(self, name: str, **labels: str) -> float:
        return sum(
            value
            for kind, n, value, got in self.events
            if kind == "increment" and n == name and got == labels
        )

    def observations(self, name: str) -> list[tuple[float, dict[str, str]]]:
        return [
            (v, labels) for kind, n, v, labels in self.events if kind == "observe" and n == name
        ]
