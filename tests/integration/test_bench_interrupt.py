"""End-to-end: ``python -m bench`` stops what it started when SIGTERM or SIGINT reaches it.

Real processes on loopback: ``bench run`` (a tiny connect run holding its
devices, memcached backend, so a server, its memcached and a generator worker
are up) gets SIGTERM; ``bench serve`` gets SIGINT.  The PIDs checked are the
ones the kernel lists as the bench's children (``/proc/PID/task/*/children``)
and, for ``serve``, the ones it prints; each must be gone once the bench has
exited with 128 + the signal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import bench
from tests.integration.server import child_env

__all__ = ["BenchInterruptTests"]

BENCH_ROOT = Path(bench.__file__).resolve().parent.parent

#: Bound of each wait: start-up of a tiny run, and stopping (the server's grace is 15 s).
BOUND_S = 60.0


def _wait_for(check: Callable[[], bool], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound:g}s: {what}")
        time.sleep(0.05)


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` (None: no such process, or only a zombie is left)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _children(pid: int) -> dict[int, str]:
    """The live children of ``pid`` (PID -> start time), as the kernel lists them."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            started = _start_time(int(child))
            if started is not None:
                out[int(child)] = started
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


class BenchInterruptTests(SynchronousTestCase):
    """The bench's own processes end with it; its exit code names the signal."""

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Start ``python -m bench ARGS``; stdout and stderr go to files (returned)."""
        logs = Path(self.mktemp())
        logs.mkdir(parents=True)
        out, err = logs / "stdout", logs / "stderr"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench", *args],
                cwd=BENCH_ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        self.addCleanup(self.reap, proc)
        return proc, out, err

    def reap(self, proc: subprocess.Popen[bytes]) -> None:
        """Leave nothing behind when a test failed half-way (by PID)."""
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def assertInterrupted(
        self,
        proc: subprocess.Popen[bytes],
        err: Path,
        sig: signal.Signals,
        started: dict[int, str],
    ) -> None:
        """``sig`` to ``proc``: it exits with 128 + sig, says so once, and ``started`` are gone."""
        os.kill(proc.pid, sig)
        code = proc.wait(BOUND_S)
        self.assertEqual(code, 128 + sig, err.read_text())
        lines = [
            line
            for line in err.read_text().splitlines()
            if line.startswith(f"bench: interrupted by {sig.name}")
        ]
        self.assertEqual(len(lines), 1, err.read_text())
        _wait_for(
            lambda: all(_start_time(pid) != t for pid, t in started.items()),
            5.0,
            f"processes the bench started still there: {sorted(started)}",
        )

    def test_run_sigterm(self) -> None:
        """SIGTERM during a run's hold: server, memcached and worker stopped; exit 143."""
        results = Path(self.mktemp())
        proc, _, err = self.start(
            "run",
            "--backend",
            "memcached",
            "--scenario",
            "connect",
            "--tiny",
            "--hold",
            "120",
            "--max-seconds",
            "300",
            "--out",
            str(results),
        )
        _wait_for(
            lambda: "[connect] holding" in err.read_text() or proc.poll() is not None,
            BOUND_S,
            "the run's devices connected",
        )
        self.assertIsNone(proc.poll(), err.read_text())
        started = _children(proc.pid)
        commands = " | ".join(_cmdline(pid) for pid in started)
        for kind in ("memcached", "simplepush", "bench.worker"):
            self.assertIn(kind, commands)
        self.assertInterrupted(proc, err, signal.SIGTERM, started)
        # The unfinished run wrote no result and no summary.
        written = list(results.iterdir()) if results.exists() else []
        self.assertEqual(written, [])

    def test_serve_sigint(self) -> None:
        """SIGINT to ``serve``: the server and memcached it printed are stopped; exit 130."""
        proc, out, err = self.start("serve", "--backend", "memcached", "--seconds", "120")
        _wait_for(
            lambda: out.read_text().endswith("\n") or proc.poll() is not None,
            BOUND_S,
            "serve printed its server",
        )
        self.assertIsNone(proc.poll(), err.read_text())
        info = json.loads(out.read_text())
        self.addCleanup(shutil.rmtree, info["state_dir"], True)
        printed = {info["pid"], info["memcached_pid"]}
        started = _children(proc.pid)
        self.assertEqual(set(started), printed)
        self.assertInterrupted(proc, err, signal.SIGINT, started)
