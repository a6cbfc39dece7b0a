"""Test doubles for pushtwisted's seams, for its tests and for code built on it.

Like ``treq.testing``: public, kept next to the code whose protocols they
stand for, and checked against those protocols by mypy (the
``TYPE_CHECKING`` block at the end).  Nothing in the package imports this
module.  ``pushtwisted.testing.cluster`` has the cluster's doubles (fake
nodes behind ``StubTreq``), which need the HTTP stack.

- ``RecordingMetrics``: a ``Metrics`` that records every call;
- ``RecordingSender``: a session's ``Sender`` that records what it sends;
- ``FakeSession``: a connected session as routers and the registry see it;
- ``FailingStorage``, ``HoldingStorage`` (with ``HeldCall``): a ``Storage``
  wrapped so that chosen methods fail, or wait until released by hand;
- ``FakeRouter``: a ``Router`` that records calls and answers as told;
- ``make_node``: a ``Node`` on memory storage and a ``task.Clock``;
- ``ListeningReactor``: a ``MemoryReactorClock`` whose TCP ports report the
  interface they were asked for.
- ``inline_run``, ``inline_submit``: a ``Runner`` and a ``BatchRunner`` that
  run the call on the spot (no threads, no reactor turn).

``pushtwisted.testing.memcache`` has ``FakeMemcache``, an in-process
memcached for the memcached backends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from pushtwisted.config import Config
from pushtwisted.metrics import Metrics
from pushtwisted.node import Node
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import HelloClaim, LocalRouter, Router
from pushtwisted.storage.interface import Storage, StoredMessage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing.storage import FailingStorage, HeldCall, HoldingStorage
from pushtwisted.tokens import EndpointCrypto, generate_key

__all__ = [
    "FailingStorage",
    "FakeRouter",
    "FakeSession",
    "HeldCall",
    "HoldingStorage",
    "ListeningReactor",
    "RecordingMetrics",
    "RecordingSender",
    "inline_run",
    "inline_submit",
    "make_node",
]


class RecordingMetrics:
    """A ``Metrics`` that records every call, in order, as ``(kind, name, value, labels)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float, dict[str, str]]] = []

    def increment(self, name: str, value: float = 1, **labels: str) -> None:
        """Record an increment."""
        self.events.append(("increment", name, value, labels))

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Record a gauge value."""
        self.events.append(("gauge", name, value, labels))

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record an observation."""
        self.events.append(("observe", name, value, labels))

    def count(self, name: str, **labels: str) -> float:
        """Return the sum of the increments of ``name`` made with exactly ``labels``."""
        return sum(
            v
            for kind, n, v, got in self.events
            if kind == "increment" and n == name and got == labels
        )

    def total(self, name: str) -> float:
        """Return the sum of the increments of ``name``, whatever their labels."""
        return sum(v for kind, n, v, _ in self.events if kind == "increment" and n == name)

    def gauges(self, name: str) -> list[float]:
        """Return every value ``name`` was set to, in order."""
        return [v for kind, n, v, _ in self.events if kind == "gauge" and n == name]

    def observations(self, name: str) -> list[tuple[float, dict[str, str]]]:
        """Return every observation of ``name`` as ``(value, labels)``, in order."""
        return [
            (v, labels) for kind, n, v, labels in self.events if kind == "observe" and n == name
        ]


