"""A hello's UAID and its storage reads: the part of ``Session`` before the hello reply.

The hello chooses the UAID by PROTOCOL.md 16.3 in both protocols, with one
UAID one protocol (WEBPUSH.md 6.1): ``keeps_uaid`` says whether the client's
UAID is kept, given the mode storage knows it by.

A hello that names a UAID makes one storage call, ``Storage.open_user``
(``pushtwisted.storage.opening``): the mode read, the router's claim when it
keeps the UAID, and the fetch of what is stored, in that order, in one trip
to the storage pool where the backend can.  The session joins the registry
only once that call answers, so the registry watches the UAID meanwhile
(``ClientRegistry.watch``): an update routed to it during the call makes the
session fetch again.  When any part fails, the parts run again one by one
(``_choose_uaid``, ``_claim``, and the fetch after the reply), each with its
own handling: a failed mode read keeps the UAID of a SimplePush hello without
channelIDs, a failed claim is a 503, a failed fetch is retried on the clock.
"""

from __future__ import annotations

import functools

from pushtwisted.connection import ClientConnection, Closed, State, StorageFailed
from pushtwisted.ids import connected_at_ms, new_uaid, normalize_id
from pushtwisted.messages import Hello
from pushtwisted.storage.interface import Mode, Opened

__all__ = ["FRESH", "HelloOpening", "Opening", "keeps_uaid"]

#: What a new UAID holds: nothing to send.
FRESH = Opened(None, True)

#: What ``HelloOpening._open`` answers: the UAID to echo, ``connected_at``,
#: what storage holds (None: fetch it after the reply) and whether the UAID
#: was looked up while it was read (fetch again).
Opening = tuple[str, int, Opened | None, bool]


def keeps_uaid(webpush: bool, channels: bool, mode: Mode | None) -> bool:
    """True when a hello keeps the UAID it names, storage knowing it by ``mode``.

    SimplePush keeps it unless storage knows it as a WebPush user, or does not
    know it while the hello lists channelIDs (they cannot be backed).  WebPush
    keeps it only when storage knows it as a WebPush user.
    """
    if webpush:
        return mode is Mode.WEBPUSH
    return mode is Mode.SIMPLEPUSH or (mode is None and not channels)


class HelloOpening(ClientConnection):
    """The hello's UAID choice, claim and first fetch (see the module docstring)."""

    __slots__ = ()

    async def _open(self, hello: Hello) -> Opening:
        """Choose the UAID, claim it, and read what storage holds for it."""
        node = self._node
        if not hello.uaid:
            return await self._fresh()
        uaid = normalize_id(hello.uaid)
        connected_at = connected_at_ms(node.clock.seconds())
        claim = node.router.claim(connected_at)
        keep = functools.partial(keeps_uaid, hello.webpush, bool(hello.channel_ids))
        opened: Opened | None = None
        node.registry.watch(uaid)
        try:
            opened = await node.storage.open_user(uaid, keep, claim)
        except Exception:
            pass  # each part again below, with its own handling and log line
        finally:
            missed = node.registry.unwatch(uaid)
        if self.state is State.CLOSED:
            if claim is not None:
                node.router.on_disconnect(uaid, connected_at)
            raise Closed()
        if opened is None:
            echo = await self._choose_uaid(hello)
            return echo, await self._claim(normalize_id(echo)), None, False
        if not opened.kept:
            return await self._fresh()
        return hello.uaid, connected_at, opened, missed

    async def _fresh(self) -> Opening:
        """A new UAID, claimed; nothing can be stored for it yet, so nothing is read."""
        uaid = new_uaid()  # in normal form already
        return uaid, await self._claim(uaid, fresh=True), FRESH, False

    async def _choose_uaid(self, hello: Hello) -> str:
        """Return the UAID of this connection (``keeps_uaid``), one storage call at a time."""
        if hello.uaid:
            uaid = normalize_id(hello.uaid)
            try:
                mode = await self._storage("user_mode", self._node.storage.user_mode(uaid))
            except StorageFailed:
                if hello.webpush or hello.channel_ids:
                    raise
                # A SimplePush hello without channelIDs needs no storage to be
                # answered: it keeps its UAID while storage fails, as before modes.
                return hello.uaid
            if not keeps_uaid(hello.webpush, bool(hello.channel_ids), mode):
                return new_uaid()
        return hello.uaid or new_uaid()

    async def _claim(self, uaid: str, fresh: bool = False) -> int:
        """Record with the router that this node holds ``uaid``; return ``connected_at``.

        The record is written before storage is read, so an update stored
        meanwhile is either routed here or fetched by the hello.  When the
        connection closes during the write the record is cleared again (a
        write that timed out may still have landed).  ``fresh``: ``uaid`` was
        just made here (the router need not look for an earlier record).
        """
        router = self._node.router
        connected_at = connected_at_ms(self._node.clock.seconds())
        try:
            await self._storage("directory", router.on_hello(uaid, connected_at, fresh))
        except Closed:
            router.on_disconnect(uaid, connected_at)
            raise
        return connected_at
