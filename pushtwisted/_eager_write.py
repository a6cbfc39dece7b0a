"""Listener connections that send a write at once when nothing is waiting to be sent.

Twisted's TCP transport never sends in ``write``: it buffers the bytes and
asks the reactor to watch the socket for writability (with epoll, an
``epoll_ctl`` system call), sends them on the reactor's next turn, then
stops watching (a second ``epoll_ctl``).  A push server's answers are small
and its sockets' send buffers are nearly always empty, so nearly every
answer (an HTTP response, a WebSocket notification frame) paid two
``epoll_ctl`` calls, one more ``epoll_wait`` wake-up and the reactor's
dispatch around its one ``send``: at saturation those were about a tenth
of the server's CPU.

``EagerServer`` is Twisted's ``tcp.Server`` with one change: a ``write``
(or ``writeSequence``, joined into one write) made while the transport has
nothing buffered is tried on the socket right away.  What the socket does
not take (a full send buffer), and every write made while earlier bytes
still wait, goes through Twisted's own buffering unchanged, so the order of
the bytes is kept.  An error on that ``send`` is not handled here: the bytes
are handed to Twisted's buffer, whose next attempt meets the same error and
closes the connection as it always did.  A connection that started TLS on
itself (``startTLS``) is left to Twisted.

``eager_writes(port)`` makes a listening ``tcp.Port`` build its connections
as ``EagerServer``; any other port (a test's fake, a UNIX socket) is left as
it is.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import tcp

__all__ = ["EagerServer", "eager_writes"]


class EagerServer(tcp.Server):
    """A TCP server connection whose writes go out at once while nothing is buffered."""

    def write(self, data: bytes) -> None:
        """Send ``data`` now if nothing is waiting; buffer what the socket does not take."""
        if data and self._nothing_waiting():
            sent = self.writeSomeData(data)
            # An error, or 0 (a full send buffer): Twisted's own path retries.
            if type(sent) is int and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """Write the pieces of ``iovec`` as one write (see ``write``)."""
        if self._nothing_waiting():
            self.write(b"".join(iovec))
        else:
            super().writeSequence(iovec)  # type: ignore[no-untyped-call]

    def _nothing_waiting(self) -> bool:
        """True when the connection can send: open, no TLS of its own, nothing buffered."""
        return (
            not self.TLS
            and bool(self.connected)
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
        )


def eager_writes(port: object) -> None:
    """Make ``port``'s new connections ``EagerServer`` if it is a plain ``tcp.Port``."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = EagerServer
