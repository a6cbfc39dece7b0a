"""``python -m bench run``: start the servers, run each scenario, write results and the summary.

The command line is built in ``bench.__main__``; the scenarios are listed in
``bench.registry``; how many generator processes and source addresses a run
uses comes from ``bench.layout``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import SCHEMA
from bench.layout import LayoutError, fd_limits, plan_layout, port_range_size
from bench.meters import GenOptions, Target
from bench.registry import (
    CONCURRENCY,
    SCENARIOS,
    http_connections,
    scenario_names,
    scenario_params,
)
from bench.results import (
    SCENARIO_METRICS,
    check_targets,
    histogram,
    machine_facts,
    markdown_table,
    plot_latencies,
    source_fingerprint,
    validate_result,
    write_result,
)
from bench.server import (
    snapshot_source,
    start_cluster,
    start_server,
    stop_cluster,
    stop_server,
)

__all__ = [
    "check_nodes",
    "cmd_run",
    "gen_options",
    "parse_cpus",
    "parse_extra_config",
    "start_under_test",
    "stop_under_test",
]


def parse_cpus(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        elif part.strip():
            out.add(int(part))
    return sorted(out)


def check_nodes(args: argparse.Namespace) -> None:
    """``--nodes``: at least 1; more than 1 needs the memcached backend and its own servers;
    ``--shared-ports`` needs more than one node; ``--memcached`` goes with ``--target``."""
    n = getattr(args, "nodes", 1)
    if n < 1:
        raise SystemExit("--nodes must be at least 1")
    if n > 1:
        if args.backend != "memcached":
            raise SystemExit(
                f"--nodes {n} needs --backend memcached (a cluster shares memcached), "
                f"not {args.backend}"
            )
        if args.target:
            raise SystemExit("--nodes cannot be combined with --target")
    if getattr(args, "shared_ports", False) and n < 2:
        raise SystemExit("--shared-ports needs --nodes 2 or more (nodes sharing the ports)")
    if getattr(args, "memcached", None) and not args.target:
        raise SystemExit("--memcached is for --target (the bench's own memcached is measured)")


def start_under_test(
    args: argparse.Namespace, server_cpus: list[int] | None, extra: dict[str, dict[str, Any]]
) -> Any:
    """The server under test: one process, or ``--nodes N`` of them as a cluster."""
    if args.nodes > 1:
        return start_cluster(
            args.nodes,
            cpus=server_cpus,
            launcher=args.launcher,
            extra_config=extra,
            keep_state=args.keep_state,
            src_root=args.src_root,
            shared_ports=args.shared_ports,
        )
    return start_server(
        args.backend,
        cpus=server_cpus,
        launcher=args.launcher,
        extra_config=extra,
        keep_state=args.keep_state,
        src_root=args.src_root,
    )


def stop_under_test(server: Any) -> None:
    if hasattr(server, "nodes"):
        stop_cluster(server)
    else:
        stop_server(server)


def parse_extra_config(items: list[str]) -> dict[str, dict[str, Any]]:
    import tomllib

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not section or not name or not _:
            raise SystemExit(f"--config {item!r}: expected SECTION.KEY=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        out.setdefault(section, {})[name] = parsed
    return out


def plan_for(args: argparse.Namespace, name: str, p: dict[str, Any]) -> Any:
    """The ``bench.layout.Layout`` of one run of ``name`` (SystemExit naming a broken budget)."""
    gen_limit, server_limit = fd_limits()
    try:
        return plan_layout(
            int(p["devices"]),
            nodes=args.nodes,
            shared_ports=args.shared_ports,
            http_conns=http_connections(name, p, args.nodes, args.shared_ports),
            procs=args.procs,
            source_ips=args.source_ips,
            gen_fd_limit=gen_limit,
            server_fd_limit=server_limit,
            ports_per_ip=port_range_size(),
            check_server=not args.target,
        )
    except LayoutError as e:
        raise SystemExit(f"{name}: layout refused: {e}") from None


def gen_options(
    args: argparse.Namespace, name: str, p: dict[str, Any], gen_cpus: list[int] | None
) -> tuple[GenOptions, Any]:
    """The generator's options for one run of ``name``, and the layout they come from."""
    layout = plan_for(args, name, p)
    return (
        GenOptions(
            procs=layout.procs,
            cpus=gen_cpus,
            ips=[f"127.0.0.{i}" for i in range(2, 2 + layout.source_ips)],
            loop=args.loop,
            timeout=args.timeout,
            concurrency=args.concurrency or CONCURRENCY[args.preset],
            connect_rate=args.connect_rate,
        ),
        layout,
    )


