"""``python -m bench run|profile|serve|summary ...``.  See bench/README.md."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import SCHEMA
from bench.interrupt import SignalFlag, announce, exit_code, run_interruptible
from bench.registry import PRESETS, SCENARIOS, scenario_params
from bench.results import RESULTS_DIR, markdown_table
from bench.runner import check_nodes, cmd_run, parse_cpus, parse_extra_config
from bench.server import start_server, stop_server

__all__ = [
    "PRESETS",
    "add_run_options",
    "build_parser",
    "check_nodes",
    "main",
    "scenario_params",
]


def add_run_options(run: argparse.ArgumentParser) -> None:
    """The options of ``run`` (``profile`` takes the same ones)."""
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
        "--shared-ports",
        action="store_true",
        help="with --nodes N: every node listens on the same WebSocket and endpoint ports "
        "with reuse_port = true (the kernel spreads connections); devices connect and PUTs "
        "go to those two ports",
    )
    run.add_argument(
        "--scenario",
        default="all",
        help="comma list of "
        + ", ".join(f"{s.name} ({s.help})" for s in SCENARIOS.values())
        + "; or all (= "
        + ", ".join(s.name for s in SCENARIOS.values() if s.in_all)
        + ")",
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
        "--procs",
        type=int,
        help="generator processes (default: picked from the devices and the open-file limit, "
        "1 per 15,000 devices at most)",
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
        default=None,
        help="spread client sockets over 127.0.0.2 .. 127.0.0.(N+1) (default: 8, or as many "
        "as the client sockets need at ~21,000 ports per address)",
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
        "--memcached",
        metavar="HOST:PORT",
        help="with --target: the server's memcached (loopback), whose stats are reported",
    )
    run.add_argument(
        "--memcached-pid", type=int, help="with --memcached: its PID (CPU and read() calls)"
    )
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


def build_parser() -> argparse.ArgumentParser:
    from bench.profiler import add_profile_parser

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a server, run scenarios, write results")
    add_run_options(run)
    add_profile_parser(sub, add_run_options)

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


def cmd_serve(args: argparse.Namespace) -> int:
    with SignalFlag() as flag:
        server = start_server(
            args.backend,
            cpus=parse_cpus(args.server_cpus),
            launcher=args.launcher,
            extra_config=parse_extra_config(args.config),
            keep_state=True,
        )
        try:
            info = {
                "pid": server.pid,
                "ws": f"ws://127.0.0.1:{server.ws_port}/",
                "endpoint": f"http://127.0.0.1:{server.http_port}",
                "state_dir": str(server.state_dir),
                "stops_in_s": args.seconds,
            }
            if server.memcached_port:
                info["memcached"] = f"127.0.0.1:{server.memcached_port}"
                info["memcached_pid"] = server.memcached_pid
            print(json.dumps(info), flush=True)
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline and server.alive() and flag.signum is None:
                time.sleep(0.2)
        finally:
            stop_server(server)
    if flag.signum is not None:
        announce(flag.signum, "stopped the server and memcached it started")
        return exit_code(flag.signum)
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
        return run_interruptible(cmd_run(args))
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "profile":
        from bench.profiler import cmd_profile

        return run_interruptible(cmd_profile(args))
    return cmd_summary(args)


if __name__ == "__main__":
    sys.exit(main())
