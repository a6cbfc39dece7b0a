"""A load-generator worker process: owns a slice of the devices.

Started by the parent (``bench.group``) as ``python -m bench.worker``; reads
one JSON command per line on stdin and answers one JSON line on stdout
(``{"type": "result", "id": ..., "result": {...}}``), with
``{"type": "progress", ...}`` lines in between.  Commands:

- ``setup``: target addresses, source IPs, CPU pinning.
- ``connect``: open N devices (TCP + upgrade + hello + register), ramped.
- ``ping``: every connected device pings once.
- ``notify``: M PUTs to this worker's devices, at a fixed rate or with K in flight
  (with ``webpush``: POSTs of ``body_bytes`` each; see ``message_body``).
- ``churn``: disconnect / PUT while offline / reconnect cycles.
- ``stats``: counters; ``close``: drop all and exit.

Latency samples travel back to the parent as lists of seconds (rounded to
microseconds), so the parent computes exact percentiles over all workers.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import random
import resource
import signal
import sys
import time
from time import perf_counter
from typing import Any

from bench.client import BenchFailure, Device, HttpConn
from bench.wire import post_request, put_request

__all__ = ["ACCEPTED", "Worker", "main", "message_body", "message_seq"]

#: The statuses of an accepted PUT (SimplePush: 200, 202) or POST (WebPush: 201).
ACCEPTED = frozenset({200, 201, 202})
#: Octets at the start of a WebPush body that carry its sequence number (12
#: base64url characters, so the device reads it without decoding the rest).
_SEQ_OCTETS = 9


def message_body(seq: int, filler: bytes) -> bytes:
    """A WebPush body: ``seq`` in its first 9 octets, then ``filler`` (opaque to the server)."""
    return seq.to_bytes(_SEQ_OCTETS, "big") + filler


def message_seq(data: str) -> int:
    """The sequence number at the start of a notification's ``data`` (base64url)."""
    return int.from_bytes(base64.urlsafe_b64decode(data[:12]), "big")


