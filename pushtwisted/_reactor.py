"""``IServerReactor``: the reactor interfaces the composition root uses, as one type.

``tap.build_service`` needs time (``IReactorTime``), calls from the storage
threads (``IReactorFromThreads``), TCP for listeners and the cluster's HTTP
client (``IReactorTCP``), adopted sockets for ``reuse_port``
(``IReactorSocket``) and, in ``makeService``, ``stop`` and system event
triggers (``IReactorCore``).  Twisted's reactor provides them all.

It is a zope interface that extends the five rather than a
``typing.Protocol`` listing their methods: mypy-zope checks Twisted's
interfaces nominally, so only an interface that extends them is accepted
where Twisted (or our own code) asks for one of them.  Nothing checks it at
run time; tests pass a ``MemoryReactorClock`` (with ``callFromThread``
added where a thread pool runs).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
)

__all__ = ["IServerReactor"]


class IServerReactor(IReactorCore, IReactorTime, IReactorFromThreads, IReactorTCP, IReactorSocket):
    """A reactor that provides every interface ``tap.build_service`` uses."""
