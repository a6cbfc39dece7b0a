"""What a scenario measures besides the generator's own samples: the target, CPU, RSS.

``Target`` is where the server under test listens (and its PIDs, its
memcached, a hook called when a measured phase starts and ends);
``ServerMeter`` takes the server's CPU seconds and the machine's busy time
over a phase; ``memcached_meter`` the memcached counters (``bench.mcstats``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.mcstats import MemcachedMeter
from bench.server import _CLK_TCK, cpu_seconds, rss_kb

__all__ = [
    "Target",
    "GenOptions",
    "ServerMeter",
    "split",
    "server_rss",
    "cpu_pct",
    "cpu_busy",
    "memcached_meter",
    "open_sockets",
]


@dataclass
class Target:
    """Where the server under test listens, and its PID (for RSS/CPU), if known."""

    ws_host: str
    ws_port: int
    pid: int | None = None
    subprotocol: str | None = None
    gc_probe: str | None = None
    #: A cluster (``--nodes N``): every node's PID (RSS/CPU are summed over them), its
    #: WebSocket port (devices are spread over them) and endpoint port (each PUT goes
    #: to a random one).  Empty: the single server above.
    pids: list[int] = field(default_factory=list)
    ws_ports: list[int] = field(default_factory=list)
    http_ports: list[int] = field(default_factory=list)
    #: The server's memcached (host, port) and PID, if known: its ``stats`` are taken
    #: before and after each phase (``metrics.memcached``).
    memcached: tuple[str, int] | None = None
    memcached_pid: int | None = None
    #: Called as ``phase_hook(target, phase, started)`` when a measured phase
    #: (``connect``, ``notify``, ``churn``) starts (True) and ends (False): the
    #: profiler (``python -m bench profile``) records exactly that span.
    phase_hook: Callable[[Target, str, bool], None] | None = None

    def all_pids(self) -> list[int]:
        return list(self.pids) or ([self.pid] if self.pid else [])

    def phase(self, name: str, started: bool) -> None:
        """Tell the hook (if any) that the measured phase ``name`` starts or ends."""
        if self.phase_hook is not None:
            self.phase_hook(self, name, started)


def memcached_meter(target: Target) -> MemcachedMeter | None:
    """A memcached meter started now, when the target has a memcached; None otherwise."""
    if target.memcached is None:
        return None
    host, port = target.memcached
    return MemcachedMeter(host, port, target.memcached_pid)


def open_sockets(pid: int) -> int | None:
    """Sockets ``pid`` holds open now (its ``/proc/<pid>/fd`` links to ``socket:``)."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    n = 0
    for name in names:
        try:
            if os.readlink(f"{base}/{name}").startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def server_rss(target: Target) -> int | None:
    """VmRSS summed over the server PIDs (None if one is gone or unknown)."""
    pids = target.all_pids()
    if not pids:
        return None
    vals = [rss_kb(p) for p in pids]
    return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)


@dataclass
class GenOptions:
    procs: int = 1
    cpus: list[int] | None = None
    ips: list[str] = field(default_factory=lambda: [f"127.0.0.{i}" for i in range(2, 10)])
    loop: str = "uvloop"
    timeout: float = 10.0
    concurrency: int = 200
    connect_rate: float = 0.0
    progress_interval: float = 2.0


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (earlier parts get the rest)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def cpu_pct(cpu: float | None, elapsed: float) -> float | None:
    return None if cpu is None or elapsed <= 0 else round(100.0 * cpu / elapsed, 1)


def cpu_busy() -> dict[str, float]:
    """Busy CPU seconds so far, machine-wide (``all``) and per CPU (``cpu0``...)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                name, *vals = line.split()
                v = [int(x) for x in vals]
                # user nice system idle iowait irq softirq steal (guest is in user already)
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
                out["all" if name == "cpu" else name] = busy / _CLK_TCK
    except OSError:
        pass
    return out


class ServerMeter:
    """CPU seconds of the server over a phase, and how busy each CPU was (noise check)."""

    def __init__(self, pids: int | list[int] | None) -> None:
        if isinstance(pids, int):
            pids = [pids]
        self.pids = [p for p in (pids or []) if p]
        self.c0 = self._cpu()
        self.b0 = cpu_busy()
        self.t0 = time.monotonic()

    def _cpu(self) -> float | None:
        """CPU seconds summed over the server PIDs (None if one is gone or unknown)."""
        if not self.pids:
            return None
        vals = [cpu_seconds(p) for p in self.pids]
        return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)

    def used(self) -> float | None:
        if self.c0 is None:
            return None
        c1 = self._cpu()
        return None if c1 is None else c1 - self.c0

    def machine(self, generator_cpu_s: float) -> dict[str, Any]:
        """Per-CPU busy % over the phase, and the CPU used by neither server nor generator.

        ``other_cpu_pct`` (percent of one core) is the noise: other processes on
        a shared machine.  High values make the run's figures suspect.
        """
        b1 = cpu_busy()
        elapsed = time.monotonic() - self.t0
        if elapsed <= 0 or not b1:
            return {}
        busy = {k: round(100.0 * (b1[k] - self.b0.get(k, 0.0)) / elapsed, 1) for k in b1}
        srv = self.used() or 0.0
        other = (b1.get("all", 0.0) - self.b0.get("all", 0.0)) - srv - generator_cpu_s
        return {
            "cpu_busy_pct": busy,
            "other_cpu_pct": round(max(0.0, 100.0 * other / elapsed), 1),
            "loadavg": loadavg(),
        }


def loadavg() -> list[str]:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return []
