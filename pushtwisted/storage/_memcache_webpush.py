"""The WebPush half of ``MemcachedStorage``: one user record, one key per message body.

Keys (after the configured prefix):

``<uaid>``
    A WebPush user's record: JSON ``{"mode": "webpush", "channels":
    {chid: channel_id}, "next": <next seq>, "messages": [[seq, chid, topic,
    stored_at, ttl], ...]}``.  A SimplePush user's record at the same key is
    the JSON list of chids (``MemcachedStorage``), which is how the mode is
    told apart.  The record lives as long as a SimplePush user's list and is
    refreshed the same way (``user_mode`` touches it at hello).
``<uaid>:m:<seq>``
    The body of message ``seq``: JSON ``{"data", "headers"}``, expiring a
    second after the message (its entry decides when it is expired).

Everything about a WebPush user but the bodies is in its one record, so
every change is one ``cas`` on one key: two messages stored at once, a
message racing an ack, or racing an unregister, each see the other's write
or lose their ``cas`` and read again.  A WebPush channel has no record of
its own and leaves no tombstone: the SimplePush operations (``update``,
``ack``, ``expired``) never find one.

A message takes its sequence number by *claiming* its body key with
``add`` before its entry is written: a number already claimed fails the
``add``, so two writers never share one, and a claim older than the
record's ``next`` (which a record read since shows) is dropped for a new
one, so a number is never reused.  The body exists before its entry does,
so an entry whose body is missing was evicted or expired: it is dropped.
Expired entries are dropped whenever the record is written, and by
``fetch`` when it finds any; bodies expire by themselves.

What each operation costs (commands, rounds in brackets):

- ``store``: ``gets`` the record, ``add`` the body, ``cas`` the record (3);
  a replaced topic message's body is deleted after (4);
- ``fetch``: ``gets`` the record, then one ``gets`` line of every live
  body (2), plus a ``cas`` when entries were dropped (3);
- ``delete``: ``gets`` the record, ``cas`` it, ``delete`` the body (3);
- ``register``/``unregister``: the reads of ``MemcachedStorage``, then one
  ``cas`` (or ``add`` for a new user) (2); at unregister, then ``delete`` of
  the channel's bodies (3).

A body is deleted only once the write that drops its entry has succeeded:
an entry whose body is gone reads as evicted, and a fetch would drop it.

These generators run on the storage pool (``_memcache_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage._memcache import memcached_expire
from pushtwisted.storage._memcache_records import (
    Entry,
    WebPushUser,
    decode_body,
    decode_user,
    first_seq,
)
from pushtwisted.storage._memcache_steps import Steps
from pushtwisted.storage._memcache_wire import Delete, Get, Store
from pushtwisted.storage.interface import (
    NewMessage,
    StoredMessage,
    StoreOutcome,
    StoreResult,
)

__all__ = ["WebPushRecords"]

#: gets/cas attempts before giving up with StorageUnavailable.
_CAS_ATTEMPTS = 64
_ADD = b"add"
#: Seconds a body outlives its entry: memcached's clock ticks in whole
#: seconds, so an item may expire up to one second early.
_BODY_SLACK = 1
_CAS = b"cas"


@dataclass(frozen=True, slots=True)
class WebPushRecords:
    """The WebPush operations, as steps, on the keys under ``prefix``.

    :param prefix: the storage's key prefix.
    :param ttl_user: seconds a user record lives (refreshed at every write
        and by ``user_mode``).
    """

    prefix: str
    ttl_user: float

    def user_key(self, uaid: str) -> str:
        return f"{self.prefix}{uaid}"

    def body_key(self, uaid: str, seq: int) -> str:
        return f"{self.prefix}{uaid}:m:{seq}"

    def _cas(self, uaid: str, user: WebPushUser, cas: Any, now: float) -> Store:
        expire = memcached_expire(self.ttl_user, now)
        return Store(_CAS, self.user_key(uaid), user.encode(), expire, cas)

    def _read(
        self, uaid: str, listed: tuple[Any, Any] | None
    ) -> Steps[tuple[list[str] | WebPushUser | None, Any]]:
        """Read the user record (unless ``listed`` is the caller's fresh read)."""
        value, cas = listed if listed is not None else (yield Get(self.user_key(uaid)))
        return (None if value is None else decode_user(value)), cas

    def register(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        now: float,
        listed: tuple[Any, Any] | None = None,
    ) -> Steps[None]:
        """Create the WebPush user (if new) with the channel, or add the channel."""
        for _ in range(_CAS_ATTEMPTS):
            user, cas = yield from self._read(uaid, listed)
            listed = None
            if user is None:
                new = WebPushUser({chid: channel_id}, first_seq(now))
                expire = memcached_expire(self.ttl_user, now)
                if (yield Store(_ADD, self.user_key(uaid), new.encode(), expire)):
                    return
                continue
            if not isinstance(user, WebPushUser):
                raise StorageUnavailable("memcached: the UAID became a SimplePush user")
            if chid in user.channels:
                return
            if max_channels > 0 and len(user.channels) >= max_channels:
                raise TooManyChannels(f"UAID holds {len(user.channels)} channels")
            channels = {**user.channels, chid: channel_id}
            if (yield self._cas(uaid, replace(user.live(now), channels=channels), cas, now)):
                return
        raise StorageUnavailable("memcached: user record contended, giving up")

    def unregister(
        self, uaid: str, chid: str, now: float, listed: tuple[Any, Any] | None = None
    ) -> Steps[None]:
        """Remove the channel and its messages (their bodies deleted after the write)."""
        for _ in range(_CAS_ATTEMPTS):
            user, cas = yield from self._read(uaid, listed)
            listed = None
            if not isinstance(user, WebPushUser) or chid not in user.channels:
                return
            gone = {e.seq for e in user.entries if e.chid == chid}
            channels = {c: s for c, s in user.channels.items() if c != chid}
            new = replace(user.without(gone).live(now), channels=channels)
            stored = yield self._cas(uaid, new, cas, now)
            if stored and gone:
                yield tuple(Delete(self.body_key(uaid, seq)) for seq in sorted(gone))
            if stored is None or stored:
                return
        raise StorageUnavailable("memcached: user record contended, giving up")

    def store(
        self, uaid: str, message: NewMessage, max_pending: int, now: float
    ) -> Steps[StoreResult]:
        """``Storage.store_message`` (see the module docstring for the claim of a number)."""
        headers = dict(message.headers)
        body = {"data": message.data, "headers": headers}
        claimed: int | None = None
        tried = 0
        for _ in range(_CAS_ATTEMPTS):
            user, cas = yield from self._read(uaid, None)
            result = self._refusal(user, message, max_pending, now)
            if result is not None:
                if claimed is not None:
                    yield Delete(self.body_key(uaid, claimed))
                return result
            assert isinstance(user, WebPushUser)
            if claimed is not None and claimed < user.next_seq:
                yield Delete(self.body_key(uaid, claimed))  # may have been used since
                claimed = None
            if claimed is None:
                tried = max(user.next_seq, tried + 1)
                expire = memcached_expire(message.ttl + _BODY_SLACK, now)
                if not (yield Store(_ADD, self.body_key(uaid, tried), body, expire)):
                    continue
                claimed = tried
            live = user.live(now)
            replaced = {
                e.seq
                for e in live.entries
                if message.topic is not None and (e.chid, e.topic) == (message.chid, message.topic)
            }
            entry = Entry(claimed, message.chid, message.topic, now, message.ttl)
            new = replace(
                live.without(replaced),
                next_seq=max(user.next_seq, claimed + 1),
                entries=(*live.without(replaced).entries, entry),
            )
            stored = yield self._cas(uaid, new, cas, now)
            if stored:
                if replaced:
                    yield tuple(Delete(self.body_key(uaid, seq)) for seq in sorted(replaced))
                channel_id = user.channels[message.chid]
                return StoreResult(
                    outcome=StoreOutcome.STORED,
                    channel_id=channel_id,
                    message=StoredMessage(
                        chid=message.chid,
                        channel_id=channel_id,
                        seq=claimed,
                        ttl=message.ttl,
                        stored_at=now,
                        topic=message.topic,
                        data=message.data,
                        headers=headers,
                    ),
                )
        if claimed is not None:
            yield Delete(self.body_key(uaid, claimed))
        raise StorageUnavailable("memcached: user record contended, giving up")

    @staticmethod
    def _refusal(
        user: list[str] | WebPushUser | None, message: NewMessage, max_pending: int, now: float
    ) -> StoreResult | None:
        """The answer of a store that writes nothing (``GONE``, ``NOT_STORED``, ``FULL``)."""
        if not isinstance(user, WebPushUser) or message.chid not in user.channels:
            return StoreResult(outcome=StoreOutcome.GONE)
        channel_id = user.channels[message.chid]
        if message.ttl <= 0:
            return StoreResult(outcome=StoreOutcome.NOT_STORED, channel_id=channel_id)
        entries = user.live(now).entries
        replaces = message.topic is not None and any(
            (e.chid, e.topic) == (message.chid, message.topic) for e in entries
        )
        if not replaces and max_pending > 0 and len(entries) >= max_pending:
            return StoreResult(outcome=StoreOutcome.FULL, channel_id=channel_id)
        return None

    def fetch(
        self, uaid: str, now: float, listed: tuple[Any, Any] | None = None
    ) -> Steps[list[StoredMessage]]:
        """The live messages in delivery order; drops expired and evicted entries."""
        user, cas = yield from self._read(uaid, listed)
        if not isinstance(user, WebPushUser):
            return []
        live = [e for e in user.entries if now < e.expires_at and e.chid in user.channels]
        bodies = (yield tuple(Get(self.body_key(uaid, e.seq)) for e in live)) if live else ()
        found: list[StoredMessage] = []
        for entry, (body, _) in zip(live, bodies, strict=True):
            if body is None:
                continue  # evicted (or expired a moment early): dropped below
            data, headers = decode_body(body)
            found.append(
                StoredMessage(
                    chid=entry.chid,
                    channel_id=user.channels[entry.chid],
                    seq=entry.seq,
                    ttl=entry.ttl,
                    stored_at=entry.stored_at,
                    topic=entry.topic,
                    data=data,
                    headers=headers,
                )
            )
        if len(found) < len(user.entries):
            # Housekeeping: one try; a lost race means someone else wrote it.
            kept = {m.seq for m in found}
            dropped = {e.seq for e in user.entries if e.seq not in kept}
            yield self._cas(uaid, user.without(dropped), cas, now)
        found.sort(key=lambda m: (m.topic is None, m.seq))
        return found

    def delete(self, uaid: str, seq: int, now: float) -> Steps[bool]:
        """Delete one live message: its entry, then its body."""
        for _ in range(_CAS_ATTEMPTS):
            user, cas = yield from self._read(uaid, None)
            if not isinstance(user, WebPushUser):
                return False
            live = user.live(now)
            if not any(e.seq == seq for e in live.entries):
                return False
            stored = yield self._cas(uaid, live.without({seq}), cas, now)
            if stored is None:
                return False
            if stored:
                # Only now: a body gone with its entry still indexed reads as evicted.
                yield Delete(self.body_key(uaid, seq))
                return True
        raise StorageUnavailable("memcached: user record contended, giving up")
