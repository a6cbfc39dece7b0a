"""A hello's storage work as one call: read the user's mode, claim, fetch.

A hello that names a UAID needs three things from storage, in this order:

1. the *mode* of the UAID's user record, which decides whether the hello
   keeps that UAID (``keep``, a pure function given by the session);
2. when it keeps it, the *claim*: the cluster directory's record that this
   node holds the UAID.  It must land before the fetch reads, so that an
   update stored meanwhile is either routed here or fetched;
3. the *fetch* of what is stored for it (SimplePush updates or WebPush
   messages, by the mode read).

``Storage.open_user`` runs the three as one call, so that a backend can do
them in one trip to its thread pool (memcached: one job of ordered steps;
sqlite: one read).  ``open_stepwise`` is the same sequence made of the
backend's own calls, for backends where that costs nothing (memory) and for
claims that are not memcached steps.

The session adds itself to the registry only once the call answers, so an
update routed while the call ran would find no session (or an older one):
``ClientRegistry.watch`` notes every look-up of the UAID meanwhile, and the
session fetches again when there was one.

A failure of any part fails the call as a whole; the caller then runs the
parts one by one, each with its own handling.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from pushtwisted.storage.interface import Claim, Keep, Mode, Opened, Storage

__all__ = ["fetch_kind", "open_stepwise"]


def fetch_kind(mode: Mode | None, claimed: bool) -> str | None:
    """What a kept UAID's fetch reads: ``"messages"``, ``"pending"``, or None (nothing).

    A UAID without a user record holds nothing, unless a claim ran: another
    connection may have registered it between the read and the claim.
    """
    if mode is Mode.WEBPUSH:
        return "messages"
    if mode is Mode.SIMPLEPUSH or claimed:
        return "pending"
    return None


def open_stepwise(
    storage: Storage, uaid: str, keep: Keep, claim: Claim | None = None
) -> Deferred[Opened]:
    """``open_user`` made of ``storage``'s own calls: mode, then claim, then fetch."""
    return Deferred.fromCoroutine(_open_stepwise(storage, uaid, keep, claim))


async def _open_stepwise(storage: Storage, uaid: str, keep: Keep, claim: Claim | None) -> Opened:
    mode = await storage.user_mode(uaid)
    if not keep(mode):
        return Opened(mode, False)
    if claim is not None:
        await claim.run(uaid)
    kind = fetch_kind(mode, claim is not None)
    if kind == "messages":
        return Opened(mode, True, messages=await storage.fetch_messages(uaid))
    if kind == "pending":
        return Opened(mode, True, pending=await storage.fetch_pending(uaid))
    return Opened(mode, True)
