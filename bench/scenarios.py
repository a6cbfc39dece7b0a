"""The scenarios, run from the parent: split work over the workers, merge what they measured.

Each ``run_*`` coroutine is listed in ``bench.registry`` (the one place that
names the scenarios, their sizes and options).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from bench.group import Progress, WorkerGroup
from bench.meters import (
    GenOptions,
    ServerMeter,
    Target,
    cpu_pct,
    memcached_meter,
    open_sockets,
    server_rss,
    split,
)
from bench.stats import merge_counts, summarize

__all__ = ["Target", "GenOptions", "split", "run_connect", "run_notify", "run_churn"]

# Kept importable from here (tests, older callers).
_ServerMeter = ServerMeter

#: The statuses of an accepted PUT (200, 202) or WebPush POST (201), as result keys.
_ACCEPTED = frozenset({"200", "201", "202"})


async def _start_group(
    target: Target, gen: GenOptions, webpush: bool = False
) -> tuple[WorkerGroup, list[dict[str, Any]]]:
    """Start the workers; with ``webpush`` their devices speak WebPush."""
    group = WorkerGroup(gen.procs, gen.loop)
    try:
        await group.start()
        info = await group.call("setup", _setup_args(target, gen, webpush))
    except BaseException:  # a worker error, or interrupted: stop the ones started
        await group.close()
        raise
    return group, info


def _setup_args(target: Target, gen: GenOptions, webpush: bool) -> list[dict[str, Any]]:
    """Each worker's ``setup``: its own slice of source addresses when there are enough."""
    ips = gen.ips or ["127.0.0.1"]
    per: list[dict[str, Any]] = []
    for i in range(gen.procs):
        mine = ips[i :: gen.procs] if len(ips) >= gen.procs else ips
        per.append(
            {
                "ws_host": target.ws_host,
                "ws_port": target.ws_port,
                "ws_ports": target.ws_ports or [target.ws_port],
                "subprotocol": target.subprotocol,
                "webpush": webpush,
                "ips": mine,
                "cpus": gen.cpus,
            }
        )
    return per


async def _connect(
    group: WorkerGroup,
    gen: GenOptions,
    n: int,
    label: str,
    target: Target,
    measured: bool = False,
) -> dict[str, Any]:
    """Open ``n`` devices over the group; merged connect metrics.

    ``measured``: the phase is the scenario's figure (connect), so the phase
    hook is told; memcached's counters are taken either way (per connection).
    """
    procs = len(group.workers)
    counts = split(n, procs)
    conc = split(max(gen.concurrency, procs), procs)
    start_at = time.monotonic() + 0.2
    args = [
        {
            "n": c,
            "concurrency": k,
            "rate": gen.connect_rate / procs if gen.connect_rate else 0.0,
            "timeout": gen.timeout,
            "start_at": start_at,
        }
        for c, k in zip(counts, conc, strict=True)
    ]
    if measured:
        target.phase("connect", True)
    meter = ServerMeter(target.all_pids())
    mc = memcached_meter(target)
    try:
        async with Progress(group, label, n, gen.progress_interval):
            res = await group.call("connect", args)
    finally:
        if measured:
            target.phase("connect", False)
    elapsed = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
    ok = sum(r["ok"] for r in res)
    lat = {
        k: summarize(v for r in res for v in r["latencies"][k])
        for k in ("tcp", "ws", "hello", "register", "total")
    }
    failures = merge_counts(*(r["failures"] for r in res))
    endpoint = next((r.get("endpoint") for r in res if r.get("endpoint")), None)
    gen_cpu = sum(r["cpu_s"] for r in res)
    return {
        "machine": meter.machine(gen_cpu),
        "attempted": n,
        "connected": ok,
        "elapsed_s": round(elapsed, 4),
        "connect_rate": round(ok / elapsed, 1) if elapsed > 0 else None,
        "latency": lat,
        "failures": failures,
        "failure_count": sum(failures.values()),
        "server_cpu_pct": cpu_pct(meter.used(), elapsed),
        "generator_cpu_pct": cpu_pct(gen_cpu, elapsed),
        "generator_sys_pct": cpu_pct(sum(r.get("sys_s", 0.0) for r in res), elapsed),
        "memcached": mc.finish(ok, "connection", elapsed) if mc is not None else None,
        "endpoint": endpoint,
        "_raw_total": [v for r in res for v in r["latencies"]["total"]],
    }


def _endpoint_addr(endpoint: str | None, failures: dict[str, int] | None = None) -> tuple[str, int]:
    if not endpoint:
        raise RuntimeError(f"no device registered (connect failures: {failures or {}})")
    parts = urlsplit(endpoint)
    host = parts.hostname or "127.0.0.1"
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise RuntimeError(f"pushEndpoint {endpoint} is not on loopback; refusing to send load")
    return ("127.0.0.1" if host == "localhost" else host), parts.port or 80


