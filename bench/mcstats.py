"""memcached's own view of a run: command counters, read() calls and CPU, before and after.

memcached answers ``stats`` on its text protocol with ``STAT <name> <value>``
lines.  The bench takes one snapshot when a measured phase starts and one
when it ends; the differences, divided by what the phase delivered
(notifications, churn cycles, connections), are the "memcached operations
per notification" of issue 13.

What the counters mean (memcached 1.6):

- ``cmd_get`` counts **keys**, not requests: ``get``/``gets`` of 32 keys
  (pymemcache's ``get_many``/``gets_many``) is 32 ``cmd_get`` but one request;
  ``get_hits + get_misses == cmd_get``.
- ``cmd_set`` counts every storage command: ``set``, ``add``, ``replace``,
  ``append``, ``prepend`` **and** ``cas``; ``cas_hits``/``cas_misses``/
  ``cas_badval`` split the ``cas`` ones (they are inside ``cmd_set``).
- ``delete_*``, ``incr_*``, ``decr_*``, ``touch_*``: one per command, by outcome.

So the **total** (``TOTAL_PARTS``) counts each keyed operation once:
``cmd_get + cmd_set + cmd_touch + cmd_flush + delete + incr + decr``.
memcached has no counter of requests or round trips.  The closest figure it
gives away is its ``read()`` calls (``syscr`` in ``/proc/<pid>/io``): it
reads once per batch of bytes that arrive together, so N separate gets cost
about N reads and one ``get_many`` of N keys about one (pipelined or
``noreply`` commands that arrive together share a read).  ``reads`` is that
figure, including the two or three reads of the bench's own ``stats``
connection; it needs the PID, so it is missing for a memcached the bench did
not start.  memcached's CPU is its own ``rusage_user + rusage_system`` from
``stats`` (``utime + stime`` of the process, in microseconds); ``proc_cpu_s``
is the same from ``/proc/<pid>/stat`` (10 ms ticks) when the PID is known.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMMAND_STATS",
    "TOTAL_PARTS",
    "McSnapshot",
    "MemcachedMeter",
    "command_deltas",
    "parse_stats",
    "per_unit",
    "proc_reads",
    "read_stats",
    "summarize_deltas",
]

#: The counters reported per phase (differences of ``stats``), in display order.
COMMAND_STATS = (
    "cmd_get",
    "get_hits",
    "get_misses",
    "get_expired",
    "get_flushed",
    "cmd_set",
    "cas_hits",
    "cas_misses",
    "cas_badval",
    "cmd_touch",
    "touch_hits",
    "touch_misses",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
    "cmd_flush",
    "cmd_meta",
    "bytes_read",
    "bytes_written",
    "total_connections",
)

#: The counters whose sum is the total of keyed operations (each counted once).
TOTAL_PARTS = (
    "cmd_get",
    "cmd_set",
    "cmd_touch",
    "cmd_flush",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_stats(data: bytes) -> dict[str, int | float | str]:
    """The ``STAT name value`` lines of a ``stats`` answer (numbers parsed where they are)."""
    out: dict[str, int | float | str] = {}
    for raw in data.split(b"\r\n"):
        line = raw.decode("ascii", "replace")
        if not line.startswith("STAT "):
            continue
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        name, value = parts[1], parts[2]
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = value
    return out


def read_stats(host: str, port: int, timeout: float = 5.0) -> dict[str, int | float | str]:
    """Ask memcached for ``stats`` on a fresh connection (OSError if it does not answer)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("memcached closed the stats connection")
            buf += chunk
            if buf.startswith((b"ERROR", b"SERVER_ERROR", b"CLIENT_ERROR")):
                raise OSError(f"memcached refused stats: {buf[:80]!r}")
    return parse_stats(buf)


