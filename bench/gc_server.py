"""A pushtwisted node plus a GC probe, for measuring full-collection pauses.

The product exposes no way to force a collection (that would be a denial of
service on a public port), so this tool builds the real service tree with
``pushtwisted.tap.build_service`` (memory backend, ``gc.freeze()`` after
start-up as ``twistd simplepush`` does) and adds a private probe listener:
``GET /`` runs ``gc.collect()`` three times and answers
``{"max_pause_ms": ..., "pauses_ms": [...], "objects": ..., "frozen": ...,
"clients": ..., "types": {...}}`` (the objects the collector tracks outside
the permanent generation, the frozen ones, and the 20 most common tracked
types),
the shape ``python -m bench run --gc-probe URL`` reads.

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
from pushtwisted.tap import build_service


class GcProbe(Resource):
    """``GET /``: time three full collections and report the longest."""

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        pauses = []
        for _ in range(3):
            started = time.perf_counter()
            gc.collect()
            pauses.append((time.perf_counter() - started) * 1000)
        tracked = gc.get_objects()
        types = collections.Counter(type(o).__qualname__ for o in tracked)
        body = {
            "max_pause_ms": round(max(pauses), 2),
            "pauses_ms": [round(p, 2) for p in pauses],
            "objects": len(tracked),
            "frozen": gc.get_freeze_count(),
            "clients": len(self._registry),
            "types": dict(types.most_common(20)),
        }
        del tracked
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
    probe = Site(GcProbe(service.node.registry))  # type: ignore[no-untyped-call]
    reactor.listenTCP(probe_port, probe, interface="127.0.0.1")  # type: ignore[arg-type]
    gc.collect()
    gc.freeze()
    print("ready", os.getpid(), flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
