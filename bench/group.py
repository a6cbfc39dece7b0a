"""The parent's side of the worker processes: start, command, progress, stop (by PID)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from bench.interrupt import interrupted
from bench.server import REPO_ROOT

__all__ = ["WorkerGroup", "WorkerError"]


class WorkerError(RuntimeError):
    """A worker answered a command with an error, or died."""


class _Worker:
    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.progress: dict[str, int] = {"done": 0, "failed": 0}
        self.reader: asyncio.Task[None] | None = None


class WorkerGroup:
    """``procs`` generator processes (``python -m bench.worker``), one command at a time."""

    def __init__(self, procs: int, loop_impl: str = "uvloop") -> None:
        self.procs = procs
        self.loop_impl = loop_impl
        self.workers: list[_Worker] = []
        self._next_id = 0

    async def start(self) -> None:
        env = dict(os.environ)
        env["BENCH_LOOP"] = self.loop_impl
        env["PYTHONPATH"] = str(REPO_ROOT) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        for i in range(self.procs):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.worker",
                str(i),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=str(REPO_ROOT),
                env=env,
                limit=1 << 26,
            )
            w = _Worker(i, proc)
            w.reader = asyncio.ensure_future(self._read(w))
            self.workers.append(w)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    async def _read(self, w: _Worker) -> None:
        assert w.proc.stdout is not None
        while True:
            line = await w.proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            kind = msg.get("type")
            if kind == "progress":
                w.progress = {"done": msg.get("done", 0), "failed": msg.get("failed", 0)}
                continue
            fut = w.pending.pop(msg.get("id"), None)
            if fut is None or fut.done():
                continue
            if kind == "result":
                fut.set_result(msg["result"])
            else:
                fut.set_exception(WorkerError(f"worker {w.index}: {msg.get('error')}"))
        for fut in w.pending.values():
            if not fut.done():
                fut.set_exception(WorkerError(f"worker {w.index} exited"))
        w.pending.clear()

    async def call(self, cmd: str, args: list[dict[str, Any]] | dict[str, Any]) -> list[Any]:
        """Send ``cmd`` to every worker (``args`` per worker, or the same for all); gather."""
        per = args if isinstance(args, list) else [args] * len(self.workers)
        futs = []
        loop = asyncio.get_running_loop()
        for w, a in zip(self.workers, per, strict=True):
            w.progress = {"done": 0, "failed": 0}
            self._next_id += 1
            fut: asyncio.Future[Any] = loop.create_future()
            w.pending[self._next_id] = fut
            assert w.proc.stdin is not None
            w.proc.stdin.write(
                json.dumps({"id": self._next_id, "cmd": cmd, "args": a}).encode() + b"\n"
            )
            futs.append(fut)
        for w in self.workers:
            assert w.proc.stdin is not None
            await w.proc.stdin.drain()
        return list(await asyncio.gather(*futs))

    def progress(self) -> tuple[int, int]:
        return (
            sum(w.progress["done"] for w in self.workers),
            sum(w.progress["failed"] for w in self.workers),
        )

    async def close(self, timeout: float = 10.0, grace: float = 5.0) -> None:
        """Ask every worker to close; SIGKILL (by PID) those still there after ``timeout``.

        When the bench is interrupted (``bench.interrupt``), or the asking is cut
        short, the workers left are stopped by PID instead: SIGTERM, SIGKILL after
        ``grace`` (a worker busy in a command would read ``close`` only after it).
        """
        try:
            if interrupted() is None:
                await self._ask_to_close(timeout)
        finally:
            await self._terminate(grace)
            for w in self.workers:
                if w.reader is not None:
                    w.reader.cancel()
            self.workers = []

    async def _ask_to_close(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.call("close", {})
        except (TimeoutError, WorkerError, ConnectionError):
            pass
        for w in self.workers:
            await _wait_or_kill(w.proc, timeout)

    async def _terminate(self, grace: float) -> None:
        """SIGTERM every worker still running, then SIGKILL after ``grace``; by PID."""
        left = [w for w in self.workers if w.proc.returncode is None]
        for w in left:
            _kill(w.proc.pid, signal.SIGTERM)
        for w in left:
            await _wait_or_kill(w.proc, grace)


async def _wait_or_kill(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Wait for ``proc`` to end; SIGKILL it (by PID) if it is still there after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        _kill(proc.pid, signal.SIGKILL)
        await proc.wait()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Progress:
    """Prints ``[label] done/total ...`` to stderr every ``interval`` seconds while running."""

    def __init__(self, group: WorkerGroup, label: str, total: int, interval: float = 2.0):
        self.group = group
        self.label = label
        self.total = total
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    async def __aenter__(self) -> Progress:
        self._t0 = time.monotonic()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        last_done = 0
        last_t = self._t0
        while True:
            await asyncio.sleep(self.interval)
            done, failed = self.group.progress()
            now = time.monotonic()
            rate = (done - last_done) / max(1e-9, now - last_t)
            last_done, last_t = done, now
            print(
                f"[{self.label}] {done}/{self.total} ok, {failed} failed, "
                f"{rate:,.0f}/s, {now - self._t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )
