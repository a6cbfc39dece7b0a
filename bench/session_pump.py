"""Micro-benchmark of ``Session``'s message pump: pings and acks through one session.

Runs N ``ping`` (and N ``ack``) messages through a ready ``Session`` on a
sender that drops its text, with ``MemoryStorage`` and a ``task.Clock``
(no reactor, no socket): the per-message cost of the session itself.  Each
figure is measured with ``ClientConnection._pump`` as shipped and with the plain form
(every message run under ``Deferred.fromCoroutine``), alternating; the best
of the repeats in process CPU time is printed, which other processes on a
busy machine disturb least.

    python -m bench.session_pump [N] [REPEATS]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from pushtwisted.config import ClientConfig, Config
from pushtwisted.connection import ClientConnection
from pushtwisted.metrics import NullMetrics
from pushtwisted.node import Node
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import LocalRouter
from pushtwisted.session import Session
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.tokens import EndpointCrypto, generate_key

__all__ = ["main"]

_UAID = "9f3a2a6c2d3b4f0e8a1b2c3d4e5f6a7b"
_CHID = "0123456789abcdef0123456789abcdef"


class _Sender:
    def send_text(self, text: str) -> bool:
        return True

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")


def _plain_pump(self: ClientConnection, text: str) -> None:
    """The pump without the shortcut: one Deferred per message."""
    self._busy = True
    d = Deferred.fromCoroutine(self._dispatch(text))
    d.addErrback(self._crashed)
    d.addCallback(self._resume)


def _session() -> Session:
    clock = Clock()
    registry: ClientRegistry[Any] = ClientRegistry()
    client = ClientConfig(min_ping_interval=0, max_messages_per_second=0, retry_interval=0)
    node = Node(
        config=Config(client=client),
        storage=MemoryStorage(clock),
        registry=registry,
        crypto=EndpointCrypto([generate_key()]),
        clock=clock,
        metrics=NullMetrics(),
        router=LocalRouter(registry),
    )
    session = Session(_Sender(), node)
    session.opened()
    session.receive(json.dumps({"messageType": "hello", "uaid": _UAID, "channelIDs": []}))
    session.receive(json.dumps({"messageType": "register", "channelID": _CHID}))
    return session


def _time(n: int, messages: list[str]) -> float:
    """Microseconds per message for ``n`` messages cycled from ``messages``."""
    session = _session()
    count = len(messages)
    started = time.process_time()
    for i in range(n):
        session.receive(messages[i % count])
    return (time.process_time() - started) / n * 1e6


def _measure(pump: Callable[[ClientConnection, str], None], n: int, messages: list[str]) -> float:
    original = ClientConnection._pump
    ClientConnection._pump = pump  # type: ignore[method-assign,assignment]
    try:
        return _time(n, messages)
    finally:
        ClientConnection._pump = original  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    """Print the best cost per message with and without the pump's shortcut."""
    n = int(argv[0]) if argv else 50_000
    repeats = int(argv[1]) if len(argv) > 1 else 7
    ping = [json.dumps({"messageType": "ping"})]
    ack = [
        json.dumps({"messageType": "ack", "updates": [{"channelID": _CHID, "version": v}]})
        for v in range(1, 4)
    ]
    for name, messages in (("ping", ping), ("ack", ack)):
        shipped: list[float] = []
        plain: list[float] = []
        for _ in range(repeats):
            shipped.append(_measure(ClientConnection._pump, n, messages))
            plain.append(_measure(_plain_pump, n, messages))
        a, b = min(shipped), min(plain)
        print(
            f"{name}: pump {a:.2f} us, plain {b:.2f} us of CPU per message"
            f" ({(b - a) / b:.0%} saved; best of {repeats} x {n})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