def _r(xs: list[float]) -> list[float]:
    return [round(x, 6) for x in xs]


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self.loop = loop
        self.index = index
        self.ws_host = "127.0.0.1"
        self.ws_port = 0
        self.ws_ports: list[int] = []
        self.rng = random.Random()
        self.subprotocol: str | None = None
        #: Devices speak WebPush (``use_webpush``) instead of SimplePush.
        self.webpush = False
        self.ips = ["127.0.0.1"]
        self.devices: list[Device] = []
        self.next_idx = 0
        self.endpoint_sample = ""
        self.counters: dict[str, int] = {}
        self.dropped = 0
        self.progress = {"done": 0, "failed": 0}
        # Notification tracking: chid -> {version: t_sent}.
        self.pending: dict[str, dict[int, float]] = {}
        self.last_seen: dict[str, int] = {}
        self.got: dict[str, set[int]] = {}
        self.stale = 0
        self.latencies: list[float] = []
        self.received = 0
        self.duplicates = 0
        self.superseded = 0
        self.unexpected = 0
        self.first_rx = 0.0
        self.last_rx = 0.0

    # -- callbacks from devices ---------------------------------------------

    def count(self, kind: str, n: int = 1) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + n

    def on_dropped(self, dev: Device) -> None:
        self.dropped += 1
        self.count("dropped")

    def on_updates(self, dev: Device, updates: list[Any]) -> None:
        now = perf_counter()
        for u in updates:
            if type(u) is not dict:
                self.count("bad_update")
                continue
            chid = u.get("channelID")
            version = u.get("version")
            if not isinstance(chid, str) or not isinstance(version, int):
                self.count("bad_update")
                continue
            got = self.got.get(chid)
            if got is None:
                got = self.got[chid] = set()
            p = self.pending.get(chid)
            if version in got:
                self.duplicates += 1
            elif p is not None and version in p:
                t0 = p.pop(version)
                self.latencies.append(now - t0)
                self.received += 1
                if not self.first_rx:
                    self.first_rx = now
                self.last_rx = now
                for older in [v for v in p if v < version]:
                    del p[older]
                    self.superseded += 1
                if not p:
                    del self.pending[chid]
            elif version < self.last_seen.get(chid, 0):
                self.stale += 1
            else:
                self.unexpected += 1
            got.add(version)
            if version > self.last_seen.get(chid, 0):
                self.last_seen[chid] = version
            if dev.want_fut is not None and chid == dev.chid and version >= dev.want:
                if not dev.want_fut.done():
                    dev.want_fut.set_result(None)

    def on_message(self, dev: Device, msg: dict[str, Any]) -> None:
        """A WebPush notification: tracked by the sequence number at the start of its data."""
        chid = msg.get("channelID")
        data = msg.get("data")
        if not isinstance(chid, str) or not isinstance(data, str) or len(data) < 12:
            self.count("bad_notification")
            return
        try:
            seq = message_seq(data)
        except ValueError:
            self.count("bad_notification")
            return
        self.on_updates(dev, [{"channelID": chid, "version": seq}])

    def reset_tracking(self) -> None:
        self.pending.clear()
        self.got.clear()
        self.latencies = []
        self.received = self.duplicates = self.superseded = self.unexpected = self.stale = 0
        self.first_rx = self.last_rx = 0.0

    def lost_count(self) -> int:
        return sum(len(p) for p in self.pending.values())

    # -- commands -------------------------------------------------------------

    async def cmd_setup(self, a: dict[str, Any]) -> dict[str, Any]:
        self.ws_host = a.get("ws_host", "127.0.0.1")
        self.ws_port = int(a["ws_port"])
        # A cluster: device i connects to node i % N (the same node again after churn).
        self.ws_ports = [int(p) for p in (a.get("ws_ports") or [self.ws_port])]
        self.rng = random.Random(a.get("seed"))
        self.subprotocol = a.get("subprotocol")
        self.webpush = bool(a.get("webpush"))
        self.ips = list(a.get("ips") or ["127.0.0.1"])
        cpus = a.get("cpus")
        if cpus:
            os.sched_setaffinity(0, set(cpus))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return {
            "pid": os.getpid(),
            "cpus": sorted(os.sched_getaffinity(0)),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "loop": type(self.loop).__module__ + "." + type(self.loop).__name__,
        }

    async def _open_device(self, dev: Device, timeout: float, register: bool) -> dict[str, float]:
        """Connect, upgrade, hello (and register): one timeout bounds the whole sequence."""
        ws_port = self.ws_ports[dev.idx % len(self.ws_ports)] if self.ws_ports else self.ws_port
        host_header = f"{self.ws_host}:{ws_port}"
        t0 = perf_counter()
        try:
            async with asyncio.timeout(timeout):
                tcp, ws = await dev.connect(
                    self.loop, self.ws_host, ws_port, host_header, self.subprotocol, None
                )
                t1 = perf_counter()
                await dev.hello(None)
                t2 = perf_counter()
                out = {"tcp": tcp, "ws": ws, "hello": t2 - t1}
                if register:
                    endpoint = await dev.register(None)
                    if not self.endpoint_sample:
                        self.endpoint_sample = endpoint
                    out["register"] = perf_counter() - t2
        except TimeoutError:
            dev.abort()
            raise BenchFailure(f"{dev.stage or 'connect'}_timeout") from None
        out["total"] = perf_counter() - t0
        return out

    async def cmd_connect(self, a: dict[str, Any]) -> dict[str, Any]:
        n = int(a["n"])
        concurrency = max(1, int(a.get("concurrency", 100)))
        rate = float(a.get("rate", 0.0))
        timeout = float(a.get("timeout", 10.0))
        start_at = float(a.get("start_at", time.monotonic()))
        lat: dict[str, list[float]] = {k: [] for k in ("tcp", "ws", "hello", "register", "total")}
        failures: dict[str, int] = {}
        state = {"next": 0}
        self.progress = {"done": 0, "failed": 0}
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t_start = time.monotonic()
        cpu0 = _cpu_seconds()
        sys0 = _sys_seconds()

        async def runner() -> None:
            while state["next"] < n:
                i = state["next"]
                state["next"] += 1
                if rate > 0:
                    wait = t_start + i / rate - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                dev = Device(self, self.next_idx, self.ips[self.next_idx % len(self.ips)])
                self.next_idx += 1
                try:
                    r = await self._open_device(dev, timeout, True)
                except BenchFailure as e:
                    failures[e.kind] = failures.get(e.kind, 0) + 1
                    self.progress["failed"] += 1
                    dev.abort()
                    continue
                except OSError as e:
                    failures[f"oserror_{e.errno}"] = failures.get(f"oserror_{e.errno}", 0) + 1
                    self.progress["failed"] += 1
                    dev.abort()
                    continue
                for k, v in r.items():
                    lat[k].append(v)
                self.devices.append(dev)
                self.progress["done"] += 1

        await asyncio.gather(*(runner() for _ in range(min(concurrency, n))))
        t_end = time.monotonic()
        return {
            "ok": len(lat["total"]),
            "failures": failures,
            "t_start": t_start,
            "t_end": t_end,
            "cpu_s": _cpu_seconds() - cpu0,
            "sys_s": _sys_seconds() - sys0,
            "endpoint": self.endpoint_sample,
            "latencies": {k: _r(v) for k, v in lat.items()},
        }

    async def cmd_ping(self, a: dict[str, Any]) -> dict[str, Any]:
        timeout = float(a.get("timeout", 10.0))
        concurrency = max(1, int(a.get("concurrency", 200)))
        lat: list[float] = []
        failures: dict[str, int] = {}
        devs = list(self.devices)
        it = iter(devs)
        self.progress = {"done": 0, "failed": 0}
        t_start = time.monotonic()

        async def runner() -> None:
            for dev in it:
                t0 = perf_counter()
                try:
                    await dev.ping(timeout)
                except BenchFailure as e:
                    failures[e.kind] = failures.get(e.kind, 0) + 1
                    self.progress["failed"] += 1
                    continue
                lat.append(perf_counter() - t0)
                self.progress["done"] += 1

        await asyncio.gather(*(runner() for _ in range(min(concurrency, max(1, len(devs))))))
        return {
            "ok": len(lat),
            "failures": failures,
            "t_start": t_start,
            "t_end": time.monotonic(),
            "latencies": _r(lat),
        }

    async def _http_pool(
        self, host: str, ports: list[int], size: int, timeout: float, failures: dict[str, int]
    ) -> list[HttpConn]:
        """``size`` keep-alive connections, each to a random one of ``ports``."""
        conns = []
        for i in range(size):
            ip = self.ips[i % len(self.ips)]
            port = ports[0] if len(ports) == 1 else self.rng.choice(ports)
            try:
                conns.append(await HttpConn.open(self.loop, host, port, ip, timeout))
            except BenchFailure as e:
                failures[e.kind] = failures.get(e.kind, 0) + 1
        return conns

    async def cmd_notify(self, a: dict[str, Any]) -> dict[str, Any]:
        """M PUTs over this worker's devices, round robin, saturated (K in flight) or at a rate."""
        m = int(a["m"])
        rate = float(a.get("rate", 0.0))
        inflight = max(1, int(a.get("inflight", 32)))
        timeout = float(a.get("timeout", 10.0))
        drain = float(a.get("drain", 10.0))
        host = a["http_host"]
        port = int(a["http_port"])
        # A cluster: every PUT goes to a random node's endpoint (saturated mode: each
        # in-flight slot keeps one keep-alive connection per node and picks a node per PUT).
        ports = [int(p) for p in (a.get("http_ports") or [port])]
        start_at = float(a.get("start_at", time.monotonic()))
        webpush = self.webpush
        filler = os.urandom(max(0, int(a.get("body_bytes", 3072)) - _SEQ_OCTETS))
        devs = [d for d in self.devices if d.proto is not None and d.path]
        self.reset_tracking()
        statuses: dict[str, int] = {}
        failures: dict[str, int] = {}
        put_lat: list[float] = []
        lag: list[float] = []
        overlaps = 0
        self.progress = {"done": 0, "failed": 0}
        if not devs or m <= 0:
            return {"sent": 0, "error": "no connected devices" if not devs else None}
        pool_size = inflight if rate <= 0 else min(inflight, max(1, m))
        conns = await self._http_pool(host, ports, pool_size, timeout, failures)
        if not conns:
            return {"sent": 0, "error": "could not open HTTP connections", "failures": failures}
        opened: list[HttpConn] = []  # extra per-node connections of the saturated loop
        idle: asyncio.Queue[HttpConn] = asyncio.Queue()
        for c in conns:
            idle.put_nowait(c)
        state = {"i": 0, "pos": 0}
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu0 = _cpu_seconds()
        t_start = time.monotonic()
        p_start = perf_counter()

        async def one_put(conn: HttpConn, dev: Device, port: int = port) -> HttpConn | None:
            nonlocal overlaps
            dev.version += 1
            version = dev.version
            chid = dev.chid
            if self.pending.get(chid):
                overlaps += 1
            t0 = 0.0

            def sent() -> None:
                nonlocal t0
                t0 = perf_counter()
                self.pending.setdefault(chid, {})[version] = t0

            if webpush:
                request = post_request(conn.host_header, dev.path, message_body(version, filler))
            else:
                request = put_request(conn.host_header, dev.path, b"version=%d" % version)
            try:
                status = await conn.send(request, timeout, sent)
            except BenchFailure as e:
                failures[e.kind] = failures.get(e.kind, 0) + 1
                self.progress["failed"] += 1
                self._forget(chid, version)
                conn.close()
                ip = self.ips[dev.idx % len(self.ips)]
                try:
                    return await HttpConn.open(self.loop, host, port, ip, timeout)
                except BenchFailure as e2:
                    failures[e2.kind] = failures.get(e2.kind, 0) + 1
                    return None
            put_lat.append(perf_counter() - t0)
            key = str(status)
            statuses[key] = statuses.get(key, 0) + 1
            if status not in ACCEPTED:
                self._forget(chid, version)
                self.progress["failed"] += 1
            else:
                self.progress["done"] += 1
            if conn.closed:
                ip = self.ips[dev.idx % len(self.ips)]
                try:
                    return await HttpConn.open(self.loop, host, port, ip, timeout)
                except BenchFailure as e2:
                    failures[e2.kind] = failures.get(e2.kind, 0) + 1
                    return None
            return conn

        ndev = len(devs)

        def next_dev() -> Device:
            # Round robin, skipping channels whose last PUT is not delivered yet (a second
            # PUT could overtake the first on another connection); if every channel is busy,
            # take the next one anyway (counted as an overlap in one_put).
            i = state["i"]
            state["i"] = i + 1
            pos = state["pos"]
            for k in range(ndev):
                dev = devs[(pos + k) % ndev]
                if dev.chid not in self.pending:
                    state["pos"] = pos + k + 1
                    return dev
            state["pos"] = pos + 1
            return devs[pos % ndev]

        if rate <= 0:

            async def loop_conn(conn: HttpConn | None) -> None:
                while conn is not None and state["i"] < m:
                    conn = await one_put(conn, next_dev())

            async def loop_nodes(first: HttpConn) -> None:
                per: dict[int, HttpConn | None] = {int(first.host_header.rsplit(":", 1)[1]): first}
                while state["i"] < m:
                    node = self.rng.choice(ports)
                    conn = per.get(node)
                    if conn is None or conn.closed:
                        ip = self.ips[len(opened) % len(self.ips)]
                        try:
                            conn = await HttpConn.open(self.loop, host, node, ip, timeout)
                        except BenchFailure as e:
                            failures[e.kind] = failures.get(e.kind, 0) + 1
                            return
                        opened.append(conn)
                    per[node] = await one_put(conn, next_dev(), node)
                for c in per.values():
                    if c is not None:
                        c.close()

            if len(ports) > 1:
                await asyncio.gather(*(loop_nodes(c) for c in conns))
            else:
                await asyncio.gather(*(loop_conn(c) for c in conns))
        else:
            tasks: set[asyncio.Task[None]] = set()

            async def fire(dev: Device, conn: HttpConn) -> None:
                new = await one_put(conn, dev)
                if new is not None:
                    idle.put_nowait(new)

            for i in range(m):
                when = p_start + i / rate
                wait = when - perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    async with asyncio.timeout(timeout):
                        conn = await idle.get()
                except TimeoutError:
                    failures["http_pool_exhausted"] = failures.get("http_pool_exhausted", 0) + 1
                    break
                lag.append(max(0.0, perf_counter() - when))
                t = asyncio.ensure_future(fire(next_dev(), conn))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        t_puts_done = time.monotonic()
        p_puts_done = perf_counter()
        # Drain: wait for outstanding notifications.
        deadline = perf_counter() + drain
        while self.pending and perf_counter() < deadline:
            await asyncio.sleep(0.01)
        t_end = time.monotonic()
        for c in list(idle._queue) + conns + opened:  # type: ignore[attr-defined]
            c.close()
        sent = sum(statuses.values()) + sum(
            v for k, v in failures.items() if not k.startswith("http_connect")
        )
        return {
            "sent": sent,
            "statuses": statuses,
            "failures": failures,
            "received": self.received,
            "lost": self.lost_count(),
            "duplicates": self.duplicates,
            "superseded": self.superseded,
            "stale": self.stale,
            "unexpected": self.unexpected,
            "overlaps": overlaps,
            "t_start": t_start,
            "t_puts_done": t_puts_done,
            "t_end": t_end,
            "puts_elapsed": p_puts_done - p_start,
            "rx_elapsed": (self.last_rx - p_start) if self.last_rx else 0.0,
            "cpu_s": _cpu_seconds() - cpu0,
            "latencies": _r(self.latencies),
            "put_latencies": _r(put_lat),
            "schedule_lag": _r(lag),
            "counters": dict(self.counters),
        }

    def _forget(self, chid: str, version: int) -> None:
        p = self.pending.get(chid)
        if p is not None:
            p.pop(version, None)
            if not p:
                del self.pending[chid]

    async def cmd_churn(self, a: dict[str, Any]) -> dict[str, Any]:
        """Each device: close, PUT while offline, reconnect with its UAID, await the update."""
        cycles = int(a["cycles"])
        duration = float(a.get("duration", 60.0))
        timeout = float(a.get("timeout", 10.0))
        notif_timeout = float(a.get("notif_timeout", 5.0))
        host = a["http_host"]
        port = int(a["http_port"])
        ports = [int(p) for p in (a.get("http_ports") or [port])]
        start_at = float(a.get("start_at", time.monotonic()))
        devs = [d for d in self.devices if d.proto is not None and d.path]
        self.reset_tracking()
        statuses: dict[str, int] = {}
        failures: dict[str, int] = {}
        cycle_lat: list[float] = []
        reconnect_lat: list[float] = []
        state = {"left": cycles, "done": 0, "late": 0}
        self.progress = {"done": 0, "failed": 0}
        if not devs:
            return {"cycles": 0, "error": "no connected devices"}
        conns = await self._http_pool(host, ports, len(devs), timeout, failures)
        if len(conns) < len(devs):
            return {"cycles": 0, "error": "could not open HTTP connections", "failures": failures}
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu0 = _cpu_seconds()
        t_start = time.monotonic()
        deadline = perf_counter() + duration

        def fail(kind: str) -> None:
            failures[kind] = failures.get(kind, 0) + 1
            self.progress["failed"] += 1

        async def dev_loop(dev: Device, conn: HttpConn) -> None:
            while state["left"] > 0 and perf_counter() < deadline:
                state["left"] -= 1
                t0 = perf_counter()
                try:
                    if dev.proto is not None:
                        await dev.close(timeout)
                except BenchFailure as e:
                    fail(e.kind)
                dev.version += 1
                version = dev.version
                chid = dev.chid
                accepted = False

                def sent(chid: str = chid, version: int = version) -> None:
                    self.pending.setdefault(chid, {})[version] = perf_counter()

                try:
                    if conn.closed:
                        node = ports[0] if len(ports) == 1 else self.rng.choice(ports)
                        conn = await HttpConn.open(self.loop, host, node, dev.ip, timeout)
                    status = await conn.put(dev.path, b"version=%d" % version, timeout, sent)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    accepted = status in (200, 202)
                    if status == 200:
                        failures["put_200_while_offline"] = (
                            failures.get("put_200_while_offline", 0) + 1
                        )
                except BenchFailure as e:
                    fail(e.kind)
                if not accepted:
                    self._forget(chid, version)
                loop = self.loop
                dev.want = version if accepted else 1 << 62
                dev.want_fut = loop.create_future()
                t1 = perf_counter()
                try:
                    await self._open_device(dev, timeout, False)
                except BenchFailure as e:
                    fail(e.kind)
                    dev.abort()
                    dev.want_fut = None
                    continue
                reconnect_lat.append(perf_counter() - t1)
                if accepted:
                    try:
                        async with asyncio.timeout(notif_timeout):
                            await dev.want_fut
                    except TimeoutError:
                        state["late"] += 1
                        fail("notification_timeout")
                        dev.want_fut = None
                        continue
                dev.want_fut = None
                cycle_lat.append(perf_counter() - t0)
                state["done"] += 1
                self.progress["done"] += 1

        await asyncio.gather(*(dev_loop(d, c) for d, c in zip(devs, conns, strict=False)))
        p_end = perf_counter()
        # Late deliveries still count as delivered; wait briefly for them.
        drain_deadline = perf_counter() + float(a.get("drain", 5.0))
        while self.pending and perf_counter() < drain_deadline:
            await asyncio.sleep(0.01)
        for c in conns:
            c.close()
        return {
            "cycles": state["done"],
            "attempted": cycles - max(0, state["left"]),
            "statuses": statuses,
            "failures": failures,
            "missing": self.lost_count(),
            "received": self.received,
            "duplicates": self.duplicates,
            "stale": self.stale,
            "unexpected": self.unexpected,
            "late": state["late"],
            "t_start": t_start,
            "t_end": time.monotonic(),
            "elapsed": p_end - (deadline - duration),
            "cpu_s": _cpu_seconds() - cpu0,
            "latencies": _r(cycle_lat),
            "reconnect_latencies": _r(reconnect_lat),
            "delivery_latencies": _r(self.latencies),
            "counters": dict(self.counters),
        }

    async def cmd_stats(self, a: dict[str, Any]) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "connected": sum(1 for d in self.devices if d.proto is not None),
            "dropped": self.dropped,
            "counters": dict(self.counters),
        }

    async def cmd_close(self, a: dict[str, Any]) -> dict[str, Any]:
        for d in self.devices:
            d.abort()
        await asyncio.sleep(0)
        return {"closed": len(self.devices)}


