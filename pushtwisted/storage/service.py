"""``StorageService``: one storage backend's life in the service tree.

The service opens the backend when it starts, runs its periodic purge
while it runs, and closes it when it stops; ``storage.factory`` tells it
which of these its backend needs (only sqlite opens and purges).  Stopping
never fails: a failed close is logged.

Place it after the storage thread pool in the tree (the pool must run
before the backend opens, and still run while it closes) and stop it before
that pool (``tap.PushService`` does both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from pushtwisted.logs import logger
from pushtwisted.storage.interface import Storage

__all__ = ["PURGE_INTERVAL", "StorageService"]

#: Seconds between two purges of expired records (sqlite tombstones).
PURGE_INTERVAL = 3600.0


class StorageService(Service):
    """Open, purge and close ``storage`` with the service.

    :param storage: the backend the node uses.
    :param clock: runs the purge timer.
    :param opener: called at start (sqlite creates or migrates its schema);
        a failure is logged, and the calls that follow fail on their own.
    :param purge: called every ``purge_interval`` seconds while running; a
        failure is logged and the next purge still runs.
    :param purge_interval: seconds between two purges.
    """

    name = "storage"
    log = logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        *,
        opener: Callable[[], Deferred[None]] | None = None,
        purge: Callable[[], Deferred[Any]] | None = None,
        purge_interval: float = PURGE_INTERVAL,
    ) -> None:
        self.storage = storage
        self._clock = clock
        self._opener = opener
        self._purge = purge
        self._purge_interval = purge_interval
        self._purge_loop: LoopingCall | None = None

    def startService(self) -> None:
        """Open the backend and start the purge timer (first purge after one interval)."""
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        if self._opener is not None:
            self._opener().addErrback(lambda f: self.log.failure("storage could not be opened", f))
        if self._purge is not None:
            loop = self._purge_loop = LoopingCall(self._purge_once)
            loop.clock = self._clock
            loop.start(self._purge_interval, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop the purge timer and close the backend; fires when it is closed."""
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        loop, self._purge_loop = self._purge_loop, None
        if loop is not None and loop.running:
            loop.stop()
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        try:
            await self.storage.close()
        except Exception:
            self.log.failure("storage close failed")

    def _purge_once(self) -> Deferred[None]:
        assert self._purge is not None
        d = self._purge()
        d.addErrback(lambda f: self.log.failure("periodic storage purge failed", f))
        return d.addCallback(lambda _: None)
