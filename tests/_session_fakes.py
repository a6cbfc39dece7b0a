"""Test doubles for session and WebSocket tests: a recording sender, metrics,
storage wrappers that fail or hold their answers, and a ``Node`` builder."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from pushtwisted.config import Config
from pushtwisted.errors import StorageUnavailable
from pushtwisted.node import Node
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import LocalRouter
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.tokens import EndpointCrypto, generate_key

__all__ = [
    "RecordingSender",
    "RecordingMetrics",
    "FailingStorage",
    "HeldCall",
    "HoldingStorage",
    "make_node",
]


class RecordingSender:
    """A ``Sender`` that records every message and close, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.is_open = True

    def send_text(self, text: str) -> bool:
        """Record ``text``; False once closed."""
        if not self.is_open:
            return False
        self.events.append(("text", text))
        return True

    def close(self, code: int, reason: str) -> None:
        """Record the close; later sends return False."""
        self.events.append(("close", (code, reason)))
        self.is_open = False

    @property
    def texts(self) -> list[str]:
        """Every text sent, in order."""
        return [e[1] for e in self.events if e[0] == "text"]  # type: ignore[misc]

    @property
    def replies(self) -> list[Any]:
        """Every text sent, parsed as JSON."""
        return [json.loads(t) for t in self.texts]

    @property
    def closes(self) -> list[tuple[int, str]]:
        """Every close call as ``(code, reason)``."""
        return [e[1] for e in self.events if e[0] == "close"]  # type: ignore[misc]

    def clear(self) -> None:
        """Forget what was recorded (the open/closed flag stays)."""
        self.events.clear()


class RecordingMetrics:
    """A ``Metrics`` that sums counters (by name, and by name plus labels)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.labelled: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, float] = {}

    def increment(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to ``name``."""
        self.counts[name] += int(value)
        self.labelled[(name, tuple(sorted(labels.items())))] += int(value)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Remember the last value of ``name``."""
        self.gauges[name] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Ignore observations."""


class FailingStorage:
    """Wraps a storage; the named methods fail with ``error`` (default StorageUnavailable)."""

    def __init__(
        self, inner: MemoryStorage, failing: Iterable[str], error: Exception | None = None
    ) -> None:
        self.inner = inner
        self.failing = set(failing)
        self.error = error
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            self.calls.append(name)
            if name in self.failing:
                return fail(self.error or StorageUnavailable(f"{name}: backend down"))
            result: Deferred[Any] = method(*args, **kwargs)
            return result

        return call


@dataclass
class HeldCall:
    """A storage call whose answer is given by hand."""

    name: str
    run: Callable[[], Deferred[Any]]
    deferred: Deferred[Any] = field(default_factory=Deferred)

    def release(self) -> None:
        """Answer with what the wrapped storage answers now."""
        self.run().chainDeferred(self.deferred)

    def fail(self, error: Exception | None = None) -> None:
        """Answer with a failure."""
        self.deferred.errback(error or StorageUnavailable(f"{self.name}: backend down"))


class HoldingStorage:
    """Wraps a storage; calls to the named methods wait until released by hand."""

    def __init__(self, inner: MemoryStorage, held: Iterable[str]) -> None:
        self.inner = inner
        self.held = set(held)
        self.pending: list[HeldCall] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in self.held:
            return method

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            held = HeldCall(name, lambda: method(*args, **kwargs))
            self.pending.append(held)
            return held.deferred

        return call

    def next(self) -> HeldCall:
        """Return the oldest call still waiting (removing it from ``pending``)."""
        return self.pending.pop(0)


def make_node(
    *,
    config: Config | None = None,
    storage: Any = None,
    clock: Clock | None = None,
    metrics: Any = None,
) -> Node:
    """Build a ``Node`` for tests (memory storage, a fresh key, a Clock)."""
    clock = clock or Clock()
    registry: ClientRegistry[Any] = ClientRegistry()
    return Node(
        config=config or Config(),
        storage=storage if storage is not None else MemoryStorage(clock),
        registry=registry,
        router=LocalRouter(registry),
        crypto=EndpointCrypto([generate_key()]),
        clock=clock,
        metrics=metrics if metrics is not None else RecordingMetrics(),
    )