def _gc_probe(url: str | None, http_port: int | None, ws_port: int) -> dict[str, Any] | None:
    """Optional: GET a loopback URL the server exposes that reports its GC pauses (JSON).

    ``{http_port}`` and ``{ws_port}`` in the URL are replaced by the server's ports.
    """
    if not url:
        return None
    url = url.replace("{http_port}", str(http_port or "")).replace("{ws_port}", str(ws_port))
    host = urlsplit(url).hostname or ""
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        return {"error": "gc probe must be a loopback URL"}
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.loads(resp.read())
    except Exception as e:  # a hook: report, don't fail the run
        return {"error": f"{type(e).__name__}: {e}"}
    return data if isinstance(data, dict) else {"value": data}


def _gc_pause(gc: dict[str, Any] | None) -> float | None:
    """``max_pause_ms`` from the probe's JSON, top level or under ``gc``."""
    if not isinstance(gc, dict):
        return None
    for d in (gc, gc.get("gc")):
        if isinstance(d, dict) and isinstance(d.get("max_pause_ms"), (int, float)):
            return float(d["max_pause_ms"])
    return None


async def _connect_all(
    group: WorkerGroup, gen: GenOptions, n: int, label: str, target: Target
) -> tuple[dict[str, Any], str, int, list[int], int]:
    """Connect ``n`` devices; return the connect metrics, the endpoint address, the
    devices each worker holds and their total (RuntimeError when none connected)."""
    conn = await _connect(group, gen, n, label, target)
    conn.pop("_raw_total")
    host, port = _endpoint_addr(conn["endpoint"], conn["failures"])
    stats = await group.call("stats", {})
    have = [s["connected"] for s in stats]
    total_have = sum(have)
    if total_have == 0:
        raise RuntimeError(f"no device connected: {conn['failures']}")
    return conn, host, port, have, total_have


async def _put_phase(
    group: WorkerGroup,
    gen: GenOptions,
    target: Target,
    addr: tuple[str, int],
    have: list[int],
    p: dict[str, Any],
    label: str,
) -> tuple[dict[str, Any], dict[str, int], list[float]]:
    """``p["puts"]`` PUTs over the connected devices (saturated, or at ``p["rate"]``).

    PUTs and in-flight slots go to each worker in proportion to the devices it
    holds.  Returns the merged metrics, the failures by kind and the latencies.
    """
    host, port = addr
    mput = int(p["puts"])
    rate = float(p.get("rate") or 0.0)
    inflight = int(p.get("inflight", 64))
    total_have = sum(have)
    procs = len(group.workers)
    puts = [round(mput * h / total_have) for h in have]
    puts[-1] += mput - sum(puts)
    slots = split(max(inflight, procs), procs)
    start_at = time.monotonic() + 0.2
    args = [
        {
            "m": puts[i],
            "rate": rate * puts[i] / mput if rate and mput else 0.0,
            "inflight": slots[i],
            "timeout": gen.timeout,
            "drain": float(p.get("drain", 10.0)),
            "http_host": host,
            "http_port": port,
            "http_ports": target.http_ports or [port],
            "body_bytes": int(p.get("body_bytes", 3072)),
            "start_at": start_at,
        }
        for i in range(procs)
    ]
    meter = ServerMeter(target.all_pids())
    mc = memcached_meter(target)
    async with Progress(group, label, mput, gen.progress_interval):
        res = await group.call("notify", args)
    errs = [r["error"] for r in res if r.get("error")]
    if errs:
        raise RuntimeError("; ".join(errs))
    puts_elapsed = max(r["puts_elapsed"] for r in res)
    rx_elapsed = max(r["rx_elapsed"] for r in res)
    elapsed_all = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
    sent = sum(r["sent"] for r in res)
    received = sum(r["received"] for r in res)
    statuses = merge_counts(*(r["statuses"] for r in res))
    failures = merge_counts(*(r["failures"] for r in res))
    http_errors = sum(v for k, v in statuses.items() if k not in _ACCEPTED) + sum(failures.values())
    lat = [v for r in res for v in r["latencies"]]
    m = {
        "machine": meter.machine(sum(r["cpu_s"] for r in res)),
        "mode": "rate" if rate else "saturated",
        "sent": sent,
        "accepted": sum(statuses.get(k, 0) for k in _ACCEPTED),
        "received": received,
        "lost": sum(r["lost"] for r in res),
        "duplicates": sum(r["duplicates"] for r in res),
        "superseded": sum(r["superseded"] for r in res),
        "stale": sum(r["stale"] for r in res),
        "unexpected": sum(r["unexpected"] for r in res),
        "overlaps": sum(r["overlaps"] for r in res),
        "statuses": statuses,
        "http_errors": http_errors,
        "puts_elapsed_s": round(puts_elapsed, 4),
        "put_rate": round(sent / puts_elapsed, 1) if puts_elapsed > 0 else None,
        "throughput": round(received / rx_elapsed, 1) if rx_elapsed > 0 else None,
        "latency": summarize(lat),
        "put_latency": summarize(v for r in res for v in r["put_latencies"]),
        "schedule_lag": summarize(v for r in res for v in r["schedule_lag"]) if rate else None,
        "server_cpu_pct": cpu_pct(meter.used(), elapsed_all),
        "generator_cpu_pct": cpu_pct(sum(r["cpu_s"] for r in res), puts_elapsed),
        "memcached": (mc.finish(received, "notification", elapsed_all) if mc is not None else None),
        "worker_counters": merge_counts(*(r["counters"] for r in res)),
    }
    fails = merge_counts(
        failures, {f"http_{k}": v for k, v in statuses.items() if k not in _ACCEPTED}
    )
    return m, fails, lat


