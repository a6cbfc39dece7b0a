"""Result files: machine facts, the JSON schema, Markdown tables.

Targets live in ``bench.targets``, histograms and plots in ``bench.plots``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import SCHEMA
from bench.plots import histogram, plot_latencies
from bench.server import REPO_ROOT
from bench.stats import median
from bench.targets import TARGETS, check_targets, metric_value

__all__ = [
    "RESULTS_DIR",
    "TARGETS",
    "machine_facts",
    "check_targets",
    "validate_result",
    "write_result",
    "headline",
    "HEADLINES",
    "OPTIONAL_COLUMNS",
    "SCENARIO_METRICS",
    "memcached_table",
    "summary_rows",
    "markdown_table",
    "histogram",
    "plot_latencies",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_fingerprint(src_root: Path | None = None) -> dict[str, Any]:
    """What server code a run measured: git HEAD, dirty flag, and a hash of the source files.

    Taken per run, so a tree edited while a long benchmark runs shows up as a
    changed ``tree_hash`` (and the summary keeps such runs apart).
    """
    root = src_root or REPO_ROOT
    h = hashlib.sha256()
    files = sorted([*root.glob("pushtwisted/**/*.py"), *root.glob("twisted/plugins/*.py")])
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            continue
        h.update(str(f.relative_to(root)).encode() + b"\0" + data + b"\0")
    status = _git("status", "--porcelain", "--", "pushtwisted", "twisted")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "tree_hash": h.hexdigest()[:12],
        "snapshot": src_root is not None,
    }


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, kernel, versions, git commit: what a reader needs to compare runs."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or None,
    )
    mem_kb = next(
        (
            int(ln.split()[1])
            for ln in _read("/proc/meminfo").splitlines()
            if ln.startswith("MemTotal")
        ),
        None,
    )
    status = _git("status", "--porcelain", "--", "pushtwisted", "twisted")
    import resource

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "mem_total_mb": mem_kb // 1024 if mem_kb else None,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "twisted": _version("Twisted"),
        "autobahn": _version("autobahn"),
        "txaio": _version("txaio"),
        "uvloop": _version("uvloop"),
        "pushtwisted": _version("pushtwisted"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "somaxconn": _read("/proc/sys/net/core/somaxconn").strip() or None,
        "ip_local_port_range": " ".join(_read("/proc/sys/net/ipv4/ip_local_port_range").split())
        or None,
        "loadavg": _read("/proc/loadavg").split()[:3],
    }


#: Keys every result has (``validate_result`` checks them).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "scenario": str,
    "backend": str,
    "run_id": str,
    "repeat_index": int,
    "started_at": str,
    "duration_s": (int, float),
    "command": list,
    "params": dict,
    "machine": dict,
    "server": dict,
    "generator": dict,
    "metrics": dict,
    "failures": dict,
    "targets": list,
    "ok": bool,
}

#: Metrics each scenario must report.
SCENARIO_METRICS = {
    "connect": ["connected", "connect_rate", "latency", "kb_per_conn", "ping"],
    "notify": ["sent", "received", "lost", "duplicates", "throughput", "latency", "statuses"],
    "churn": ["cycles", "cycles_per_s", "missing", "latency"],
}


def validate_result(result: dict[str, Any]) -> list[str]:
    """Problems with a result dictionary (empty list when it is well formed)."""
    errors = []
    for key, tp in REQUIRED.items():
        if key not in result:
            errors.append(f"missing {key}")
        elif not isinstance(result[key], tp):
            errors.append(f"{key} has type {type(result[key]).__name__}")
    if result.get("schema") not in (None, SCHEMA):
        errors.append(f"schema {result.get('schema')!r} != {SCHEMA!r}")
    scen = result.get("scenario")
    if scen in SCENARIO_METRICS and isinstance(result.get("metrics"), dict):
        for key in SCENARIO_METRICS[scen]:
            if key not in result["metrics"]:
                errors.append(f"metrics.{key} missing")
    elif scen not in SCENARIO_METRICS:
        errors.append(f"unknown scenario {scen!r}")
    for k, v in (result.get("failures") or {}).items():
        if not isinstance(k, str) or not isinstance(v, int):
            errors.append(f"failures.{k} is not a count")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as e:
        errors.append(f"not JSON: {e}")
    return errors


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = result.get("params", {}).get("mode")
    scen = result["scenario"] + (f"-{mode}" if mode else "")
    attempt = result.get("attempt", 0)
    suffix = f"-a{attempt}" if attempt else ""
    name = f"{result['run_id']}-{scen}-{result['backend']}-r{result['repeat_index']}{suffix}.json"
    path = out_dir / name
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


# -- Markdown ------------------------------------------------------------------

# (column title, metric path, format)
HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "connect": [
        ("connected", "connected", "{:,.0f}"),
        ("conn/s", "connect_rate", "{:,.0f}"),
        ("mc ops/conn", "memcached.total_per_unit", "{:.2f}"),
        ("mc reads/conn", "memcached.reads_per_unit", "{:.2f}"),
        ("mc CPU µs/conn", "memcached.cpu_us_per_unit", "{:,.1f}"),
        ("not answering", "not_answering", "{:,.0f}"),
        ("verify undelivered", "verify.undelivered", "{:,.0f}"),
        ("KB/conn", "kb_per_conn", "{:.2f}"),
        ("ws p50 ms", "latency.ws.p50", "{:.2f}"),
        ("ws p99 ms", "latency.ws.p99", "{:.2f}"),
        ("hello p99 ms", "latency.hello.p99", "{:.2f}"),
        ("register p99 ms", "latency.register.p99", "{:.2f}"),
        ("total p99 ms", "latency.total.p99", "{:.2f}"),
        ("ping p99 ms", "ping.latency.p99", "{:.2f}"),
        ("srv CPU %", "server_cpu_pct", "{:.0f}"),
        ("gen CPU %", "generator_cpu_pct", "{:.0f}"),
        ("other CPU %", "machine.other_cpu_pct", "{:.0f}"),
        ("failures", "failure_count", "{:,.0f}"),
    ],
    "notify": [
        ("devices", "devices", "{:,.0f}"),
        ("PUTs", "sent", "{:,.0f}"),
        ("notif/s", "throughput", "{:,.0f}"),
        ("mc ops/notif", "memcached.total_per_unit", "{:.2f}"),
        ("mc reads/notif", "memcached.reads_per_unit", "{:.2f}"),
        ("mc CPU µs/notif", "memcached.cpu_us_per_unit", "{:,.1f}"),
        ("p50 ms", "latency.p50", "{:.2f}"),
        ("p95 ms", "latency.p95", "{:.2f}"),
        ("p99 ms", "latency.p99", "{:.2f}"),
        ("max ms", "latency.max", "{:.2f}"),
        ("lost", "lost", "{:,.0f}"),
        ("dup", "duplicates", "{:,.0f}"),
        ("stale", "stale", "{:,.0f}"),
        ("HTTP errors", "http_errors", "{:,.0f}"),
        ("srv CPU %", "server_cpu_pct", "{:.0f}"),
        ("gen CPU %", "generator_cpu_pct", "{:.0f}"),
        ("other CPU %", "machine.other_cpu_pct", "{:.0f}"),
    ],
    "churn": [
        ("devices", "devices", "{:,.0f}"),
        ("cycles", "cycles", "{:,.0f}"),
        ("cycles/s", "cycles_per_s", "{:,.0f}"),
        ("mc ops/cycle", "memcached.total_per_unit", "{:.2f}"),
        ("mc reads/cycle", "memcached.reads_per_unit", "{:.2f}"),
        ("mc CPU µs/cycle", "memcached.cpu_us_per_unit", "{:,.1f}"),
        ("missing", "missing", "{:,.0f}"),
        ("cycle p50 ms", "latency.p50", "{:.2f}"),
        ("cycle p99 ms", "latency.p99", "{:.2f}"),
        ("failures", "failure_count", "{:,.0f}"),
        ("srv CPU %", "server_cpu_pct", "{:.0f}"),
        ("gen CPU %", "generator_cpu_pct", "{:.0f}"),
        ("other CPU %", "machine.other_cpu_pct", "{:.0f}"),
    ],
}


#: Columns shown only when some row of the table has a value (memcached runs, connect-verify).
OPTIONAL_COLUMNS = frozenset(
    title
    for cols in HEADLINES.values()
    for title, path, _fmt in cols
    if path.startswith(("memcached.", "verify."))
)


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The values of the Markdown columns for one result."""
    cols = HEADLINES.get(result.get("scenario", ""), [])
    return {title: metric_value(result.get("metrics", {}), path) for title, path, _ in cols}


