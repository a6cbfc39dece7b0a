"""Micro-benchmark of the WebSocket delivery and ack path, Autobahn included.

Opens C connections (real ``PushServerProtocol`` objects from
``PushServerFactory``, memory backend, Prometheus metrics, on a transport
that drops what it is given) and then runs N notification cycles, round
robin over the connections, as the saturated ``notify`` scenario does:

1. the endpoint's part that is not HTTP: ``storage.update`` and
   ``router.deliver`` (the session sends the notification: outbox, JSON,
   WebSocket framing, the retry timer);
2. the client's ack arrives as one masked frame: Autobahn's receive path
   (frame parsing, unmasking), the session's message pump, JSON decoding,
   ``storage.ack`` and the outbox.

Timers run on a real (not running) reactor whose ``runUntilCurrent`` is
called every 100 cycles, as its loop would, so ``callLater`` and cancels
cost what they cost in production.  The figure is process CPU time per
cycle, the best of the repeats (other processes on a busy machine disturb
it least).

    python -m bench.ws_path [CONNECTIONS] [CYCLES] [REPEATS]
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import struct
import sys
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.selectreactor import SelectReactor

from pushtwisted import _autobahn_tuning
from pushtwisted.config import ClientConfig, Config, WebSocketConfig
from pushtwisted.node import Node
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import LocalRouter
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.tokens import EndpointCrypto, generate_key
from pushtwisted.websocket import PushServerFactory

__all__ = ["main"]

_HEAD = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Transport:
    """A TCP-like transport that keeps nothing (what the kernel takes at once)."""

    __slots__ = ("peer", "disconnecting", "written")

    def __init__(self, peer: IPv4Address) -> None:
        self.peer = peer
        self.disconnecting = False
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def writeSequence(self, seq: list[bytes]) -> None:
        self.written += 1

    def loseConnection(self) -> None:
        self.disconnecting = True

    abortConnection = loseConnection

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.peer

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def _frame(payload: bytes, mask: bytes) -> bytes:
    """One masked client text frame."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + mask + masked


def _setup(connections: int) -> tuple[Any, list[tuple[Any, str, str]], SelectReactor]:
    reactor = SelectReactor()  # type: ignore[no-untyped-call]
    registry: ClientRegistry[Any] = ClientRegistry()
    config = dataclasses.replace(
        Config(),
        client=ClientConfig(min_ping_interval=0, max_messages_per_second=0),
        websocket=WebSocketConfig(),
    )
    node = Node(
        config=config,
        storage=MemoryStorage(reactor),
        registry=registry,
        crypto=EndpointCrypto([generate_key()]),
        clock=reactor,
        metrics=PrometheusMetrics(process_collectors=False),
        router=LocalRouter(registry),
    )
    factory = PushServerFactory(node)
    devices = []
    for i in range(connections):
        peer = IPv4Address("TCP", "127.0.0.1", 1024 + i)
        protocol = factory.buildProtocol(peer)
        protocol.makeConnection(_Transport(peer))
        protocol.dataReceived(_HEAD)
        uaid = os.urandom(16).hex()
        chid = os.urandom(16).hex()
        mask = os.urandom(4)
        hello = {"messageType": "hello", "uaid": uaid, "channelIDs": []}
        protocol.dataReceived(_frame(json.dumps(hello).encode(), mask))
        register = {"messageType": "register", "channelID": chid}
        protocol.dataReceived(_frame(json.dumps(register).encode(), mask))
        devices.append((protocol, uaid, chid))
    reactor.runUntilCurrent()  # drop the cancelled hello timers, as the running loop would
    return node, devices, reactor


def _run(connections: int, cycles: int) -> float:
    """Microseconds of CPU per notification cycle."""
    node, devices, reactor = _setup(connections)
    storage = node.storage
    router = node.router
    assert isinstance(router, LocalRouter)
    mask = b"\x11\x22\x33\x44"
    rounds = cycles // connections + 2
    frames = {
        chid: [
            _frame(
                json.dumps(
                    {"messageType": "ack", "updates": [{"channelID": chid, "version": v}]},
                    separators=(",", ":"),
                ).encode(),
                mask,
            )
            for v in range(1, rounds + 1)
        ]
        for _, _, chid in devices
    }
    written = sum(p.transport.written for p, _, _ in devices)
    gc.collect()
    started = time.process_time()
    for i in range(cycles):
        protocol, uaid, chid = devices[i % connections]
        version = i // connections + 1
        storage.update(uaid, chid, version, None)
        router.deliver_here(uaid, chid, version, None)
        protocol.dataReceived(frames[chid][version - 1])
        if i % 100 == 99:
            reactor.runUntilCurrent()
    elapsed = time.process_time() - started
    delivered = sum(p.transport.written for p, _, _ in devices) - written
    if delivered != cycles:
        raise SystemExit(f"{delivered} notifications written for {cycles} cycles")
    return elapsed / cycles * 1e6


def main(argv: list[str]) -> None:
    """Print the best CPU per notification cycle over the repeats."""
    connections = int(argv[0]) if argv else 2000
    cycles = int(argv[1]) if len(argv) > 1 else 40_000
    repeats = int(argv[2]) if len(argv) > 2 else 5
    _autobahn_tuning.apply()
    runs = [_run(connections, cycles) for _ in range(repeats)]
    print(
        f"ws path: {min(runs):.2f} us of CPU per notification + ack"
        f" (best of {repeats} x {cycles} over {connections} connections;"
        f" all: {', '.join(f'{r:.1f}' for r in runs)})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