async def _serve(worker: Worker) -> None:
    loop = worker.loop
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        out.flush()

    async def reporter() -> None:
        while True:
            await asyncio.sleep(1.0)
            send({"type": "progress", **worker.progress})

    rep = asyncio.ensure_future(reporter())
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            msg = json.loads(line)
            cmd = msg.get("cmd")
            fn = getattr(worker, f"cmd_{cmd}", None)
            if fn is None:
                send({"type": "error", "id": msg.get("id"), "error": f"unknown command {cmd}"})
                continue
            # No generator GC pauses inside a measurement: collect and freeze what exists,
            # then run the command with the collector off (every command is bounded).
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                result = await fn(msg.get("args") or {})
            except Exception as e:  # report, keep serving
                send({"type": "error", "id": msg.get("id"), "error": f"{type(e).__name__}: {e}"})
                continue
            finally:
                gc.enable()
            send({"type": "result", "id": msg.get("id"), "result": result})
            if cmd == "close":
                return
    finally:
        rep.cancel()


def main() -> None:
    # A Ctrl-C reaches the whole process group: the parent stops its workers (by PID).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    use_uvloop = os.environ.get("BENCH_LOOP", "uvloop") == "uvloop"
    loop: asyncio.AbstractEventLoop
    if use_uvloop:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(loop, index)
    try:
        loop.run_until_complete(_serve(worker))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