class RecordingSender:
    """A session's ``Sender`` that records every message and close, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
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
        return [value for kind, value in self.events if kind == "text"]

    @property
    def replies(self) -> list[Any]:
        """Every text sent, parsed as JSON."""
        return [json.loads(text) for text in self.texts]

    @property
    def closes(self) -> list[tuple[int, str]]:
        """Every close call as ``(code, reason)``."""
        return [value for kind, value in self.events if kind == "close"]

    def clear(self) -> None:
        """Forget what was recorded (the open/closed flag stays)."""
        self.events.clear()


class FakeSession:
    """A connected session as the registry, the routers and the router listener see it.

    :param connected_at: its ``connected_at`` (ms), or None before its hello.
    :param accept: what ``deliver`` and ``deliver_message`` answer.
    :ivar explode: make ``deliver``, ``deliver_message`` and ``check_storage`` raise.
    :ivar delivered: every ``deliver`` call's arguments, accepted or not.
    :ivar messages: every message given to ``deliver_message``, accepted or not.
    """

    def __init__(self, connected_at: int | None = 1000, *, accept: bool = True) -> None:
        self.connected_at = connected_at
        self.accept = accept
        self.explode = False
        self.delivered: list[tuple[str, int, str | None]] = []
        self.messages: list[StoredMessage] = []
        self.checks = 0
        self.check_result: Deferred[None] = succeed(None)
        self.replaced_count = 0
        self.shutdowns = 0

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        """Record the update; answer ``accept``."""
        if self.explode:
            raise RuntimeError("boom")
        self.delivered.append((channel_id, version, data))
        return self.accept

    def deliver_message(self, message: StoredMessage) -> bool:
        """Record the WebPush message; answer ``accept``."""
        if self.explode:
            raise RuntimeError("boom")
        self.messages.append(message)
        return self.accept

    def check_storage(self) -> Deferred[None]:
        """Count the call; answer ``check_result``."""
        if self.explode:
            raise RuntimeError("boom")
        self.checks += 1
        return self.check_result

    def replaced(self) -> None:
        """Count the call."""
        self.replaced_count += 1

    def shutdown(self) -> None:
        """Count the call."""
        self.shutdowns += 1


class FakeRouter:
    """A ``Router`` that records every call and answers as told.

    :ivar answer: what ``deliver`` and ``deliver_message`` answer: a bool, a
        Deferred (returned as is) or an exception (raised at once).
    :ivar hello_answer: what ``on_hello`` returns; None: done at once.
    :ivar on_deliver: called at each ``deliver`` and ``deliver_message``,
        before it answers.
    :ivar messages: every ``deliver_message`` call as ``(uaid, message)``.
    """

    def __init__(self) -> None:
        self.answer: bool | Deferred[bool] | Exception = True
        self.hello_answer: Deferred[None] | None = None
        self.on_deliver: Callable[[], object] | None = None
        self.delivered: list[tuple[str, str, int, str | None]] = []
        self.messages: list[tuple[str, StoredMessage]] = []
        self.hellos: list[tuple[str, int]] = []
        #: ``fresh`` of each ``on_hello``, in the order of ``hellos``.
        self.fresh_hellos: list[bool] = []
        self.disconnects: list[tuple[str, int]] = []

    def deliver(self, uaid: str, channel_id: str, version: int, data: str | None) -> Deferred[bool]:
        """Record the call; answer ``answer``."""
        self.delivered.append((uaid, channel_id, version, data))
        return self._answer()

    def deliver_message(self, uaid: str, message: StoredMessage) -> Deferred[bool]:
        """Record the call; answer ``answer``."""
        self.messages.append((uaid, message))
        return self._answer()

    def _answer(self) -> Deferred[bool]:
        if self.on_deliver is not None:
            self.on_deliver()
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, Deferred):
            return self.answer
        return succeed(self.answer)

    def on_hello(self, uaid: str, connected_at: int, fresh: bool = False) -> Deferred[None]:
        """Record the call (and whether the UAID was ``fresh``); answer ``hello_answer``."""
        self.hellos.append((uaid, connected_at))
        self.fresh_hellos.append(fresh)
        return self.hello_answer if self.hello_answer is not None else succeed(None)

    def on_disconnect(self, uaid: str, connected_at: int) -> None:
        """Record the call."""
        self.disconnects.append((uaid, connected_at))

    def claim(self, connected_at: int) -> HelloClaim:
        """A claim that is ``on_hello`` (recorded and answered as above)."""
        return HelloClaim(self, connected_at)


@implementer(IListeningPort)
class _Port:
    """A listening port that only knows its address."""

    def __init__(self, address: IPv4Address | IPv6Address) -> None:
        self.address = address
        self.listening = True

    def startListening(self) -> None:
        """Listen (again)."""
        self.listening = True

    def stopListening(self) -> None:
        """Stop listening."""
        self.listening = False

    def getHost(self) -> IPv4Address | IPv6Address:
        """Return the address given."""
        return self.address


class ListeningReactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` whose ``listenTCP`` ports report the interface asked for.

    (``MemoryReactorClock`` reports 0.0.0.0 for every IPv4 listener.)
    """

    def listenTCP(
        self, port: int, factory: ServerFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        """Record the call; return a port bound to ``interface`` (0.0.0.0 when empty)."""
        super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]
        if ":" in interface:
            return _Port(IPv6Address("TCP", interface, port))
        return _Port(IPv4Address("TCP", interface or "0.0.0.0", port))


def make_node(
    *,
    config: Config | None = None,
    storage: Storage | None = None,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    registry: ClientRegistry[Any] | None = None,
    router: Router | None = None,
    crypto: EndpointCrypto | None = None,
) -> Node:
    """Return a ``Node`` for tests.

    By default: the default config, ``MemoryStorage`` on ``clock`` (a new
    ``task.Clock``), a ``RecordingMetrics``, an empty registry with a
    ``LocalRouter`` over it, and a fresh token key.
    """
    clock = clock if clock is not None else Clock()
    registry = registry if registry is not None else ClientRegistry()
    return Node(
        config=config if config is not None else Config(),
        storage=storage if storage is not None else MemoryStorage(clock),
        registry=registry,
        crypto=crypto if crypto is not None else EndpointCrypto([generate_key()]),
        clock=clock,
        metrics=metrics if metrics is not None else RecordingMetrics(),
        router=router if router is not None else LocalRouter(registry),
    )


def inline_run(
    operation: str, func: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Deferred[Any]:
    """A ``Runner`` that calls ``func`` on the spot: an already fired Deferred."""
    try:
        result = func(*args, **kwargs)
    except Exception:
        return fail()
    return succeed(result)


def inline_submit(
    operation: str, executor: Callable[[list[Any]], list[tuple[bool, object]]], item: Any, /
) -> Deferred[Any]:
    """A ``BatchRunner`` that runs ``executor([item])`` on the spot: a fired Deferred."""
    ((ok, value),) = executor([item])
    if ok:
        return succeed(value)
    assert isinstance(value, BaseException)
    return fail(value)


if TYPE_CHECKING:
    # mypy checks each double against the protocol it stands for.
    from pushtwisted.connection import Sender
    from pushtwisted.registry import Replaceable
    from pushtwisted.routing import RoutedSession
    from pushtwisted.threadpool import BatchRunner, Runner

    _metrics: Metrics = RecordingMetrics()
    _sender: Sender = RecordingSender()
    _session: RoutedSession = FakeSession()
    _replaceable: Replaceable = FakeSession()
    _failing: Storage = FailingStorage(MemoryStorage())
    _holding: Storage = HoldingStorage(MemoryStorage())
    _router: Router = FakeRouter()
    _run: Runner = inline_run
    _submit: BatchRunner = inline_submit
