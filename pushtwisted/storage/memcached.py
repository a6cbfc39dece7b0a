"""``MemcachedStorage``: the shared backend for clusters (pymemcache).

Record layout (PROTOCOL.md section 5.2, improved as section 16 decides); every
key starts with the configured ``key_prefix``:

``<uaid>``
    JSON list of chids, sorted and de-duplicated.  Its presence means the
    user exists.  It lists every chid that has (or recently had) a record,
    tombstones included; chids whose record has vanished (expired
    tombstones, evictions) are pruned at ``fetch_pending`` and when
    ``register`` checks the channel limit.
``<uaid>.<chid>``
    JSON ``{"state", "channel_id", "version", "data", "touched"}`` with
    ``state`` one of ``live``, ``registered``, ``deleted`` and an expiry by
    state: ``ttl_live``, ``ttl_registered``, ``ttl_deleted`` (the tombstone).

Every read-modify-write is a ``gets``/``cas`` loop with bounded, jittered
retries (then ``StorageUnavailable``), so concurrent writers lose nothing:
an ack clears only when acked >= stored, an update never resurrects a
tombstone nor overwrites a concurrent unregister, and concurrent registers
never drop each other's chids.  A chid is added to the list *before* its
record is created and checked again after; whoever prunes the list checks
the pruned records again after writing it.  Either side therefore sees the
other's write, and a live record always ends up listed.  ``max_channels``
is exact for one writer per UAID (one connection at a time); concurrent
registers of *different* new chids of one UAID may overshoot it by the
number in flight, since a record being created is not counted yet.

Expiry: memcached reads an expiry over 30 days as an absolute Unix time, so
longer TTLs are sent as ``now + ttl`` (``memcached_expire``).  The client,
its serde and the error translation are in ``pushtwisted.storage._memcache``,
shared with the cluster directory.  The list and
the records are refreshed at hello: ``user_exists`` touches the list, and
``fetch_pending`` touches it and rewrites records written more than half
their TTL ago, so idle devices keep their registrations.

A miss is a normal result; any error (refused connection, timeout,
``MemcacheError``, a corrupt value) raises ``StorageUnavailable`` and is
never read as a miss.  The ``_blocking`` methods run on the storage pool and
touch only their arguments and the client; ``now`` comes from the reactor
clock, read on the reactor thread.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage._memcache import (
    MemcacheClient,
    check_key_prefix,
    memcached_expire,
    translate_errors,
)
from pushtwisted.storage.interface import PendingUpdate, UpdateOutcome, UpdateResult

if TYPE_CHECKING:
    from pushtwisted.threadpool import Runner

__all__ = ["MemcachedStorage"]

#: gets/cas attempts before giving up with StorageUnavailable.
_CAS_ATTEMPTS = 64

_LIVE = "live"
_REGISTERED = "registered"
_DELETED = "deleted"
_STATES = frozenset((_LIVE, _REGISTERED, _DELETED))


def _backoff(attempt: int) -> None:
    """Sleep a little (jittered, growing) after a lost cas race."""
    time.sleep(random.uniform(0, 0.001) * min(attempt + 1, 10))


@dataclass(frozen=True, slots=True)
class _Record:
    state: str
    channel_id: str
    version: int
    data: str | None
    touched: float

    def encode(self) -> dict[str, object]:
        return {
            "state": self.state,
            "channel_id": self.channel_id,
            "version": self.version,
            "data": self.data,
            "touched": self.touched,
        }


def _decode_record(value: object) -> _Record:
    if isinstance(value, dict):
        state = value.get("state")
        channel_id = value.get("channel_id")
        version = value.get("version")
        data = value.get("data")
        touched = value.get("touched", 0)
        if (
            state in _STATES
            and isinstance(channel_id, str)
            and isinstance(version, int)
            and not isinstance(version, bool)
            and (data is None or isinstance(data, str))
            and isinstance(touched, (int, float))
        ):
            return _Record(str(state), channel_id, version, data, float(touched))
    raise StorageUnavailable(f"memcached: corrupt channel record {value!r:.80}")


def _decode_list(value: object) -> list[str]:
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return sorted(set(value))
    raise StorageUnavailable(f"memcached: corrupt channel list {value!r:.80}")


class MemcachedStorage:
    """A ``Storage`` on memcached through a thread-safe pymemcache client.

    :param client: from ``pushtwisted.storage._memcache.make_memcached_client`` (JSON serde, pooled,
        ``ignore_exc=False``, ``default_noreply=False``).
    :param run: the runner of blocking calls (``ThreadPoolService.run``).
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
        run: Runner,
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
        self._run = run
        self._clock = clock
        self._ttl = {_LIVE: ttl_live, _REGISTERED: ttl_registered, _DELETED: ttl_deleted}
        self._ttl_list = max(ttl_live, ttl_registered)
        self._prefix = key_prefix

    # -- the asynchronous API (reactor thread) --------------------------------

    def user_exists(self, uaid: str) -> Deferred[bool]:
        """Fire True when the user's list exists; refreshes its expiry."""
        return self._run("user_exists", self._user_exists_blocking, uaid, self._clock.seconds())

    def register(self, uaid: str, chid: str, channel_id: str, max_channels: int) -> Deferred[None]:
        return self._run(
            "register",
            self._register_blocking,
            uaid,
            chid,
            channel_id,
            max_channels,
            self._clock.seconds(),
        )

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        return self._run("unregister", self._unregister_blocking, uaid, chid, self._clock.seconds())

    def update(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool = False,
    ) -> Deferred[UpdateResult]:
        return self._run(
            "update",
            self._update_blocking,
            uaid,
            chid,
            version,
            data,
            only_newer,
            self._clock.seconds(),
        )

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        """Fire with the live updates; refreshes the list's and records' expiry."""
        return self._run("fetch_pending", self._fetch_pending_blocking, uaid, self._clock.seconds())

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        return self._run("ack", self._ack_blocking, uaid, chid, version, self._clock.seconds())

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        return self._run("expired", self._expired_blocking, uaid, list(chids))

    def check(self) -> Deferred[None]:
        return self._run("check", self._check_blocking)

    def close(self) -> Deferred[None]:
        return self._run("close", self._close_blocking)

    # -- keys and expiries -----------------------------------------------------

    def _user_key(self, uaid: str) -> str:
        return f"{self._prefix}{uaid}"

    def _channel_key(self, uaid: str, chid: str) -> str:
        return f"{self._prefix}{uaid}.{chid}"

    def _expire(self, state: str, now: float) -> int:
        return memcached_expire(self._ttl[state], now)

    def _list_expire(self, now: float) -> int:
        return memcached_expire(self._ttl_list, now)

    # -- the user's list (pool threads) ---------------------------------------

    def _list_add(self, uaid: str, chid: str, max_channels: int, now: float) -> None:
        """Make sure ``chid`` is listed, first enforcing ``max_channels`` (if > 0).

        When the other listed chids reach the limit their records are read:
        tombstones do not count, and chids whose record is gone are pruned
        from the list (and checked again after the write).
        """
        key = self._user_key(uaid)
        for attempt in range(_CAS_ATTEMPTS):
            value, cas = self._client.gets(key)
            chids = [] if value is None else _decode_list(value)
            others = [c for c in chids if c != chid]
            pruned: list[str] = []
            if max_channels > 0 and len(others) >= max_channels:
                keys = {c: self._channel_key(uaid, c) for c in others}
                records = self._client.get_many(list(keys.values()))
                pruned = [c for c in others if keys[c] not in records]
                active = sum(
                    1
                    for c in others
                    if keys[c] in records and _decode_record(records[keys[c]]).state != _DELETED
                )
                if active >= max_channels:
                    raise TooManyChannels(f"UAID holds {active} channels")
            if chid in chids and not pruned:
                return
            new = sorted(set(others).difference(pruned) | {chid})
            stored: bool | None
            if value is None:
                stored = self._client.add(key, new, expire=self._list_expire(now), noreply=False)
            else:
                stored = self._client.cas(key, new, cas, expire=self._list_expire(now))
            if stored:
                if pruned:
                    self._recheck_pruned(uaid, pruned, now)
                return
            _backoff(attempt)
        raise StorageUnavailable("memcached: channel list contended, giving up")

    def _prune(self, uaid: str, gone: list[str], now: float) -> None:
        """Remove chids whose record vanished from the list, then re-check them."""
        key = self._user_key(uaid)
        for attempt in range(_CAS_ATTEMPTS):
            value, cas = self._client.gets(key)
            if value is None:
                return
            chids = _decode_list(value)
            new = [c for c in chids if c not in gone]
            if new == chids:
                return
            stored = self._client.cas(key, new, cas, expire=self._list_expire(now))
            if stored is None:
                return
            if stored:
                self._recheck_pruned(uaid, gone, now)
                return
            _backoff(attempt)
        # Pruning is housekeeping: leave it for the next time.

    def _recheck_pruned(self, uaid: str, pruned: list[str], now: float) -> None:
        """Re-list pruned chids whose record a concurrent register created."""
        keys = [self._channel_key(uaid, c) for c in pruned]
        records = self._client.get_many(keys)
        for chid, key in zip(pruned, keys, strict=True):
            if key in records:
                self._list_add(uaid, chid, 0, now)

    # -- blocking operations (pool threads) -----------------------------------

    @translate_errors
    def _user_exists_blocking(self, uaid: str, now: float) -> bool:
        return bool(
            self._client.touch(self._user_key(uaid), expire=self._list_expire(now), noreply=False)
        )

    @translate_errors
    def _register_blocking(
        self, uaid: str, chid: str, channel_id: str, max_channels: int, now: float
    ) -> None:
        key = self._channel_key(uaid, chid)
        value, _ = self._client.gets(key)
        if value is not None and _decode_record(value).state != _DELETED:
            self._list_add(uaid, chid, 0, now)  # repairs a missing list entry
            return
        self._list_add(uaid, chid, max_channels, now)
        new = _Record(_REGISTERED, channel_id, 0, None, now).encode()
        expire = self._expire(_REGISTERED, now)
        for attempt in range(_CAS_ATTEMPTS):
            value, cas = self._client.gets(key)
            stored: bool | None
            if value is None:
                stored = self._client.add(key, new, expire=expire, noreply=False)
            elif _decode_record(value).state != _DELETED:
                break  # a concurrent register created it
            else:
                stored = self._client.cas(key, new, cas, expire=expire)
            if stored:
                break
            _backoff(attempt)
        else:
            raise StorageUnavailable("memcached: channel record contended, giving up")
        # A concurrent prune may have removed the chid before the record
        # existed; check again now that it does.
        self._list_add(uaid, chid, 0, now)

    @translate_errors
    def _unregister_blocking(self, uaid: str, chid: str, now: float) -> None:
        key = self._channel_key(uaid, chid)
        for attempt in range(_CAS_ATTEMPTS):
            value, cas = self._client.gets(key)
            if value is None:
                return
            record = _decode_record(value)
            if record.state == _DELETED:
                return
            tombstone = replace(record, state=_DELETED, data=None, touched=now)
            if self._client.cas(key, tombstone.encode(), cas, expire=self._expire(_DELETED, now)):
                return
            _backoff(attempt)
        raise StorageUnavailable("memcached: channel record contended, giving up")

    @translate_errors
    def _update_blocking(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool,
        now: float,
    ) -> UpdateResult:
        key = self._channel_key(uaid, chid)
        for attempt in range(_CAS_ATTEMPTS):
            value, cas = self._client.gets(key)
            if value is None:
                return UpdateResult(outcome=UpdateOutcome.GONE)
            record = _decode_record(value)
            if record.state == _DELETED:
                return UpdateResult(outcome=UpdateOutcome.GONE)
            if only_newer and version <= record.version:
                return UpdateResult(outcome=UpdateOutcome.STALE, channel_id=record.channel_id)
            live = _Record(_LIVE, record.channel_id, version, data, now)
            if self._client.cas(key, live.encode(), cas, expire=self._expire(_LIVE, now)):
                return UpdateResult(outcome=UpdateOutcome.STORED, channel_id=record.channel_id)
            _backoff(attempt)
        raise StorageUnavailable("memcached: channel record contended, giving up")

    @translate_errors
    def _fetch_pending_blocking(self, uaid: str, now: float) -> list[PendingUpdate]:
        user_key = self._user_key(uaid)
        value = self._client.get(user_key)
        if value is None:
            return []
        chids = _decode_list(value)
        self._client.touch(user_key, expire=self._list_expire(now), noreply=False)
        keys = {c: self._channel_key(uaid, c) for c in chids}
        found = self._client.gets_many(list(keys.values())) if keys else {}
        pending: list[PendingUpdate] = []
        gone: list[str] = []
        for chid in chids:
            entry = found.get(keys[chid])
            if entry is None:
                gone.append(chid)
                continue
            record = _decode_record(entry[0])
            if record.state == _LIVE:
                pending.append(
                    PendingUpdate(
                        channel_id=record.channel_id, version=record.version, data=record.data
                    )
                )
            ttl = self._ttl[record.state]
            if record.state != _DELETED and now - record.touched >= ttl / 2:
                # Refresh; a lost race means someone else just rewrote it.
                fresh = replace(record, touched=now)
                self._client.cas(
                    keys[chid], fresh.encode(), entry[1], expire=self._expire(record.state, now)
                )
        if gone:
            self._prune(uaid, gone, now)
        return pending

    @translate_errors
    def _ack_blocking(self, uaid: str, chid: str, version: int, now: float) -> bool:
        key = self._channel_key(uaid, chid)
        for attempt in range(_CAS_ATTEMPTS):
            value, cas = self._client.gets(key)
            if value is None:
                return False
            record = _decode_record(value)
            if record.state != _LIVE or version < record.version:
                return False
            cleared = _Record(_REGISTERED, record.channel_id, record.version, None, now)
            if self._client.cas(key, cleared.encode(), cas, expire=self._expire(_REGISTERED, now)):
                return True
            _backoff(attempt)
        raise StorageUnavailable("memcached: channel record contended, giving up")

    @translate_errors
    def _expired_blocking(self, uaid: str, chids: list[str]) -> list[str]:
        keys = {c: self._channel_key(uaid, c) for c in set(chids)}
        found = self._client.get_many(list(keys.values())) if keys else {}
        dead = {
            c for c, k in keys.items() if k in found and _decode_record(found[k]).state == _DELETED
        }
        return [c for c in chids if c in dead]

    @translate_errors
    def _check_blocking(self) -> None:
        key = f"{self._prefix}status_{uuid.uuid4().hex}"
        if not self._client.set(key, "test", expire=6, noreply=False):
            raise StorageUnavailable("memcached: health probe was not stored")
        if self._client.get(key) != "test":
            raise StorageUnavailable("memcached: health probe read back wrong")
        self._client.delete(key, noreply=False)
        # A HashClient spreads keys: probe every server, not just this key's.
        self._client.check_servers()

    @translate_errors
    def _close_blocking(self) -> None:
        self._client.close()