def _group_key(r: dict[str, Any]) -> tuple[Any, ...]:
    p = r.get("params", {})
    return (
        r.get("scenario"),
        p.get("mode") or "",
        r.get("backend"),
        p.get("devices"),
        p.get("puts"),
        p.get("rate"),
        p.get("cycles"),
        bool(r.get("server", {}).get("cpus")),
        r.get("server", {}).get("source", {}).get("tree_hash"),
        result_nodes(r),
        bool(p.get("shared_ports")),
    )


def result_nodes(r: dict[str, Any]) -> int:
    """Server processes of a run (1 for results written before ``--nodes``)."""
    return int(r.get("nodes") or r.get("params", {}).get("nodes") or 1)


def summary_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group results of the same scenario, mode, backend and size; medians of each column.

    Runs marked ``discarded`` (re-run because of machine noise) are left out.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("discarded"):
            continue
        groups.setdefault(_group_key(r), []).append(r)
    rows = []
    for key, rs in groups.items():
        scen = key[0]
        values = {}
        for title, _path, _fmt in HEADLINES.get(scen, []):
            values[title] = median(headline(r)[title] for r in rs)
        mc = _memcached_medians(rs)
        targets: dict[str, list[dict[str, Any]]] = {}
        for r in rs:
            for t in r.get("targets", []):
                targets.setdefault(t["name"], []).append(t)
        tsum = []
        for name, ts in targets.items():
            med = median(t["value"] for t in ts)
            t0 = ts[0]
            met = med is not None and (
                med <= t0["target"] if t0["op"] == "<=" else med >= t0["target"]
            )
            tsum.append(
                {
                    "name": name,
                    "median": med,
                    "op": t0["op"],
                    "target": t0["target"],
                    "met": met,
                    "at_target_size": all(t["at_target_size"] for t in ts),
                }
            )
        rows.append(
            {
                "scenario": scen,
                "mode": key[1],
                "backend": key[2],
                "runs": len(rs),
                "pinned": key[7],
                "source": key[8],
                "nodes": key[9],
                "shared_ports": key[10],
                "values": values,
                "memcached": mc,
                "targets": tsum,
            }
        )
    return rows


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return "–"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