def proc_reads(pid: int | None) -> int | None:
    """``read()`` calls of ``pid`` so far (``syscr`` in ``/proc/<pid>/io``; None if unreadable)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("syscr:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _proc_cpu(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _num(stats: dict[str, Any], key: str) -> float:
    v = stats.get(key, 0)
    return float(v) if isinstance(v, (int, float)) else 0.0


def command_deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """``after - before`` for every counter of ``COMMAND_STATS`` that both snapshots have."""
    out = {}
    for key in COMMAND_STATS:
        a, b = before.get(key), after.get(key)
        if isinstance(a, int) and isinstance(b, int):
            out[key] = b - a
    return out


def per_unit(value: float | None, units: int | float | None, digits: int = 3) -> float | None:
    """``value / units`` rounded, or None when either is missing or there are no units."""
    if value is None or not units:
        return None
    return round(value / units, digits)


def summarize_deltas(
    ops: dict[str, int],
    units: int,
    unit: str,
    cpu_s: float | None = None,
    reads: int | None = None,
    elapsed_s: float | None = None,
) -> dict[str, Any]:
    """The ``metrics.memcached`` block: deltas, totals, and each per ``unit`` (one of ``units``).

    ``unit`` names what was delivered in the phase: ``notification``, ``cycle``
    (churn) or ``connection``.
    """
    total = sum(ops.get(k, 0) for k in TOTAL_PARTS)
    per = {k: per_unit(v, units) for k, v in ops.items() if v}
    return {
        "unit": unit,
        "units": units,
        "ops": ops,
        "total": total,
        "per_unit": per,
        "total_per_unit": per_unit(total, units),
        "reads": reads,
        "reads_per_unit": per_unit(reads, units),
        "cpu_s": None if cpu_s is None else round(cpu_s, 4),
        "cpu_us_per_unit": per_unit(None if cpu_s is None else cpu_s * 1e6, units, 1),
        "cpu_pct": (
            round(100.0 * cpu_s / elapsed_s, 1) if cpu_s is not None and elapsed_s else None
        ),
    }


@dataclass
class McSnapshot:
    """One look at memcached: its ``stats``, its CPU seconds and ``read()`` calls so far.

    ``cpu_s`` is memcached's own ``rusage_user + rusage_system`` (its
    ``getrusage``: the same utime + stime as ``/proc``, in microseconds rather
    than 10 ms ticks), or the ``/proc`` figure when ``stats`` lacks it.
    """

    stats: dict[str, Any]
    cpu_s: float | None
    reads: int | None

    #: utime + stime from ``/proc/<pid>/stat`` (clock ticks, 10 ms), None without the PID
    proc_cpu_s: float | None = None

    @classmethod
    def take(cls, host: str, port: int, pid: int | None) -> McSnapshot:
        stats = read_stats(host, port)
        cpu = None
        if "rusage_user" in stats:
            cpu = _num(stats, "rusage_user") + _num(stats, "rusage_system")
        proc = _proc_cpu(pid)
        return cls(stats, cpu if cpu is not None else proc, proc_reads(pid), proc)


class MemcachedMeter:
    """Snapshots around one phase; ``finish`` gives the ``metrics.memcached`` block.

    Errors are reported in the block (``error``), never raised: a memcached
    that cannot be asked must not fail the run it measures.
    """

    def __init__(
        self,
        host: str,
        port: int,
        pid: int | None = None,
        take: Callable[[str, int, int | None], McSnapshot] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.pid = pid
        self.take = take or McSnapshot.take
        self.before: McSnapshot | None = None
        self.error: str | None = None
        try:
            self.before = self.take(host, port, pid)
        except OSError as e:
            self.error = f"stats before: {e}"

    def finish(self, units: int, unit: str, elapsed_s: float | None = None) -> dict[str, Any]:
        if self.before is None:
            return {"unit": unit, "error": self.error}
        try:
            after = self.take(self.host, self.port, self.pid)
        except OSError as e:
            return {"unit": unit, "error": f"stats after: {e}"}
        b = self.before
        cpu = None if b.cpu_s is None or after.cpu_s is None else after.cpu_s - b.cpu_s
        reads = None if b.reads is None or after.reads is None else after.reads - b.reads
        out = summarize_deltas(
            command_deltas(b.stats, after.stats), units, unit, cpu, reads, elapsed_s
        )
        if b.proc_cpu_s is not None and after.proc_cpu_s is not None:
            out["proc_cpu_s"] = round(after.proc_cpu_s - b.proc_cpu_s, 2)
        out["address"] = f"{self.host}:{self.port}"
        out["pid"] = self.pid
        out["version"] = after.stats.get("version")
        return out
