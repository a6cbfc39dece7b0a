"""``ClientRegistry``: this node's map of connected UAIDs to their sessions.

The newest connection for a UAID wins: adding a session for a UAID that is
already held closes the older one.  Removing only removes the entry when it
still belongs to the session being removed, so a closing old socket never
unregisters its replacement.  ``when_empty`` lets a shutdown wait for the
last session to go.  ``watch`` covers a hello that reads storage before it
is added (``pushtwisted.hello``): every ``get`` of its UAID meanwhile is
noted, since an update routed then reached no session, or an older one.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed

__all__ = ["ClientRegistry", "Replaceable"]


class Replaceable(Protocol):
    """What the registry needs of a session."""

    def replaced(self) -> None:
        """Close this connection because a newer one holds its UAID."""


_S = TypeVar("_S", bound=Replaceable)


class ClientRegistry(Generic[_S]):
    """Connected sessions by UAID (normal form)."""

    def __init__(self) -> None:
        self._sessions: dict[str, _S] = {}
        self._empty_waiters: list[Deferred[None]] = []
        #: UAIDs whose hello is reading storage, and how many such hellos.
        self._watched: dict[str, int] = {}
        #: Watched UAIDs looked up since their watch began.
        self._looked: set[str] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, uaid: str, session: _S) -> None:
        """Make ``session`` the holder of ``uaid``; close the previous holder."""
        previous = self._sessions.get(uaid)
        self._sessions[uaid] = session
        if previous is not None and previous is not session:
            previous.replaced()

    def remove(self, uaid: str, session: _S) -> None:
        """Forget ``uaid`` if ``session`` still holds it."""
        if self._sessions.get(uaid) is session:
            del self._sessions[uaid]
            if self._empty_waiters and not self._sessions:
                waiters, self._empty_waiters = self._empty_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

    def get(self, uaid: str) -> _S | None:
        """Return the session holding ``uaid``, or None (noting the look-up if watched)."""
        if self._watched and uaid in self._watched:
            self._looked.add(uaid)
        return self._sessions.get(uaid)

    def watch(self, uaid: str) -> None:
        """A hello for ``uaid`` reads storage before it is added: note look-ups meanwhile."""
        self._watched[uaid] = self._watched.get(uaid, 0) + 1

    def unwatch(self, uaid: str) -> bool:
        """End a ``watch``; True when ``uaid`` was looked up since (the hello fetches again)."""
        looked = uaid in self._looked
        left = self._watched.pop(uaid) - 1
        if left:
            self._watched[uaid] = left
        else:
            self._looked.discard(uaid)
        return looked

    def sessions(self) -> list[_S]:
        """Return every connected session (for shutdown)."""
        return list(self._sessions.values())

    def when_empty(self) -> Deferred[None]:
        """Return a Deferred that fires once no session is held (at once if none is).

        Cancelling it only stops the wait.
        """
        if not self._sessions:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._empty_waiters.remove)
        self._empty_waiters.append(waiter)
        return waiter
