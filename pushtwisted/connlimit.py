"""``ConnectionLimit``: the ``max_connections`` of one listener.

A listener's factory calls ``acquire()`` in ``buildProtocol`` and, when it
returns False, returns None (Twisted then closes the accepted socket at
once); the protocol it built calls ``release()`` when its connection is
lost.  Each refusal is counted as ``connections_refused{listener}``; the log
line says so at most once per second, with the number refused since.  The
open connections are the gauge ``open_sockets{listener}``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from pushtwisted.logs import logger
from pushtwisted.metrics import Metrics

__all__ = ["ConnectionLimit"]

#: Seconds between two "refused" log lines of one listener.
_LOG_INTERVAL = 1.0


class ConnectionLimit:
    """Count the open connections of one listener and refuse those past ``limit``.

    :param listener: the listener's name (``websocket``, ``endpoint``), a metric label.
    :param limit: the most open connections; 0 means no limit.
    :param clock: what rate-limits the log line.
    :param metrics: where refusals are counted.
    """

    log = logger()

    def __init__(self, listener: str, limit: int, clock: IReactorTime, metrics: Metrics) -> None:
        self.listener = listener
        self.limit = limit
        #: Connections accepted and not yet lost.
        self.open = 0
        self._clock = clock
        self._metrics = metrics
        self._last_log: float | None = None
        self._unlogged = 0

    def acquire(self) -> bool:
        """Count one more connection and return True, or return False when full."""
        if 0 < self.limit <= self.open:
            self._refused()
            return False
        self.open += 1
        self._metrics.gauge("open_sockets", self.open, listener=self.listener)
        return True

    def release(self) -> None:
        """Count one connection fewer (its connection was lost)."""
        if self.open > 0:
            self.open -= 1
            self._metrics.gauge("open_sockets", self.open, listener=self.listener)

    def _refused(self) -> None:
        self._metrics.increment("connections_refused", listener=self.listener)
        self._unlogged += 1
        now = self._clock.seconds()
        if self._last_log is not None and now - self._last_log < _LOG_INTERVAL:
            return
        self.log.warn(
            "{listener} listener full ({limit} connections): refused {count} connection(s)",
            listener=self.listener,
            limit=self.limit,
            count=self._unlogged,
        )
        self._last_log = now
        self._unlogged = 0