def _memcached_of(args: argparse.Namespace, server: Any) -> tuple[tuple[str, int] | None, Any]:
    """The memcached whose stats the run reports: ours, or ``--memcached`` with ``--target``."""
    if server is not None:
        port = getattr(server, "memcached_port", None)
        return (("127.0.0.1", port) if port else None), getattr(server, "memcached_pid", None)
    if not args.memcached:
        return None, None
    host, _, port = args.memcached.rpartition(":")
    if not host.startswith("127.") and host != "localhost":
        raise SystemExit("--memcached must be a loopback address (127.0.0.0/8)")
    return (host, int(port)), args.memcached_pid


async def _run_one(
    args: argparse.Namespace,
    name: str,
    rep: int,
    run_id: str,
    attempt: int,
    machine: dict[str, Any],
    shared_server: Any,
    server_cpus: list[int] | None,
    gen_cpus: list[int] | None,
    extra_config: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    p = scenario_params(args, name)
    p["nodes"] = args.nodes
    if args.shared_ports:
        p["shared_ports"] = True
    scen = SCENARIOS[name].kind
    gen, layout = gen_options(args, name, p, gen_cpus)
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    server = shared_server
    own_server = False
    server_info: dict[str, Any] = {}
    out: dict[str, Any] = {}
    error = None
    try:
        if args.target:
            from urllib.parse import urlsplit

            u = urlsplit(args.target)
            host = u.hostname or "127.0.0.1"
            if not host.startswith("127."):
                raise SystemExit("--target must be a loopback address (127.0.0.0/8)")
            target = Target(host, u.port or 80, args.server_pid, args.subprotocol, args.gc_probe)
            target.memcached, target.memcached_pid = _memcached_of(args, None)
            server_info = {
                "external": args.target,
                "pid": args.server_pid,
                "source": source_fingerprint(),
            }
        else:
            if server is None:
                server = start_under_test(args, server_cpus, extra_config)
                own_server = True
            target = Target(
                "127.0.0.1", server.ws_port, server.pid, args.subprotocol, args.gc_probe
            )
            if hasattr(server, "nodes"):
                target.pids = server.pids
                # Shared ports (reuse_port): one port for all; the kernel picks the node.
                target.ws_ports = list(dict.fromkeys(server.ws_ports))
                target.http_ports = list(dict.fromkeys(server.http_ports))
            target.memcached, target.memcached_pid = _memcached_of(args, server)
            server_info = {
                "nodes": args.nodes,
                "source": source_fingerprint(args.src_root),
                "pid": server.pid,
                "cpus": server.cpus,
                "command": server.command,
                "config": server.config_text,
                "ws_port": server.ws_port,
                "http_port": server.http_port,
                "memcached_port": server.memcached_port,
            }
            if hasattr(server, "nodes"):
                server_info.update(
                    {
                        "pids": server.pids,
                        "ws_ports": server.ws_ports,
                        "http_ports": server.http_ports,
                        "shared_ports": server.shared_ports,
                        "accounting": "RSS and CPU summed over the node PIDs (not memcached)",
                    }
                )
        print(
            f"== {name} run {rep + 1}/{args.repeat} backend={args.backend} nodes={args.nodes} "
            f"params={json.dumps(p)} procs={gen.procs}",
            file=sys.stderr,
            flush=True,
        )
        target.phase_hook = getattr(args, "phase_hook", None)
        async with asyncio.timeout(args.max_seconds):
            out = await SCENARIOS[name].run(target, gen, p)
    except TimeoutError:
        error = f"run exceeded --max-seconds {args.max_seconds}"
    except RuntimeError as e:  # expected kinds: server did not start, no device connected
        error = f"{type(e).__name__}: {e}"
        print(f"run failed: {error}", file=sys.stderr)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if server is not None and not server.alive():
            server_info["died"] = True
            server_info["log_tail"] = server.log_tail(40)
            error = error or "server exited during the run"
        if error and server is not None:
            server_info["log_tail"] = server.log_tail(40)
        if own_server and server is not None:
            stop_under_test(server)
            server_info["exit_code"] = server.info.get("exit_code")
    gen_info = {
        "procs": gen.procs,
        "cpus": gen.cpus,
        "loop": gen.loop,
        "source_ips": gen.ips,
        "concurrency": gen.concurrency,
        "connect_rate": gen.connect_rate,
        "timeout_s": gen.timeout,
        "layout": layout.as_dict(),
    }
    gen_info.update(out.get("generator", {}))
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "scenario": scen,
        "backend": args.backend,
        "nodes": args.nodes,
        "run_id": run_id,
        "repeat_index": rep,
        "attempt": attempt,
        "started_at": started,
        "duration_s": round(time.monotonic() - t0, 3),
        "command": [sys.executable, "-m", "bench", *sys.argv[1:]],
        "command_line": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "preset": args.preset,
        "params": p,
        "machine": machine,
        "server": server_info,
        "generator": gen_info,
        "metrics": out.get("metrics", {}),
        "failures": out.get("failures", {}),
        "targets": [],
        "ok": error is None,
    }
    if error:
        result["error"] = error
    hook = getattr(args, "phase_hook", None)
    if hook is not None and hasattr(hook, "describe"):
        result["profile"] = hook.describe()
    result["targets"] = check_targets(result)
    series = out.get("series", {})
    result["histograms"] = {k: histogram(v) for k, v in series.items() if v}
    if error is None and scen in SCENARIO_METRICS:
        problems = validate_result(result)
        if problems:
            result["schema_problems"] = problems
    path = write_result(result, args.out)
    result["_path"] = str(path)
    print(f"wrote {path}", file=sys.stderr, flush=True)
    if args.plot and series:
        png = plot_latencies(
            series, f"{name} ({args.backend}) run {rep + 1}", path.with_suffix(".png")
        )
        if png:
            print(f"wrote {png}", file=sys.stderr)
    return result


