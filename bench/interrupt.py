"""SIGINT and SIGTERM to the bench: stop what it started, by PID, then exit 128 + signal.

``run`` and ``profile`` run under ``run_interruptible``: the first signal
cancels the command's task, so every ``finally`` on the way out stops what it
started the same way a normal end does (generator workers: ``WorkerGroup.close``;
servers and memcached: ``stop_server`` / ``stop_cluster``, SIGTERM then SIGKILL
after the grace).  The unfinished run writes no result and no summary.  Later
signals only say that the bench is still stopping.  ``serve`` (no event loop)
uses ``SignalFlag`` and polls it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "INTERRUPT_SIGNALS",
    "SignalFlag",
    "announce",
    "exit_code",
    "interrupted",
    "run_interruptible",
]

#: The signals that interrupt the bench.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


def interrupted() -> int | None:
    """The signal that interrupted this process (None: not interrupted)."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    """The shell's convention: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def announce(signum: int, what: str) -> None:
    """The one line an interrupted command prints (stderr)."""
    name = signal.Signals(signum).name
    print(f"bench: interrupted by {name}; {what}", file=sys.stderr, flush=True)


def _still_stopping(signum: int) -> None:
    name = signal.Signals(signum).name
    print(f"bench: {name} again; still stopping what it started", file=sys.stderr, flush=True)


def run_interruptible(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``; SIGINT/SIGTERM cancel it, and the code is ``exit_code(signal)``."""

    async def guarded() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if _received:
                _still_stopping(signum)
                return
            _received.append(signum)
            task.cancel()

        for s in INTERRUPT_SIGNALS:
            loop.add_signal_handler(s, on_signal, s)
        try:
            return await main
        except asyncio.CancelledError:
            signum = interrupted()
            if signum is None:
                raise
            announce(
                signum,
                "stopped the servers, memcached and generator workers it started; "
                "no result for the unfinished run, no summary",
            )
            return exit_code(signum)
        finally:
            for s in INTERRUPT_SIGNALS:
                loop.remove_signal_handler(s)

    return asyncio.run(guarded())


class SignalFlag:
    """``with SignalFlag() as flag:`` SIGINT/SIGTERM set ``flag.signum`` instead of killing.

    For a synchronous loop that polls ``flag.signum`` and stops what it started.
    The previous handlers are back after the block.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            _received.append(signum)
        else:
            _still_stopping(signum)

    def __enter__(self) -> SignalFlag:
        for s in INTERRUPT_SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
