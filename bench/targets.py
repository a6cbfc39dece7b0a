"""The targets of issue 13 and earlier: which apply to a result, and whether it meets them."""

from __future__ import annotations

from typing import Any

__all__ = ["TARGETS", "check_targets", "metric_value"]


#: name, scenario (the result's kind), mode (absent: any; "": runs without a mode),
#: metric path, op, target, the size it is defined at (``exact``: equal, not at least)
TARGETS: list[dict[str, Any]] = [
    {
        "name": "memory per idle connection (KB)",
        "scenario": "connect",
        "mode": "",
        "metric": "kb_per_conn",
        "op": "<=",
        "target": 10.0,
        "size": {"devices": 19500},
    },
    {
        "name": "connection rate (/s)",
        "scenario": "connect",
        "mode": "",
        "metric": "connect_rate",
        "op": ">=",
        "target": 3500.0,
        "size": {"devices": 19500},
    },
    {
        "name": "GC pause (ms)",
        "scenario": "connect",
        "mode": "",
        "metric": "gc_pause_ms",
        "op": "<=",
        "target": 50.0,
        "size": {"devices": 19500},
    },
    {
        "name": "notifications/s saturated",
        "scenario": "notify",
        "mode": "saturated",
        "metric": "throughput",
        "op": ">=",
        "target": 5000.0,
        "size": {"devices": 10000, "backend": "memory"},
    },
    {
        "name": "lost notifications",
        "scenario": "notify",
        "metric": "lost",
        "op": "<=",
        "target": 0,
        "size": {},
    },
    {
        "name": "p99 latency at 1,000/s (ms)",
        "scenario": "notify",
        "mode": "rate",
        "metric": "latency.p99",
        "op": "<=",
        "target": 5.0,
        "size": {"rate": 1000.0},
    },
    {
        "name": "churn cycles/s",
        "scenario": "churn",
        "metric": "cycles_per_s",
        "op": ">=",
        "target": 1200.0,
        "size": {"devices": 100},
        "exact": True,
    },
    {
        "name": "churn missing",
        "scenario": "churn",
        "metric": "missing",
        "op": "<=",
        "target": 0,
        "size": {},
    },
    {
        "name": "cluster connections/s (12 nodes, shared ports)",
        "scenario": "connect",
        "mode": "verify",
        "metric": "connect_rate",
        "op": ">=",
        "target": 2000.0,
        "size": {"devices": 200000, "nodes": 12, "shared_ports": True, "backend": "memcached"},
    },
    {
        "name": "devices not answering after the ramp",
        "scenario": "connect",
        "metric": "not_answering",
        "op": "<=",
        "target": 0,
        "size": {},
    },
    {
        "name": "verify PUTs not delivered",
        "scenario": "connect",
        "mode": "verify",
        "metric": "verify.undelivered",
        "op": "<=",
        "target": 0,
        "size": {},
    },
]


def metric_value(metrics: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``latency.p99``) of a metrics dict, or None."""
    cur: Any = metrics
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets that apply to this result, with the value and whether it is met.

    ``at_target_size`` tells whether the run had the size the target is defined at
    (a 50-device run meeting the memory target says little).
    """
    out = []
    params = result.get("params", {})
    for t in TARGETS:
        if t["scenario"] != result.get("scenario"):
            continue
        if "mode" in t and (t["mode"] or None) != (params.get("mode") or None):
            continue
        value = metric_value(result.get("metrics", {}), t["metric"])
        if value is None:
            continue
        met = value <= t["target"] if t["op"] == "<=" else value >= t["target"]
        at_size = all(
            (params.get(k) == v) if t.get("exact") else _size_ok(result, params, k, v)
            for k, v in t["size"].items()
        )
        out.append(
            {
                "name": t["name"],
                "value": value,
                "op": t["op"],
                "target": t["target"],
                "met": bool(met),
                "at_target_size": at_size,
            }
        )
    return out


def _size_ok(result: dict[str, Any], params: dict[str, Any], key: str, want: Any) -> bool:
    """Numbers: the run was at least that big; strings (backend) and flags: equal."""
    have = result.get("backend") if key == "backend" else params.get(key)
    if isinstance(want, (str, bool)) or key == "rate":
        return bool((have or False) == want) if isinstance(want, bool) else bool(have == want)
    return isinstance(have, (int, float)) and bool(have >= want)
