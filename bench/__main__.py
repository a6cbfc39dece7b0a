"""``python -m bench run ...`` / ``python -m bench summary FILES``.  See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import SCHEMA
from bench.results import (
    RESULTS_DIR,
    check_targets,
    histogram,
    machine_facts,
    markdown_table,
    plot_latencies,
    source_fingerprint,
    validate_result,
    write_result,
)
from bench.scenarios import SCENARIOS, GenOptions, Target
from bench.server import (
    snapshot_source,
    start_cluster,
    start_server,
    stop_cluster,
    stop_server,
)

SCENARIO_NAMES = ("connect", "notify", "notify-rate", "churn")

# Sizes per preset: devices for connect; devices/puts/inflight for notify; rate run; churn.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "connect": {"devices": 50, "hold": 1.0},
        "notify": {"devices": 50, "puts": 200, "inflight": 8},
        "notify-rate": {"devices": 50, "puts": 200, "rate": 200.0},
        "churn": {"devices": 10, "cycles": 20, "duration": 20.0},
        "concurrency": 20,
    },
    "moderate": {
        "connect": {"devices": 5000, "hold": 5.0},
        "notify": {"devices": 2000, "puts": 20000, "inflight": 64},
        "notify-rate": {"devices": 2000, "puts": 5000, "rate": 1000.0},
        "churn": {"devices": 100, "cycles": 5000, "duration": 60.0},
        "concurrency": 200,
    },
    "full": {
        "connect": {"devices": 19500, "hold": 10.0},
        "notify": {"devices": 10000, "puts": 50000, "inflight": 128},
        "notify-rate": {"devices": 10000, "puts": 10000, "rate": 1000.0},
        "churn": {"devices": 100, "cycles": 12000, "duration": 60.0},
        "concurrency": 400,
    },
}


def _cpus(text: str | None) -> list[int] | None:
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a server, run scenarios, write results")
    run.add_argument("--backend", default="memory", choices=["memory", "sqlite", "memcached"])
    run.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help="memcached only: N server processes configured as a cluster (shared token key "
        "and router secret, one private memcached); devices are spread over the nodes' "
        "WebSocket ports and every PUT goes to a random node's endpoint",
    )
    run.add_argument(
        "--scenario",
        default="all",
        help="comma list of connect, notify (saturated), notify-rate, churn; or all",
    )
    size = run.add_mutually_exclusive_group()
    size.add_argument(
        "--tiny",
        action="store_const",
        dest="preset",
        const="tiny",
        help="CI size: 50 devices, 200 PUTs, 20 churn cycles (< 30 s)",
    )
    size.add_argument(
        "--full",
        action="store_const",
        dest="preset",
        const="full",
        help="target size: 19,500 connections, 10,000 devices notify, ...",
    )
    run.set_defaults(preset="moderate")
    run.add_argument("--devices", type=int, help="connect: devices (default by preset)")
    run.add_argument("--hold", type=float, help="connect: seconds to hold before RSS and pings")
    run.add_argument("--notify-devices", type=int, help="notify: connected devices")
    run.add_argument("--puts", type=int, help="notify (saturated): PUTs")
    run.add_argument("--inflight", type=int, help="notify (saturated): PUTs in flight")
    run.add_argument("--rate", type=float, help="notify-rate: PUTs per second")
    run.add_argument("--rate-puts", type=int, help="notify-rate: PUTs")
    run.add_argument("--churn-devices", type=int, help="churn: devices")
    run.add_argument("--cycles", type=int, help="churn: total cycles")
    run.add_argument("--duration", type=float, help="churn: most seconds")
    run.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="notify: seconds to wait for outstanding notifications",
    )
    run.add_argument("--repeat", type=int, default=1, help="runs per scenario (medians reported)")
    run.add_argument(
        "--procs", type=int, help="generator processes (default: 1 per 15,000 devices)"
    )
    run.add_argument("--concurrency", type=int, help="connects in flight, over all workers")
    run.add_argument(
        "--connect-rate",
        type=float,
        default=0.0,
        help="ramp: most new connections per second (0 = as fast as concurrency allows)",
    )
    run.add_argument("--timeout", type=float, default=10.0, help="seconds per protocol step")
    run.add_argument(
        "--source-ips",
        type=int,
        default=8,
        help="spread client sockets over 127.0.0.2 .. 127.0.0.(N+1)",
    )
    run.add_argument(
        "--pin",
        action="store_true",
        help="server on CPU 0, generator on CPU 1 (same as --server-cpus 0 --gen-cpus 1)",
    )
    run.add_argument("--server-cpus", help="CPU list for the server, e.g. 0")
    run.add_argument("--gen-cpus", help="CPU list for the generator, e.g. 1")
    run.add_argument(
        "--loop",
        default="uvloop",
        choices=["uvloop", "asyncio"],
        help="generator event loop (uvloop if installed)",
    )
    run.add_argument(
        "--launcher",
        default="twistd",
        choices=["twistd", "module"],
        help="twistd: python -m twisted -n simplepush; module: python -m pushtwisted",
    )
    run.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra server config (TOML value), e.g. client.retry_interval=0",
    )
    run.add_argument(
        "--reuse-server",
        action="store_true",
        help="one server for all runs (default: a fresh server per run)",
    )
    run.add_argument(
        "--target",
        metavar="WS_URL",
        help="drive an already running server (ws://127.0.0.1:PORT/) instead",
    )
    run.add_argument("--server-pid", type=int, help="with --target: PID for RSS/CPU figures")
    run.add_argument(
        "--subprotocol",
        default=None,
        help="ask for this WebSocket subprotocol (e.g. push-notification)",
    )
    run.add_argument(
        "--gc-probe",
        metavar="URL",
        default=None,
        help="loopback URL of a server endpoint reporting GC pauses (JSON with "
        "max_pause_ms); off by default: pushtwisted exposes none yet",
    )
    run.add_argument(
        "--noise-limit",
        type=float,
        default=0.0,
        metavar="PCT",
        help="re-run a run when other processes used more than PCT %% of a core during its "
        "measured phase (0 = off); the noisy run is kept on disk, marked discarded",
    )
    run.add_argument("--noise-retries", type=int, default=2, help="most re-runs per run")
    run.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="hard limit per run; the run is abandoned after it",
    )
    run.add_argument("--out", type=Path, default=RESULTS_DIR, help="result directory")
    run.add_argument("--plot", action="store_true", help="also write a latency CDF PNG per run")
    run.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 also when a run lost or duplicated notifications, missed churn updates "
        "or had failures of any kind (for CI)",
    )
    run.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the servers from the work tree itself (default: from a copy taken at "
        "start, so all runs measure the same code while the tree is edited)",
    )
    run.add_argument("--keep-state", action="store_true", help="keep the server's state dir/log")

    serve = sub.add_parser(
        "serve", help="start a bench-configured server and keep it up (for --target, py-spy)"
    )
    serve.add_argument("--backend", default="memory", choices=["memory", "sqlite", "memcached"])
    serve.add_argument("--server-cpus", help="CPU list for the server, e.g. 0")
    serve.add_argument("--launcher", default="twistd", choices=["twistd", "module"])
    serve.add_argument("--config", action="append", default=[], metavar="SECTION.KEY=VALUE")
    serve.add_argument("--seconds", type=float, default=600.0, help="stop after this long")

    summ = sub.add_parser("summary", help="median-of-runs Markdown table from result files")
    summ.add_argument("files", nargs="+", type=Path)
    summ.add_argument("--md", type=Path, help="also write the table to this file")
    return ap


def check_nodes(args: argparse.Namespace) -> None:
    """``--nodes``: at least 1; more than 1 needs the memcached backend and its own servers."""
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


def _start(
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
        )
    return start_server(
        args.backend,
        cpus=server_cpus,
        launcher=args.launcher,
        extra_config=extra,
        keep_state=args.keep_state,
        src_root=args.src_root,
    )


def _stop(server: Any) -> None:
    if hasattr(server, "nodes"):
        stop_cluster(server)
    else:
        stop_server(server)


def _parse_extra_config(items: list[str]) -> dict[str, dict[str, Any]]:
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


def scenario_params(args: argparse.Namespace, name: str) -> dict[str, Any]:
    preset = PRESETS[args.preset]
    p = dict(preset[name])
    if name == "connect":
        if args.devices is not None:
            p["devices"] = args.devices
        if args.hold is not None:
            p["hold"] = args.hold
    elif name in ("notify", "notify-rate"):
        if args.notify_devices is not None:
            p["devices"] = args.notify_devices
        if name == "notify":
            if args.puts is not None:
                p["puts"] = args.puts
            if args.inflight is not None:
                p["inflight"] = args.inflight
            p["rate"] = 0.0
            p["mode"] = "saturated"
        else:
            if args.rate is not None:
                p["rate"] = args.rate
            if args.rate_puts is not None:
                p["puts"] = args.rate_puts
            p.setdefault("inflight", 64)
            p["mode"] = "rate"
        p["drain"] = args.drain
    elif name == "churn":
        if args.churn_devices is not None:
            p["devices"] = args.churn_devices
        if args.cycles is not None:
            p["cycles"] = args.cycles
        if args.duration is not None:
            p["duration"] = args.duration
    return p


def _scenarios(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if "all" in names:
        return list(SCENARIO_NAMES)
    for n in names:
        if n not in SCENARIO_NAMES:
            raise SystemExit(f"unknown scenario {n!r} (one of {', '.join(SCENARIO_NAMES)}, all)")
    return names


def _gen_options(args: argparse.Namespace, devices: int, gen_cpus: list[int] | None) -> GenOptions:
    preset = PRESETS[args.preset]
    procs = args.procs or max(1, math.ceil(devices / 15000))
    n_ips = max(1, min(args.source_ips, 250))
    return GenOptions(
        procs=procs,
        cpus=gen_cpus,
        ips=[f"127.0.0.{i}" for i in range(2, 2 + n_ips)],
        loop=args.loop,
        timeout=args.timeout,
        concurrency=args.concurrency or preset["concurrency"],
        connect_rate=args.connect_rate,
    )


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
    scen = "notify" if name.startswith("notify") else name
    gen = _gen_options(args, int(p["devices"]), gen_cpus)
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
            server_info = {
                "external": args.target,
                "pid": args.server_pid,
                "source": source_fingerprint(),
            }
        else:
            if server is None:
                server = _start(args, server_cpus, extra_config)
                own_server = True
            target = Target(
                "127.0.0.1", server.ws_port, server.pid, args.subprotocol, args.gc_probe
            )
            if hasattr(server, "nodes"):
                target.pids = server.pids
                target.ws_ports = server.ws_ports
                target.http_ports = server.http_ports
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
                        "accounting": "RSS and CPU summed over the node PIDs (not memcached)",
                    }
                )
        print(
            f"== {name} run {rep + 1}/{args.repeat} backend={args.backend} nodes={args.nodes} "
            f"params={json.dumps(p)} procs={gen.procs}",
            file=sys.stderr,
            flush=True,
        )
        async with asyncio.timeout(args.max_seconds):
            out = await SCENARIOS[scen](target, gen, p)
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
            _stop(server)
            server_info["exit_code"] = server.info.get("exit_code")
    gen_info = {
        "procs": gen.procs,
        "cpus": gen.cpus,
        "loop": gen.loop,
        "source_ips": gen.ips,
        "concurrency": gen.concurrency,
        "connect_rate": gen.connect_rate,
        "timeout_s": gen.timeout,
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
    result["targets"] = check_targets(result)
    series = out.get("series", {})
    result["histograms"] = {k: histogram(v) for k, v in series.items() if v}
    if error is None and scen in ("connect", "notify", "churn"):
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
    names = _scenarios(args.scenario)
    check_nodes(args)
    server_cpus = _cpus(args.server_cpus)
    gen_cpus = _cpus(args.gen_cpus)
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
    extra = _parse_extra_config(args.config)
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
        shared = _start(args, server_cpus, extra)
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
            _stop(shared)
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
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    server = start_server(
        args.backend,
        cpus=_cpus(args.server_cpus),
        launcher=args.launcher,
        extra_config=_parse_extra_config(args.config),
        keep_state=True,
    )
    info = {
        "pid": server.pid,
        "ws": f"ws://127.0.0.1:{server.ws_port}/",
        "endpoint": f"http://127.0.0.1:{server.http_port}",
        "state_dir": str(server.state_dir),
        "stops_in_s": args.seconds,
    }
    print(json.dumps(info), flush=True)
    try:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and server.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    results = []
    for f in args.files:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"{f}: {e}", file=sys.stderr)
            continue
        if r.get("schema") != SCHEMA:
            print(f"{f}: not a {SCHEMA} result, skipped", file=sys.stderr)
            continue
        if not r.get("ok"):
            print(f"{f}: failed run ({r.get('error')}), skipped", file=sys.stderr)
            continue
        if r.get("discarded"):
            print(f"{f}: discarded ({r['discarded']}), skipped", file=sys.stderr)
            continue
        results.append(r)
    if not results:
        print("no results", file=sys.stderr)
        return 1
    md = markdown_table(results)
    print(md)
    if args.md:
        args.md.write_text(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return asyncio.run(cmd_run(args))
    if args.command == "serve":
        return cmd_serve(args)
    return cmd_summary(args)


if __name__ == "__main__":
    sys.exit(main())