async def run_connect(target: Target, gen: GenOptions, p: dict[str, Any]) -> dict[str, Any]:
    """connect: N devices hello + register (ramped); hold; ping each; RSS per connection.

    With ``p["verify_puts"]`` (``connect-verify``) every device that answered
    its ping then gets one PUT, and its delivery is counted (``metrics.verify``).
    """
    n = int(p["devices"])
    group, info = await _start_group(target, gen)
    try:
        await asyncio.sleep(0.5)
        rss0 = server_rss(target)
        m = await _connect(group, gen, n, "connect", target, measured=True)
        rss_connected = server_rss(target)
        hold = float(p.get("hold", 5.0))
        if hold > 0:
            print(
                f"[connect] holding {m['connected']:,} connections for {hold:g}s", file=sys.stderr
            )
            await asyncio.sleep(hold)
        rss_held = server_rss(target)
        sockets = [open_sockets(pid) for pid in target.all_pids()]
        stats = await group.call("stats", {})
        still = sum(s["connected"] for s in stats)
        async with Progress(group, "ping", still, gen.progress_interval):
            pres = await group.call(
                "ping",
                {"timeout": gen.timeout, "concurrency": max(1, gen.concurrency // gen.procs)},
            )
        ping_lat = summarize(v for r in pres for v in r["latencies"])
        ping_fail = merge_counts(*(r["failures"] for r in pres))
        answering = sum(r["ok"] for r in pres)
        http_port = None
        if m.get("endpoint"):
            http_port = _endpoint_addr(m["endpoint"])[1]
        gc = _gc_probe(target.gc_probe, http_port, target.ws_port)
        raw = m.pop("_raw_total")
        ok = m["connected"]
        kb = None
        if rss0 is not None and rss_held is not None and ok:
            kb = round((rss_held - rss0) / ok, 3)
        m.update(
            {
                "held": still,
                "dropped_during_hold": ok - still,
                "rss_kb": {"before": rss0, "connected": rss_connected, "held": rss_held},
                "kb_per_conn": kb,
                # Per server process, after the hold: how the kernel spread the devices
                # over nodes sharing a port (reuse_port), and how near the fd limit each is.
                "server_sockets": sockets,
                "ping": {"ok": answering, "failures": ping_fail, "latency": ping_lat},
                "answering": answering,
                "not_answering": n - answering,
                "gc": gc,
                "gc_pause_ms": _gc_pause(gc),
                "worker_counters": merge_counts(*(s["counters"] for s in stats)),
            }
        )
        failures = merge_counts(m["failures"], {f"ping_{k}": v for k, v in ping_fail.items()})
        series = {"connect total": raw, "ping": [v for r in pres for v in r["latencies"]]}
        if p.get("verify_puts"):
            vm, vfail, vlat = await _verify_puts(group, gen, target, m, p)
            m["verify"] = vm
            failures = merge_counts(failures, {f"verify_{k}": v for k, v in vfail.items()})
            series["verify PUT -> notification"] = vlat
        return {
            "metrics": m,
            "failures": failures,
            "generator": {"workers": info},
            "series": series,
        }
    finally:
        await group.close()


async def _verify_puts(
    group: WorkerGroup, gen: GenOptions, target: Target, m: dict[str, Any], p: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int], list[float]]:
    """One PUT to every device still connected; ``undelivered`` = devices without it."""
    addr = _endpoint_addr(m.get("endpoint"), m.get("failures"))
    stats = await group.call("stats", {})
    have = [s["connected"] for s in stats]
    total = sum(have)
    if total == 0:
        return {"sent": 0, "received": 0, "undelivered": 0}, {}, []
    q = {
        "puts": total,
        "inflight": int(p.get("inflight", 64)),
        "drain": float(p.get("drain", 10.0)),
    }
    vm, vfail, vlat = await _put_phase(group, gen, target, addr, have, q, "verify")
    vm["devices"] = total
    vm["undelivered"] = total - int(vm["received"])
    return vm, vfail, vlat


async def run_notify(target: Target, gen: GenOptions, p: dict[str, Any]) -> dict[str, Any]:
    """notify: C devices; M PUTs saturated (K in flight) or at a fixed rate.

    Latency is PUT written -> notification received, measured in the worker that
    owns the device (it also sends that device's PUTs).  With ``p["webpush"]``
    the devices speak WebPush and each PUT is a POST of ``p["body_bytes"]``.
    """
    c = int(p["devices"])
    rate = float(p.get("rate") or 0.0)
    group, info = await _start_group(target, gen, bool(p.get("webpush")))
    try:
        conn, host, port, have, total_have = await _connect_all(
            group, gen, c, "notify:connect", target
        )
        target.phase("notify", True)
        try:
            pm, fails, lat = await _put_phase(
                group,
                gen,
                target,
                (host, port),
                have,
                p,
                f"notify:{'rate' if rate else 'saturated'}",
            )
        finally:
            target.phase("notify", False)
        m = {"devices": total_have, "connect": conn, **pm, "rss_kb": server_rss(target)}
        return {
            "metrics": m,
            "failures": merge_counts(fails, conn["failures"]),
            "generator": {"workers": info},
            "series": {"PUT -> notification": lat},
        }
    finally:
        await group.close()


async def run_churn(target: Target, gen: GenOptions, p: dict[str, Any]) -> dict[str, Any]:
    """churn: disconnect, PUT while offline, reconnect with the same UAID: the update arrives."""
    d = int(p["devices"])
    cycles = int(p["cycles"])
    group, info = await _start_group(target, gen)
    try:
        conn, host, port, have, total_have = await _connect_all(
            group, gen, d, "churn:connect", target
        )
        per = [round(cycles * h / total_have) for h in have]
        per[-1] += cycles - sum(per)
        start_at = time.monotonic() + 0.2
        args = [
            {
                "cycles": per[i],
                "duration": float(p.get("duration", 60.0)),
                "timeout": gen.timeout,
                "notif_timeout": float(p.get("notif_timeout", 5.0)),
                "http_host": host,
                "http_port": port,
                "http_ports": target.http_ports or [port],
                "start_at": start_at,
            }
            for i in range(len(group.workers))
        ]
        target.phase("churn", True)
        meter = ServerMeter(target.all_pids())
        mc = memcached_meter(target)
        try:
            async with Progress(group, "churn", cycles, gen.progress_interval):
                res = await group.call("churn", args)
        finally:
            target.phase("churn", False)
        errs = [r["error"] for r in res if r.get("error")]
        if errs:
            raise RuntimeError("; ".join(errs))
        elapsed = max(r["elapsed"] for r in res)
        done = sum(r["cycles"] for r in res)
        failures = merge_counts(*(r["failures"] for r in res))
        lat = [v for r in res for v in r["latencies"]]
        m = {
            "devices": total_have,
            "connect": conn,
            "machine": meter.machine(sum(r["cpu_s"] for r in res)),
            "cycles": done,
            "attempted": sum(r["attempted"] for r in res),
            "elapsed_s": round(elapsed, 4),
            "cycles_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
            "missing": sum(r["missing"] for r in res),
            "late": sum(r["late"] for r in res),
            "received": sum(r["received"] for r in res),
            "duplicates": sum(r["duplicates"] for r in res),
            "stale": sum(r["stale"] for r in res),
            "unexpected": sum(r["unexpected"] for r in res),
            "statuses": merge_counts(*(r["statuses"] for r in res)),
            "latency": summarize(lat),
            "reconnect_latency": summarize(v for r in res for v in r["reconnect_latencies"]),
            "delivery_latency": summarize(v for r in res for v in r["delivery_latencies"]),
            "failure_count": sum(failures.values()),
            "server_cpu_pct": cpu_pct(meter.used(), elapsed),
            "generator_cpu_pct": cpu_pct(sum(r["cpu_s"] for r in res), elapsed),
            "memcached": mc.finish(done, "cycle", elapsed) if mc is not None else None,
            "worker_counters": merge_counts(*(r["counters"] for r in res)),
        }
        return {
            "metrics": m,
            "failures": merge_counts(failures, conn["failures"]),
            "generator": {"workers": info},
            "series": {"churn cycle": lat},
        }
    finally:
        await group.close()