async def cmd_run(args: argparse.Namespace) -> int:
    names = scenario_names(args.scenario)
    check_nodes(args)
    for name in names:  # refuse a layout that cannot work before starting anything
        plan_for(args, name, {**scenario_params(args, name)})
    server_cpus = parse_cpus(args.server_cpus)
    gen_cpus = parse_cpus(args.gen_cpus)
    if args.pin:
        ncpu = os.cpu_count() or 1
        if ncpu < 2:
            raise SystemExit("--pin needs 2 CPUs")
        server_cpus = server_cpus or [0]
        gen_cpus = gen_cpus or [1]
    if gen_cpus:
        # The server would inherit this process's pinning: give it the CPUs we had.
        server_cpus = server_cpus or sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(gen_cpus))
    extra = parse_extra_config(args.config)
    machine = machine_facts()
    args.src_root = snapshot_source() if args.snapshot and not args.target else None
    try:
        return await _run_all(args, names, server_cpus, gen_cpus, extra, machine)
    finally:
        if args.src_root is not None:
            shutil.rmtree(args.src_root, ignore_errors=True)


async def _run_all(
    args: argparse.Namespace,
    names: list[str],
    server_cpus: list[int] | None,
    gen_cpus: list[int] | None,
    extra: dict[str, dict[str, Any]],
    machine: dict[str, Any],
) -> int:
    run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    results = []
    shared = None
    if args.reuse_server and not args.target:
        shared = start_under_test(args, server_cpus, extra)
    try:
        for name in names:
            for rep in range(args.repeat):
                for attempt in range(args.noise_retries + 1):
                    r = await _run_one(
                        args,
                        name,
                        rep,
                        run_id,
                        attempt,
                        machine,
                        shared,
                        server_cpus,
                        gen_cpus,
                        extra,
                    )
                    results.append(r)
                    why = _suspect(r, args.noise_limit)
                    if why:
                        r["suspect"] = why
                    if not (args.noise_limit and why and attempt < args.noise_retries):
                        break
                    r["discarded"] = why
                    Path(r["_path"]).write_text(
                        json.dumps({k: v for k, v in r.items() if k != "_path"}, indent=2) + "\n"
                    )
                    print(f"{name} run {rep + 1}: {r['discarded']}; again", file=sys.stderr)
    finally:
        if shared is not None:
            stop_under_test(shared)
    table = markdown_table(results)
    dirty = " (dirty)" if machine["git_dirty"] else ""
    header = (
        f"## pushtwisted bench {run_id}\n\n"
        f"`{shlex.join(['python', '-m', 'bench', *sys.argv[1:]])}`\n\n"
        f"{machine['cpu_model']}, {machine['cores']} cores, Python {machine['python']}, "
        f"Twisted {machine['twisted']}, Autobahn {machine['autobahn']}, "
        f"commit {(machine['git_commit'] or '?')[:10]}{dirty}"
        f"{f', {args.nodes} server nodes' if args.nodes > 1 else ''}\n\n"
    )
    failed = [r for r in results if not r["ok"] and not r.get("discarded")]
    kept = [r for r in results if not r.get("discarded")]
    problems = [p for r in kept for p in _strict_problems(r)] if args.strict else []
    footer = ""
    if failed:
        footer = (
            "\n**failed runs:**\n\n"
            + "\n".join(f"- {r['scenario']} r{r['repeat_index']}: {r['error']}" for r in failed)
            + "\n"
        )
    suspects = [r for r in results if r.get("suspect") and not r.get("discarded")]
    if suspects:
        footer += "\n**runs kept although suspect** (retries used up, or `--noise-limit` off):\n\n"
        footer += "\n".join(
            f"- {r['scenario']}{'/' + r['params']['mode'] if r['params'].get('mode') else ''} "
            f"r{r['repeat_index']}: {r['suspect']}"
            for r in suspects
        )
        footer += "\n"
    md = header + table + footer
    args.out.mkdir(parents=True, exist_ok=True)
    md_path = args.out / f"{run_id}-summary.md"
    md_path.write_text(md)
    print(md)
    print(f"wrote {md_path}", file=sys.stderr)
    for p in problems:
        print(f"strict: {p}", file=sys.stderr)
    return 1 if failed or problems else 0


