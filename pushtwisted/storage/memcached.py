"""``MemcachedStorage``: the shared backend for clusters (pymemcache).

Record layout (PROTOCOL.md section 5.2, improved as section 16 decides); every
key starts with the configured ``key_prefix``; the values and their codecs
are in ``_memcache_records``:

``<uaid>``
    A SimplePush user's JSON list of chids, sorted and de-duplicated (a
    WebPush user's record here is an object: ``_memcache_webpush``, where
    its messages are kept too).  Its presence means the user exists.  It
    lists every chid that has (or recently had) a record, tombstones
    included; chids whose record has vanished (expired tombstones,
    evictions) are pruned at ``fetch_pending`` and when ``register``
    checks the channel limit.
``<uaid>.<chid>``
    JSON ``{"state", "channel_id", "version", "data", "touched"}`` with
    ``state`` one of ``live``, ``registered``, ``deleted`` and an expiry by
    state: ``ttl_live``, ``ttl_registered``, ``ttl_deleted`` (the tombstone).

Every read-modify-write is a ``gets``/``cas`` loop with bounded retries
(then ``StorageUnavailable``), so concurrent writers lose nothing: an ack
clears only when acked >= stored, an update never resurrects a tombstone
nor overwrites a concurrent unregister, and concurrent registers never drop
each other's chids.  A chid is added to the list *before* its record is
created and checked again after; whoever prunes the list checks the pruned
records again after writing it.  Either side therefore sees the other's
write, and a live record always ends up listed.  ``max_channels`` is exact
for one writer per UAID (one connection at a time); concurrent registers
of *different* new chids of one UAID may overshoot it by the number in
flight, since a record being created is not counted yet.

Each operation is a generator of memcached commands
(``pushtwisted.storage._memcache_steps``): the operations of one reactor
turn go to the storage pool together and their commands travel in shared
pipelined round trips.  What each costs (commands, and rounds in brackets):

- ``update``: ``gets`` the record, ``cas`` it live (2);
- ``ack``: ``gets`` the record, ``cas`` it registered (2);
- ``user_mode``: ``touch`` and ``gets`` the user's record (1);
- ``fetch_pending``: ``get`` the list, then ``gets`` every listed record (2),
  plus one ``cas`` per record due for a refresh (3); a hello's ``open_user``
  runs both in one job, the fetch going on from the first read (2).
- ``register`` of a new channel: ``gets`` the record and the list, ``add``
  or ``cas`` the list, ``add`` (or ``cas`` over a tombstone) the record
  with a ``gets`` of the list behind it (3); when the first read finds
  neither (a new UAID's first channel), both ``add``s go in one round with
  the list's ``gets`` behind them (2); an existing one: the first read only
  (1); a WebPush user's, after the first read, in ``_memcache_webpush``;
- ``unregister``: ``gets`` the record and the list, ``cas`` the tombstone (2);
- ``expired``: ``get`` the records (1).

Expiry: memcached reads an expiry over 30 days as an absolute Unix time, so
longer TTLs are sent as ``now + ttl`` (``memcached_expire``).  The client,
its serde and the error translation are in ``pushtwisted.storage._memcache``,
shared with the cluster directory.  The list and the records are refreshed
at hello: ``user_mode`` touches the list (the fetch does not touch it again),
and ``fetch_pending`` rewrites records written more than half their TTL ago,
so idle devices keep their registrations.

A miss is a normal result; any error (refused connection, timeout,
``MemcacheError``, a corrupt value) raises ``StorageUnavailable`` and is
never read as a miss.  The operations run on the storage pool and touch
only their arguments and the client; ``now`` comes from the reactor clock,
read on the reactor thread.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage._memcache import MemcacheClient, check_key_prefix, memcached_expire
from pushtwisted.storage._memcache_opening import landed, mode_of, open_steps
from pushtwisted.storage._memcache_records import (
    DELETED,
    LIVE,
    REGISTERED,
    ChannelRecord,
    decode_list,
    decode_record,
    decode_user,
    is_webpush,
)
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage._memcache_webpush import WebPushRecords
from pushtwisted.storage._memcache_wire import Delete, Get, Store, Touch
from pushtwisted.storage.interface import (
    Claim,
    Keep,
    Mode,
    NewMessage,
    Opened,
    PendingUpdate,
    StoredMessage,
    StoreResult,
    UpdateOutcome,
    UpdateResult,
)
from pushtwisted.storage.opening import open_stepwise

if TYPE_CHECKING:
    from pushtwisted.threadpool import BatchRunner

__all__ = ["MemcachedStorage"]

#: gets/cas attempts before giving up with StorageUnavailable.
_CAS_ATTEMPTS = 64
_ADD = b"add"
_CAS = b"cas"


class MemcachedStorage:
    """A ``Storage`` on memcached through a thread-safe pymemcache client.

    :param client: from ``pushtwisted.storage._memcache.make_memcached_client``
        (JSON serde, pooled, pipelined, errors raised).
    :param submit: runs the operations on the storage pool
        (``ThreadPoolService.submit``), with ``MemcacheSteps(client)``.
    :param clock: the reactor clock (``now`` for expiries and refreshes).
    :param ttl_live: seconds a record with a pending update lives.
    :param ttl_registered: seconds a registered record lives; the user's
        list lives for the longer of this and ``ttl_live``.  Both are
        refreshed at hello, so keep them long (days): an expired record is
        an unregistered channel (410 to the app server).
    :param ttl_deleted: seconds a tombstone lives.
    :param key_prefix: prepended to every key (printable ASCII, no spaces,
        at most 185 characters so keys stay under memcached's 250 bytes;
        ``check_key_prefix``).
    """

    def __init__(
        self,
        client: MemcacheClient,
        submit: BatchRunner,
        clock: IReactorTime,
        *,
        ttl_live: float,
        ttl_registered: float,
        ttl_deleted: float,
        key_prefix: str = "",
    ) -> None:
        check_key_prefix(key_prefix)
        for name, ttl in (
            ("ttl_live", ttl_live),
            ("ttl_registered", ttl_registered),
            ("ttl_deleted", ttl_deleted),
        ):
            if not ttl > 0:
                raise ValueError(f"{name} must be > 0")
        self._client = client
        self._steps = MemcacheSteps(client)
        self._submit = submit
        self._clock = clock
        self._ttl = {LIVE: ttl_live, REGISTERED: ttl_registered, DELETED: ttl_deleted}
        self._ttl_list = max(ttl_live, ttl_registered)
        self._prefix = key_prefix
        self.webpush = WebPushRecords(key_prefix, self._ttl_list)

    # -- the asynchronous API (reactor thread) --------------------------------

    def _run(self, operation: str, steps: Steps[Any]) -> Deferred[Any]:
        return self._submit(operation, self._steps, steps)

    def user_mode(self, uaid: str) -> Deferred[Mode | None]:
        """Fire with the mode of the user's record; refreshes its expiry."""
        return self._run("user_mode", self.user_mode_steps(uaid, self._clock.seconds()))

    def open_user(self, uaid: str, keep: Keep, claim: Claim | None = None) -> Deferred[Opened]:
        """Mode, claim and fetch in one job when the claim has steps (``_memcache_opening``)."""
        steps = None if claim is None else claim.steps(uaid)
        if claim is not None and steps is None:
            return open_stepwise(self, uaid, keep, claim)
        now = self._clock.seconds()
        pending = functools.partial(self.fetch_pending_steps, uaid, now)
        messages = functools.partial(self.webpush.fetch, uaid, now)
        job = open_steps(self.user_key(uaid), self.list_expire(now), keep, steps, pending, messages)
        return self._run("open_user", job).addCallback(landed, uaid, claim)

    def register(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        mode: Mode = Mode.SIMPLEPUSH,
        fresh: bool = False,
    ) -> Deferred[None]:
        now = self._clock.seconds()
        steps = self.register_steps(uaid, chid, channel_id, max_channels, now, mode, fresh)
        return self._run("register", steps)

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        return self._run("unregister", self.unregister_steps(uaid, chid, self._clock.seconds()))

    def update(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool = False,
    ) -> Deferred[UpdateResult]:
        steps = self.update_steps(uaid, chid, version, data, only_newer, self._clock.seconds())
        return self._run("update", steps)

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        """Fire with the live updates; refreshes the records' expiry (the list's is
        refreshed by the hello's ``user_mode``)."""
        return self._run("fetch_pending", self.fetch_pending_steps(uaid, self._clock.seconds()))

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        return self._run("ack", self.ack_steps(uaid, chid, version, self._clock.seconds()))

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        return self._run("expired", self.expired_steps(uaid, list(chids)))

    def store_message(
        self, uaid: str, message: NewMessage, max_pending: int
    ) -> Deferred[StoreResult]:
        steps = self.webpush.store(uaid, message, max_pending, self._clock.seconds())
        return self._run("store_message", steps)

    def fetch_messages(self, uaid: str) -> Deferred[list[StoredMessage]]:
        return self._run("fetch_messages", self.webpush.fetch(uaid, self._clock.seconds()))

    def delete_message(self, uaid: str, seq: int) -> Deferred[bool]:
        return self._run("delete_message", self.webpush.delete(uaid, seq, self._clock.seconds()))

    def check(self) -> Deferred[None]:
        return self._run("check", self.check_steps())

    def close(self) -> Deferred[None]:
        return self._run("close", self.close_steps())

    # -- keys and expiries -----------------------------------------------------

    def user_key(self, uaid: str) -> str:
        return f"{self._prefix}{uaid}"

    def _channel_key(self, uaid: str, chid: str) -> str:
        return f"{self._prefix}{uaid}.{chid}"

    def _expire(self, state: str, now: float) -> int:
        return memcached_expire(self._ttl[state], now)

    def list_expire(self, now: float) -> int:
        return memcached_expire(self._ttl_list, now)

    # -- the user's list (steps) ----------------------------------------------

    def _list_add(
        self,
        uaid: str,
        chid: str,
        max_channels: int,
        now: float,
        listed: tuple[Any, Any] | None = None,
    ) -> Steps[None]:
        """Make sure ``chid`` is listed, first enforcing ``max_channels`` (if > 0).

        ``listed`` is the list's ``(value, cas)`` when the caller has just
        read it.  When the other listed chids reach the limit their records
        are read: tombstones do not count, and chids whose record is gone
        are pruned from the list (and checked again after the write).
        """
        key = self.user_key(uaid)
        for _ in range(_CAS_ATTEMPTS):
            if listed is None:
                value, cas = yield Get(key)
            else:
                (value, cas), listed = listed, None
            chids = [] if value is None else decode_list(value)
            others = [c for c in chids if c != chid]
            pruned: list[str] = []
            if max_channels > 0 and len(others) >= max_channels:
                records = yield tuple(Get(self._channel_key(uaid, c)) for c in others)
                pruned = [c for c, (v, _) in zip(others, records, strict=True) if v is None]
                active = sum(
                    1 for v, _ in records if v is not None and decode_record(v).state != DELETED
                )
                if active >= max_channels:
                    raise TooManyChannels(f"UAID holds {active} channels")
            if chid in chids and not pruned:
                return
            new = sorted(set(others).difference(pruned) | {chid})
            if value is None:
                stored = yield Store(_ADD, key, new, self.list_expire(now))
            else:
                stored = yield Store(_CAS, key, new, self.list_expire(now), cas)
            if stored:
                if pruned:
                    yield from self._recheck_pruned(uaid, pruned, now)
                return
        raise StorageUnavailable("memcached: channel list contended, giving up")

    def _prune(self, uaid: str, gone: list[str], now: float) -> Steps[None]:
        """Remove chids whose record vanished from the list, then re-check them."""
        key = self.user_key(uaid)
        for _ in range(_CAS_ATTEMPTS):
            value, cas = yield Get(key)
            if value is None:
                return
            chids = decode_list(value)
            new = [c for c in chids if c not in gone]
            if new == chids:
                return
            stored = yield Store(_CAS, key, new, self.list_expire(now), cas)
            if stored is None:
                return
            if stored:
                yield from self._recheck_pruned(uaid, gone, now)
                return
        # Pruning is housekeeping: leave it for the next time.

    def _recheck_pruned(self, uaid: str, pruned: list[str], now: float) -> Steps[None]:
        """Re-list pruned chids whose record a concurrent register created."""
        records = yield tuple(Get(self._channel_key(uaid, c)) for c in pruned)
        for chid, (value, _) in zip(pruned, records, strict=True):
            if value is not None:
                yield from self._list_add(uaid, chid, 0, now)

    # -- the operations (steps, run on the storage pool) ------------------------

    def user_mode_steps(self, uaid: str, now: float) -> Steps[Mode | None]:
        """``user_mode`` as steps."""
        key = self.user_key(uaid)
        _, (value, _) = yield (Touch(key, self.list_expire(now)), Get(key))
        return mode_of(value)

    def register_steps(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        now: float,
        mode: Mode = Mode.SIMPLEPUSH,
        fresh: bool = False,
    ) -> Steps[None]:
        """``register`` as steps.

        ``fresh`` (nothing is expected under the UAID): the adds go first,
        without the read and its round trip; when a record is there after
        all, the register goes on as for any other UAID.
        """
        key = self._channel_key(uaid, chid)
        list_key = self.user_key(uaid)
        if fresh:
            if mode is Mode.WEBPUSH:  # read as absent: it adds, or reads on its own
                nothing = (None, None)
                yield from self.webpush.register(uaid, chid, channel_id, max_channels, now, nothing)
                return
            new, expire = self._registered_record(channel_id, now)
            if (yield from self._add_first(uaid, chid, max_channels, now, new, expire)):
                return
        (value, cas), listed = yield (Get(key), Get(list_key))
        if is_webpush(listed[0], mode):
            yield from self.webpush.register(uaid, chid, channel_id, max_channels, now, listed)
            return
        new, expire = self._registered_record(channel_id, now)
        if value is None and listed[0] is None:
            if (yield from self._add_first(uaid, chid, max_channels, now, new, expire)):
                return
            # The record was there first: read both again, as at the start.
            (value, cas), listed = yield (Get(key), Get(list_key))
        if value is not None and decode_record(value).state != DELETED:
            yield from self._list_add(uaid, chid, 0, now, listed)  # repairs a missing entry
            return
        yield from self._list_add(uaid, chid, max_channels, now, listed)
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                value, cas = yield Get(key)
            if value is not None and decode_record(value).state != DELETED:
                break  # a concurrent register created it
            store = (
                Store(_ADD, key, new, expire)
                if value is None
                else Store(_CAS, key, new, expire, cas)
            )
            # The list is read behind the write: a concurrent prune may have
            # removed the chid before the record existed.
            stored, listed = yield (store, Get(list_key))
            if stored:
                yield from self._list_add(uaid, chid, 0, now, listed)
                return
        else:
            raise StorageUnavailable("memcached: channel record contended, giving up")
        yield from self._list_add(uaid, chid, 0, now)

    def _registered_record(self, channel_id: str, now: float) -> tuple[object, int]:
        """A new channel record in state *registered*, and its expiry."""
        new = ChannelRecord(REGISTERED, channel_id, 0, None, now).encode()
        return new, self._expire(REGISTERED, now)

    def _add_first(
        self, uaid: str, chid: str, max_channels: int, now: float, new: object, expire: int
    ) -> Steps[bool]:
        """Add a user's list and ``chid``'s record in one round (neither was there).

        The list goes first and is read behind both, as in ``register_steps``.
        True when the chid is registered; False when the record was there
        first (the caller reads both again).  When only the list appeared
        meanwhile, the chid is listed within ``max_channels`` or the record
        added is taken back (``TooManyChannels``).
        """
        key = self._channel_key(uaid, chid)
        list_key = self.user_key(uaid)
        listed_ok, stored, listed = yield (
            Store(_ADD, list_key, [chid], self.list_expire(now)),
            Store(_ADD, key, new, expire),
            Get(list_key),
        )
        if not stored:
            return False
        if listed_ok:
            yield from self._list_add(uaid, chid, 0, now, listed)
            return True
        try:
            yield from self._list_add(uaid, chid, max_channels, now)
        except TooManyChannels:
            yield Delete(key)
            raise
        return True

    def unregister_steps(self, uaid: str, chid: str, now: float) -> Steps[None]:
        """``unregister`` as steps."""
        key = self._channel_key(uaid, chid)
        (value, cas), listed = yield (Get(key), Get(self.user_key(uaid)))
        if is_webpush(listed[0], Mode.SIMPLEPUSH):
            yield from self.webpush.unregister(uaid, chid, now, listed)
            return
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                value, cas = yield Get(key)
            if value is None:
                return
            record = decode_record(value)
            if record.state == DELETED:
                return
            tombstone = replace(record, state=DELETED, data=None, touched=now)
            if (yield Store(_CAS, key, tombstone.encode(), self._expire(DELETED, now), cas)):
                return
        raise StorageUnavailable("memcached: channel record contended, giving up")

    def update_steps(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool,
        now: float,
    ) -> Steps[UpdateResult]:
        """``update`` as steps."""
        key = self._channel_key(uaid, chid)
        for _ in range(_CAS_ATTEMPTS):
            value, cas = yield Get(key)
            if value is None:
                return UpdateResult(outcome=UpdateOutcome.GONE)
            record = decode_record(value)
            if record.state == DELETED:
                return UpdateResult(outcome=UpdateOutcome.GONE)
            if only_newer and version <= record.version:
                return UpdateResult(outcome=UpdateOutcome.STALE, channel_id=record.channel_id)
            live = ChannelRecord(LIVE, record.channel_id, version, data, now)
            if (yield Store(_CAS, key, live.encode(), self._expire(LIVE, now), cas)):
                return UpdateResult(outcome=UpdateOutcome.STORED, channel_id=record.channel_id)
        raise StorageUnavailable("memcached: channel record contended, giving up")

    def fetch_pending_steps(
        self, uaid: str, now: float, listed: tuple[Any, Any] | None = None
    ) -> Steps[list[PendingUpdate]]:
        """``fetch_pending`` as steps (``listed``: the user's record, just read)."""
        value, _ = listed if listed is not None else (yield Get(self.user_key(uaid)))
        chids = [] if value is None else decode_user(value)
        if value is None or not isinstance(chids, list) or not chids:
            return []  # no user, a WebPush one, or no channel
        keys = [self._channel_key(uaid, c) for c in chids]
        found = yield tuple(map(Get, keys))
        pending: list[PendingUpdate] = []
        gone: list[str] = []
        refresh: list[Store] = []
        for chid, key, (entry, cas) in zip(chids, keys, found, strict=True):
            if entry is None:
                gone.append(chid)
                continue
            record = decode_record(entry)
            if record.state == LIVE:
                pending.append(
                    PendingUpdate(
                        channel_id=record.channel_id, version=record.version, data=record.data
                    )
                )
            ttl = self._ttl[record.state]
            if record.state != DELETED and now - record.touched >= ttl / 2:
                # Refresh; a lost race means someone else just rewrote it.
                fresh = replace(record, touched=now).encode()
                refresh.append(Store(_CAS, key, fresh, self._expire(record.state, now), cas))
        if refresh:
            yield tuple(refresh)
        if gone:
            yield from self._prune(uaid, gone, now)
        return pending

    def ack_steps(self, uaid: str, chid: str, version: int, now: float) -> Steps[bool]:
        """``ack`` as steps."""
        key = self._channel_key(uaid, chid)
        for _ in range(_CAS_ATTEMPTS):
            value, cas = yield Get(key)
            if value is None:
                return False
            record = decode_record(value)
            if record.state != LIVE or version < record.version:
                return False
            cleared = ChannelRecord(REGISTERED, record.channel_id, record.version, None, now)
            if (yield Store(_CAS, key, cleared.encode(), self._expire(REGISTERED, now), cas)):
                return True
        raise StorageUnavailable("memcached: channel record contended, giving up")

    def expired_steps(self, uaid: str, chids: list[str]) -> Steps[list[str]]:
        """``expired`` as steps."""
        wanted = sorted(set(chids))
        if not wanted:
            return []
        found = yield tuple(Get(self._channel_key(uaid, c)) for c in wanted)
        dead = {
            c
            for c, (value, _) in zip(wanted, found, strict=True)
            if value is not None and decode_record(value).state == DELETED
        }
        return [c for c in chids if c in dead]

    def check_steps(self) -> Steps[None]:
        """``check`` as steps: write, read back and delete a probe; reach every server."""
        key = f"{self._prefix}status_{uuid.uuid4().hex}"
        if not (yield Store(b"set", key, "test", 6)):
            raise StorageUnavailable("memcached: health probe was not stored")
        value, _ = yield Get(key)
        if value != "test":
            raise StorageUnavailable("memcached: health probe read back wrong")
        yield Delete(key)
        # A HashClient spreads keys: probe every server, not just this key's.
        self._client.check_servers()

    def close_steps(self) -> Steps[None]:
        """``close`` as steps: close the client's connections (no command)."""
        self._client.close()
        yield from ()
