"""A pushtwisted node plus a GC probe, for measuring full-collection pauses.

The product exposes no way to force a collection (that would be a denial of
service on a public port), so this tool builds the real service tree with
``pushtwisted.tap.build_service`` (memory backend, and the collector policy
``twistd simplepush`` starts after start-up, ``pushtwisted.collector``) and
adds a private probe listener: ``GET /`` runs ``gc.collect()`` three times
and answers ``{"max_pause_ms": ..., "pauses_ms": [...], ...}``, the shape
``python -m bench run --gc-probe URL`` reads, with also the longest
collection CPython ran per generation since start-up (the periodic ones
included), the objects the collector tracks outside the permanent
generation and their 20 most common types, the frozen ones, and
``frozen_garbage``: what one collection of everything, frozen objects
included, then finds unreachable (cycles that only the collector could
have freed; it should stay near 0 after any number of connections came and
went).

Usage (loopback only)::

    taskset -c 0 python -m bench.gc_server WS_PORT HTTP_PORT PROBE_PORT &
    python -m bench run --scenario connect --devices 19500 --hold 3 \\
        --target ws://127.0.0.1:WS_PORT/ --server-pid $! --gen-cpus 1 \\
        --gc-probe http://127.0.0.1:PROBE_PORT/
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from pushtwisted.config import ClientConfig, Config, EndpointConfig, StorageConfig, WebSocketConfig
from pushtwisted.tap import _after_startup, build_service


class _Pauses:
    """The longest collection CPython ran, per generation, since start-up (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            took = (time.perf_counter() - self._started) * 1000
            generation = info["generation"]
            self.longest[generation] = max(self.longest[generation], took)


class GcProbe(Resource):
    """``GET /``: time three full collections and report the longest."""

    isLeaf = True

    def __init__(self, registry: Any, pauses: _Pauses) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._pauses = pauses

    def render_GET(self, request: Any) -> bytes:
        seen = [round(p, 2) for p in self._pauses.longest]
        pauses = []
        for _ in range(3):
            started = time.perf_counter()
            gc.collect()
            pauses.append((time.perf_counter() - started) * 1000)
        tracked = gc.get_objects()
        types = collections.Counter(type(o).__qualname__ for o in tracked)
        frozen = gc.get_freeze_count()
        del tracked
        # Garbage among the frozen objects, which no collection frees: cycles
        # left by objects that lived past a freeze.  Walks everything (slow).
        gc.unfreeze()
        frozen_garbage = gc.collect()
        gc.freeze()
        body = {
            "max_pause_ms": round(max(pauses), 2),
            "pauses_ms": [round(p, 2) for p in pauses],
            "longest_by_generation_ms": seen,
            "objects": sum(types.values()),
            "frozen": frozen,
            "frozen_garbage": frozen_garbage,
            "clients": len(self._registry),
            "types": dict(types.most_common(20)),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def main(argv: list[str]) -> None:
    ws_port, http_port, probe_port = (int(x) for x in argv[:3])
    config = dataclasses.replace(
        Config(),
        websocket=WebSocketConfig(listen=f"tcp:{ws_port}:interface=127.0.0.1", backlog=4096),
        endpoint=EndpointConfig(
            listen=f"tcp:{http_port}:interface=127.0.0.1",
            public_url=f"http://127.0.0.1:{http_port}",
            backlog=4096,
        ),
        client=ClientConfig(hello_timeout=60, min_ping_interval=0, max_messages_per_second=0),
        storage=StorageConfig(backend="memory", path=tempfile.mkdtemp(prefix="pushtwisted-gc-")),
    )
    service = build_service(config, reactor)
    service.startService()
    pauses = _Pauses()
    probe = Site(GcProbe(service.node.registry, pauses))  # type: ignore[no-untyped-call]
    reactor.listenTCP(probe_port, probe, interface="127.0.0.1")  # type: ignore[arg-type]
    _after_startup(reactor, 0)  # type: ignore[arg-type]  # what twistd simplepush runs
    print("ready", os.getpid(), flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