#: A generator above this share of its core may be what limits the figure.
GENERATOR_BOUND_PCT = 85.0


def _suspect(r: dict[str, Any], noise_limit: float) -> str | None:
    """Why a run's figures may not measure the server (None if they do)."""
    m = r.get("metrics", {})
    noise = m.get("machine", {}).get("other_cpu_pct")
    if noise_limit and noise is not None and noise > noise_limit:
        return f"noisy: other CPU {noise}% > {noise_limit}%"
    gen = m.get("generator_cpu_pct")
    if gen is not None and gen > GENERATOR_BOUND_PCT:
        sys_pct = m.get("generator_sys_pct")
        detail = f" ({sys_pct}% in the kernel)" if sys_pct is not None else ""
        return f"generator-bound: generator CPU {gen}%{detail} > {GENERATOR_BOUND_PCT}%"
    return None


def _strict_problems(r: dict[str, Any]) -> list[str]:
    """What ``--strict`` fails a run for: loss, duplicates, missing updates, any failure."""
    m = r.get("metrics", {})
    tag = f"{r['scenario']}{'/' + m['mode'] if m.get('mode') else ''} r{r['repeat_index']}"
    out = []
    for key in ("lost", "duplicates", "stale", "missing", "unexpected"):
        if m.get(key):
            out.append(f"{tag}: {key} = {m[key]}")
    if r.get("failures"):
        out.append(f"{tag}: failures {r['failures']}")
    if m.get("dropped_during_hold"):
        out.append(f"{tag}: {m['dropped_during_hold']} connections dropped during the hold")
    if m.get("not_answering"):
        out.append(f"{tag}: {m['not_answering']} devices not answering after the ramp")
    if (m.get("verify") or {}).get("undelivered"):
        out.append(f"{tag}: {m['verify']['undelivered']} verify PUTs not delivered")
    return out