#: The memcached breakdown table: column title -> how it is made from a run's
#: ``metrics.memcached.ops`` deltas (summed counters), per delivered unit.
MEMCACHED_COLUMNS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("get (keys)", ("cmd_get",), ()),
    ("get misses", ("get_misses",), ()),
    ("set", ("cmd_set",), ("cas_hits", "cas_misses", "cas_badval")),
    ("cas", ("cas_hits", "cas_misses", "cas_badval"), ()),
    ("cas badval", ("cas_badval",), ()),
    ("touch", ("cmd_touch",), ()),
    ("delete", ("delete_hits", "delete_misses"), ()),
    ("incr/decr", ("incr_hits", "incr_misses", "decr_hits", "decr_misses"), ()),
]


def _memcached_medians(rs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-unit medians of the memcached breakdown over runs (None: no memcached figures)."""
    blocks = [
        b
        for b in (r.get("metrics", {}).get("memcached") for r in rs)
        if isinstance(b, dict) and b.get("units") and isinstance(b.get("ops"), dict)
    ]
    if not blocks:
        return None
    out: dict[str, Any] = {"unit": blocks[0].get("unit")}
    for title, plus, minus in MEMCACHED_COLUMNS:
        out[title] = median(
            (sum(b["ops"].get(k, 0) for k in plus) - sum(b["ops"].get(k, 0) for k in minus))
            / b["units"]
            for b in blocks
        )
    out["total"] = median(b.get("total_per_unit") for b in blocks)
    out["reads"] = median(b.get("reads_per_unit") for b in blocks)
    out["CPU µs"] = median(b.get("cpu_us_per_unit") for b in blocks)
    out["CPU %"] = median(b.get("cpu_pct") for b in blocks)
    return out


def _row_label(r: dict[str, Any]) -> str:
    shared = " shared" if r.get("shared_ports") else ""
    return (
        f"| {r['backend']} | {r['nodes']}{shared} | {r['mode'] or '-'} | {r['source'] or '-'} | "
        f"{r['runs']} | "
    )


def memcached_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: memcached operations per delivered unit, by command (medians)."""
    mrows = [r for r in rows if r.get("memcached")]
    if not mrows:
        return []
    titles = [t for t, _p, _m in MEMCACHED_COLUMNS] + ["total", "reads", "CPU µs", "CPU %"]
    out = [
        "### memcached per delivered unit (medians; from memcached's own stats)\n",
        "| scenario | backend | nodes | mode | code | runs | per | " + " | ".join(titles) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(titles),
    ]
    for r in mrows:
        mc = r["memcached"]
        cells = [_fmt(mc.get(t), "{:,.1f}" if t.startswith("CPU") else "{:.2f}") for t in titles]
        out.append(
            f"| {r['scenario']} "
            + _row_label(r)
            + f"{mc.get('unit') or '-'} | "
            + " | ".join(cells)
            + " |"
        )
    out.append("")
    return out


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: one table per scenario kind (medians over repeats), the memcached
    breakdown, then the targets.  Optional columns (memcached, verify) are shown
    only when a row of the table has them."""
    rows = summary_rows(results)
    out: list[str] = []
    for scen, all_cols in HEADLINES.items():
        srows = [r for r in rows if r["scenario"] == scen]
        if not srows:
            continue
        cols = [
            c
            for c in all_cols
            if c[0] not in OPTIONAL_COLUMNS or any(r["values"][c[0]] is not None for r in srows)
        ]
        out.append(f"### {scen}\n")
        out.append(
            "| backend | nodes | mode | code | runs | " + " | ".join(c[0] for c in cols) + " |"
        )
        out.append("|---|---|---|---|---|" + "---|" * len(cols))
        for r in srows:
            cells = [_fmt(r["values"][title], fmt) for title, _p, fmt in cols]
            out.append(_row_label(r) + " | ".join(cells) + " |")
        out.append("")
    out.extend(memcached_table(rows))
    trows = [(r, t) for r in rows for t in r["targets"]]
    if trows:
        out.append("### targets (medians)\n")
        out.append("| target | scenario | backend | median | goal | met | at target size |")
        out.append("|---|---|---|---|---|---|---|")
        for r, t in trows:
            out.append(
                f"| {t['name']} | {r['scenario']}{'/' + r['mode'] if r['mode'] else ''} | "
                f"{r['backend']} | {_fmt(t['median'], '{:,.2f}')} | {t['op']} {t['target']:,} | "
                f"{'yes' if t['met'] else '**no**'} | {'yes' if t['at_target_size'] else 'no'} |"
            )
        out.append("")
    return "\n".join(out)
