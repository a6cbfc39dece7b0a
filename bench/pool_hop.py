"""Micro-benchmark of one storage pool job: the cost of the hop itself.

Runs N jobs that do nothing through ``ThreadPoolService.run`` on the real
reactor, one after the other (each is submitted when the previous one has
answered), so every job pays the whole hop: the submit, the end-of-turn
flush, the hand-over to a storage thread (``StoragePool``'s inbox), the pool
thread's wake-up and the GIL, ``callFromThread`` back and the reactor's
wake-up.  For
scale it then times a bare ``queue.Queue`` round trip between two threads.
CPU time is the process's (both threads); pin the process to one core
(``taskset -c 0``) to see what the hop costs when the threads share it, as
on a busy box.

    taskset -c 0 python -m bench.pool_hop [N]
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from twisted.internet import reactor

from pushtwisted.metrics import NullMetrics
from pushtwisted.threadpool import ThreadPoolService

__all__ = ["main"]


def _nothing() -> int:
    return 1


def _pool_hop(n: int) -> tuple[float, float]:
    """Microseconds of wall time and of process CPU per job, for ``n`` jobs in a row."""
    service = ThreadPoolService(
        reactor,  # type: ignore[arg-type]  # the global reactor provides every interface
        min_threads=1,
        max_threads=10,
        max_queue=1000,
        timeout=5.0,
        metrics=NullMetrics(),
    )
    out: dict[str, float] = {}
    done = [0]

    def step(_: object = None) -> None:
        if done[0] == 0:
            out["wall"], out["cpu"] = time.perf_counter(), time.process_time()
        if done[0] == n:
            out["wall"] = time.perf_counter() - out["wall"]
            out["cpu"] = time.process_time() - out["cpu"]
            service.stopService()
            reactor.stop()  # type: ignore[attr-defined]
            return
        done[0] += 1
        service.run("nothing", _nothing).addCallback(step)

    service.startService()
    reactor.callWhenRunning(step)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return out["wall"] / n * 1e6, out["cpu"] / n * 1e6


def _queue_round_trip(n: int) -> float:
    """Microseconds of process CPU per round trip of a bare ``queue.Queue`` pair."""
    there: queue.Queue[int] = queue.Queue()
    back: queue.Queue[int] = queue.Queue()

    def echo() -> None:
        for _ in range(n):
            back.put(there.get())

    thread = threading.Thread(target=echo)
    thread.start()
    started = time.process_time()
    for i in range(n):
        there.put(i)
        back.get()
    spent = time.process_time() - started
    thread.join()
    return spent / n * 1e6


def main(argv: list[str]) -> None:
    """Print the cost of a pool job and of a bare queue round trip."""
    n = int(argv[0]) if argv else 5000
    wall, cpu = _pool_hop(n)
    print(f"pool job that does nothing ({n} in a row): {wall:.1f} us wall, {cpu:.1f} us CPU each")
    print(f"bare queue.Queue round trip between two threads: {_queue_round_trip(n):.1f} us CPU")


if __name__ == "__main__":
    main(sys.argv[1:])
