"""The scenarios ``python -m bench run --scenario`` knows: the one place to add one.

A scenario is a ``ScenarioSpec``: its CLI name, the ``kind`` of result it
writes (``connect``, ``notify`` or ``churn``: the kind picks the summary table,
its columns and the targets that apply), an optional ``mode`` that keeps its
runs apart from the kind's other scenarios, the coroutine that runs it
(``bench.scenarios``), its sizes per preset, and which command-line options
override which of its parameters.

To add a scenario, write its runner next to the others (or reuse one with
other parameters, as ``webpush-notify`` reuses ``run_notify``) and append one
``ScenarioSpec`` here; a new *kind* also needs its columns in
``bench.results.HEADLINES`` and ``SCENARIO_METRICS``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.scenarios import GenOptions, Target, run_churn, run_connect, run_notify

__all__ = [
    "PRESET_NAMES",
    "CONCURRENCY",
    "ScenarioSpec",
    "SCENARIOS",
    "PRESETS",
    "scenario_names",
    "scenario_params",
    "http_connections",
]

#: Sizes and options shared by the saturated notify scenarios (SimplePush and WebPush).
_SATURATED_SIZES = {
    "tiny": {"devices": 50, "puts": 200, "inflight": 8},
    "moderate": {"devices": 2000, "puts": 20000, "inflight": 64},
    "full": {"devices": 10000, "puts": 50000, "inflight": 128},
}
_SATURATED_OPTIONS = {
    "devices": "notify_devices",
    "puts": "puts",
    "inflight": "inflight",
    "drain": "drain",
}

Runner = Callable[[Target, GenOptions, dict[str, Any]], Awaitable[dict[str, Any]]]

PRESET_NAMES = ("tiny", "moderate", "full")

#: Connection attempts in flight over all workers, per preset (``--concurrency``).
CONCURRENCY = {"tiny": 20, "moderate": 200, "full": 400}


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario: how to size it, run it and file its result."""

    name: str
    kind: str
    run: Runner
    sizes: dict[str, dict[str, Any]]
    #: parameter -> ``argparse`` destination that overrides it when given
    options: dict[str, str]
    #: parameters every run of it has (e.g. ``mode``)
    fixed: dict[str, Any] = field(default_factory=dict)
    #: part of ``--scenario all``
    in_all: bool = True
    help: str = ""


SCENARIOS: dict[str, ScenarioSpec] = {
    s.name: s
    for s in (
        ScenarioSpec(
            name="connect",
            kind="connect",
            run=run_connect,
            sizes={
                "tiny": {"devices": 50, "hold": 1.0},
                "moderate": {"devices": 5000, "hold": 5.0},
                "full": {"devices": 19500, "hold": 10.0},
            },
            options={"devices": "devices", "hold": "hold"},
            help="ramp N devices, hold, ping every device; RSS per connection",
        ),
        ScenarioSpec(
            name="notify",
            kind="notify",
            run=run_notify,
            sizes=_SATURATED_SIZES,
            options=_SATURATED_OPTIONS,
            fixed={"rate": 0.0, "mode": "saturated"},
            help="M PUTs with K in flight (saturated)",
        ),
        ScenarioSpec(
            name="notify-rate",
            kind="notify",
            run=run_notify,
            sizes={
                "tiny": {"devices": 50, "puts": 200, "rate": 200.0, "inflight": 64},
                "moderate": {"devices": 2000, "puts": 5000, "rate": 1000.0, "inflight": 64},
                "full": {"devices": 10000, "puts": 10000, "rate": 1000.0, "inflight": 64},
            },
            options={
                "devices": "notify_devices",
                "rate": "rate",
                "puts": "rate_puts",
                "drain": "drain",
            },
            fixed={"mode": "rate"},
            help="PUTs at a fixed rate",
        ),
        ScenarioSpec(
            name="webpush-notify",
            kind="notify",
            run=run_notify,
            sizes=_SATURATED_SIZES,
            options=_SATURATED_OPTIONS,
            fixed={"rate": 0.0, "mode": "webpush", "webpush": True, "body_bytes": 3072},
            help="WebPush: M POSTs of a 3 KB body with K in flight (saturated); devices "
            "say hello with use_webpush and ack each message by its id",
        ),
        ScenarioSpec(
            name="churn",
            kind="churn",
            run=run_churn,
            sizes={
                "tiny": {"devices": 10, "cycles": 20, "duration": 20.0},
                "moderate": {"devices": 100, "cycles": 5000, "duration": 60.0},
                "full": {"devices": 100, "cycles": 12000, "duration": 60.0},
            },
            options={"devices": "churn_devices", "cycles": "cycles", "duration": "duration"},
            help="disconnect, PUT while offline, reconnect with the same UAID",
        ),
        ScenarioSpec(
            name="connect-verify",
            kind="connect",
            run=run_connect,
            sizes={
                "tiny": {"devices": 60, "hold": 1.0, "inflight": 8},
                "moderate": {"devices": 3000, "hold": 5.0, "inflight": 64},
                "full": {"devices": 200000, "hold": 10.0, "inflight": 128},
            },
            options={
                "devices": "devices",
                "hold": "hold",
                "inflight": "inflight",
                "drain": "drain",
            },
            fixed={"mode": "verify", "verify_puts": True},
            in_all=False,
            help="connect, hold, ping every device, then one PUT per device with its delivery "
            "counted (the cluster target: --full is 200,000 devices; use with --nodes 12 "
            "--shared-ports)",
        ),
    )
}

#: Sizes per preset and scenario, plus the preset's ``concurrency`` (read-only view).
PRESETS: dict[str, dict[str, Any]] = {
    preset: {
        **{name: dict(spec.sizes[preset]) for name, spec in SCENARIOS.items()},
        "concurrency": CONCURRENCY[preset],
    }
    for preset in PRESET_NAMES
}


def scenario_names(text: str) -> list[str]:
    """The scenarios of a ``--scenario`` comma list (``all``: those marked ``in_all``)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(s.name for s in SCENARIOS.values() if s.in_all and s.name not in out)
        elif n not in SCENARIOS:
            raise SystemExit(f"unknown scenario {n!r} (one of {', '.join(SCENARIOS)}, all)")
        elif n not in out:
            out.append(n)
    return out


def scenario_params(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The parameters of one run: the preset's sizes, the options given, the fixed ones."""
    spec = SCENARIOS[name]
    p = dict(spec.sizes[args.preset])
    for param, dest in spec.options.items():
        value = getattr(args, dest, None)
        if value is not None:
            p[param] = value
    p.update(spec.fixed)
    return p


def http_connections(name: str, p: dict[str, Any], nodes: int, shared_ports: bool) -> int:
    """The generator's HTTP connections in one run of ``name`` (for ``plan_layout``).

    Saturated notify against several nodes on their own ports keeps one
    connection per in-flight slot *and* node; churn keeps one per device.
    """
    kind = SCENARIOS[name].kind
    if kind == "churn":
        return int(p["devices"])
    if kind == "notify" or p.get("verify_puts"):
        slots = int(p.get("inflight", 64))
        per_slot = nodes if nodes > 1 and not shared_ports and p.get("mode") != "rate" else 1
        return slots * per_slot
    return 0
