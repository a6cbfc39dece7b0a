"""``MemcachedStorage.open_user`` as one job of ordered steps (``storage.opening``).

The hello's mode read, the claim (when given as steps on the storage's own
client: the cluster directory) and the fetch run in one operation, so the
whole hello costs one trip to the storage pool.  The order is kept: the
claim's steps end (their write landed) before the fetch's first read.

Commands: the mode round ``touch`` + ``gets`` of the user's record.  Without
a claim the fetch goes on from that read (a SimplePush user: one ``gets``
of every listed record); after a claim it reads the user's record again,
since it may have changed before the claim landed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from pushtwisted.storage._memcache_records import WebPushUser, decode_user
from pushtwisted.storage._memcache_steps import Steps
from pushtwisted.storage._memcache_wire import Get, Touch
from pushtwisted.storage.interface import Claim, Keep, Mode, Opened, PendingUpdate, StoredMessage
from pushtwisted.storage.opening import fetch_kind

__all__ = ["landed", "mode_of", "open_steps"]


def mode_of(value: object) -> Mode | None:
    """The mode of a user record's stored value (None: no record)."""
    if value is None:
        return None
    return Mode.WEBPUSH if isinstance(decode_user(value), WebPushUser) else Mode.SIMPLEPUSH


def open_steps(
    user_key: str,
    expire: int,
    keep: Keep,
    claim: Generator[Any, Any, Any] | None,
    fetch_pending: Callable[[tuple[Any, Any] | None], Steps[list[PendingUpdate]]],
    fetch_messages: Callable[[tuple[Any, Any] | None], Steps[list[StoredMessage]]],
) -> Steps[tuple[Opened, object]]:
    """Read the mode (touching the record to ``expire``); when kept, run ``claim``, then
    fetch; answer ``(opened, claim's result)``."""
    _, listed = yield (Touch(user_key, expire), Get(user_key))
    mode = mode_of(listed[0])
    if not keep(mode):
        return Opened(mode, False), None
    claimed = None
    if claim is not None:
        claimed = yield from claim
        listed = None  # read again: the claim must land before the fetch reads
    kind = fetch_kind(mode, claim is not None)
    if kind == "messages":
        return Opened(mode, True, messages=(yield from fetch_messages(listed))), claimed
    if kind == "pending":
        return Opened(mode, True, pending=(yield from fetch_pending(listed))), claimed
    return Opened(mode, True), claimed


def landed(result: tuple[Opened, object], uaid: str, claim: Claim | None) -> Opened:
    """Hand the claim's result to ``claim.landed`` (reactor thread); answer the ``Opened``."""
    opened, claimed = result
    if claim is not None and opened.kept:
        claim.landed(uaid, claimed)
    return opened
