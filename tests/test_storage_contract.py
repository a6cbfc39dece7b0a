"""The ``StorageContract``: one behaviour for every ``Storage`` backend.

``StorageContract`` is a mixin of ``async def`` tests written against the
``Storage`` protocol, with ``MemoryStorage`` as the reference.  Here it runs
synchronously (``@synchronous``) against

- ``MemoryStorage``;
- ``SqliteStorage`` on a temporary file with an inline runner;
- ``MemcachedStorage`` on ``FakeMemcache`` (``pushtwisted.testing.memcache``),
  an in-process model of memcached's ``gets``/``cas``/expiry semantics
  driven by a ``task.Clock``.

``tests/integration/test_storage_backends.py`` runs the same mixin against
SQLite on the real thread pool and against a real memcached.  A
hypothesis model test checks that random operation sequences give identical
results on all backends here, and a few interleaving tests force the
compare-and-set races of the memcached backend deterministically.
"""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageUnavailable, TooManyChannels
from pushtwisted.storage._memcache_records import ChannelRecord
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage.interface import (
    Mode,
    NewMessage,
    PendingUpdate,
    Storage,
    StoreOutcome,
    StoreResult,
    UpdateOutcome,
    UpdateResult,
)
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.storage.sqlite import SCHEMA_VERSION, SqliteStorage
from pushtwisted.testing import inline_run, inline_submit
from pushtwisted.testing.memcache import FakeMemcache
from tests._opening_contract import OpenUserContract

_C = TypeVar("_C", bound=type)

#: A realistic "now" for clocks, so absolute memcached expiries make sense.
EPOCH = 1_700_000_000.0


def new_id() -> str:
    """A fresh ID in normal form."""
    return uuid.uuid4().hex


def spelling(normal: str) -> str:
    """The client's own spelling of an ID (dashed, upper case)."""
    return str(uuid.UUID(normal)).upper()


def synchronous(cls: _C) -> _C:
    """Turn the ``async def test_*`` methods of ``cls`` into synchronous tests.

    Each coroutine must finish without waiting (every Deferred it awaits has
    already fired), which holds for the inline backends.
    """
    for name in dir(cls):
        if not name.startswith("test_"):
            continue
        func = getattr(cls, name)
        if inspect.iscoroutinefunction(func):
            setattr(cls, name, _drive(func))
    return cls


def _drive(func: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], None]:
    @functools.wraps(func)
    def test(self: SynchronousTestCase) -> None:
        results: list[object] = []
        Deferred.fromCoroutine(func(self)).addBoth(results.append)
        if not results:
            self.fail("the storage did not answer synchronously")
        if isinstance(results[0], Failure):
            results[0].raiseException()

    return test


class BackendFixture:
    """A fresh ``self.storage`` per test, for the contract mixins.

    Subclasses implement ``make_storage`` (registering their own cleanup)
    and ``advance`` (move the storage's clock, or wait in real time).
    """

    storage: Storage

    def make_storage(self, *, ttl_deleted: float) -> Storage:
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.storage = self.make_storage(ttl_deleted=3600.0)


class StorageContract(OpenUserContract, BackendFixture):
    """Tests every ``Storage`` must pass (mix into a trial test case)."""

    #: Tombstone TTL used by the expiry test, and the extra wait after it.
    expiry_ttl: float = 30.0
    expiry_slack: float = 1.0

    async def registered(self, uaid: str | None = None) -> tuple[str, str, str]:
        """Register a fresh channel; return (uaid, chid, channel_id)."""
        uaid = uaid or new_id()
        chid = new_id()
        await self.storage.register(uaid, chid, spelling(chid), 0)
        return uaid, chid, spelling(chid)

    async def failure_of(self, d: Deferred, *types: type[BaseException]) -> BaseException:
        try:
            await d
        except types as e:
            return e
        raise self.failureException(f"{d!r} did not fail with {types}")  # type: ignore[attr-defined]

    # -- users ----------------------------------------------------------------

    async def test_unknown_user(self) -> None:
        """An unknown UAID does not exist and has nothing pending."""
        uaid = new_id()
        self.assertIsNone(await self.storage.user_mode(uaid))
        self.assertEqual(await self.storage.fetch_pending(uaid), [])
        self.assertEqual(await self.storage.expired(uaid, [new_id()]), [])

    async def test_register_creates_user(self) -> None:
        """The first register creates the user; the channel starts with nothing pending."""
        uaid, _, _ = await self.registered()
        self.assertIsNotNone(await self.storage.user_mode(uaid))
        self.assertEqual(await self.storage.fetch_pending(uaid), [])

    async def test_users_are_separate(self) -> None:
        """The same chid under two UAIDs is two channels."""
        uaid1, uaid2, chid = new_id(), new_id(), new_id()
        await self.storage.register(uaid1, chid, "one", 0)
        await self.storage.register(uaid2, chid, "two", 0)
        await self.storage.update(uaid1, chid, 5, None)
        await self.storage.unregister(uaid2, chid)
        self.assertEqual(
            await self.storage.fetch_pending(uaid1), [PendingUpdate(channel_id="one", version=5)]
        )
        self.assertEqual(await self.storage.fetch_pending(uaid2), [])
        self.assertEqual(await self.storage.expired(uaid1, [chid]), [])
        self.assertEqual(await self.storage.expired(uaid2, [chid]), [chid])

    # -- register -------------------------------------------------------------

    async def test_register_idempotent_keeps_pending(self) -> None:
        """Registering a live channel again changes nothing: its update stays pending."""
        uaid, chid, channel_id = await self.registered()
        await self.storage.update(uaid, chid, 7, "payload")
        await self.storage.register(uaid, chid, "another-spelling", 1)
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=7, data="payload")],
        )

    async def test_register_over_tombstone_revives(self) -> None:
        """Registering over a tombstone revives the channel with the new spelling, from scratch."""
        uaid, chid, _ = await self.registered()
        await self.storage.update(uaid, chid, 9, "old")
        await self.storage.unregister(uaid, chid)
        await self.storage.register(uaid, chid, chid, 0)
        self.assertEqual(await self.storage.expired(uaid, [chid]), [])
        self.assertEqual(await self.storage.fetch_pending(uaid), [])
        result = await self.storage.update(uaid, chid, 1, None, only_newer=True)
        self.assertEqual(result, UpdateResult(outcome=UpdateOutcome.STORED, channel_id=chid))

    async def test_max_channels(self) -> None:
        """Past ``max_channels`` a new channel fails; existing ones and tombstones do not count."""
        uaid, a, b, c = new_id(), new_id(), new_id(), new_id()
        await self.storage.register(uaid, a, a, 2)
        await self.storage.register(uaid, b, b, 2)
        await self.failure_of(self.storage.register(uaid, c, c, 2), TooManyChannels)
        await self.storage.register(uaid, a, a, 2)  # already there: fine
        self.assertEqual((await self.storage.update(uaid, c, 1, None)).outcome, UpdateOutcome.GONE)
        await self.storage.unregister(uaid, a)
        await self.storage.register(uaid, c, c, 2)
        await self.failure_of(self.storage.register(uaid, a, a, 2), TooManyChannels)
        self.assertEqual(await self.storage.expired(uaid, [a]), [a])

    async def test_fresh_register_is_a_register(self) -> None:
        """``fresh`` is a hint only: over what is stored, register does what it does without it."""
        uaid, a, b, c = new_id(), new_id(), new_id(), new_id()
        await self.storage.register(uaid, a, "first", 2, fresh=True)
        self.assertEqual(await self.storage.user_mode(uaid), Mode.SIMPLEPUSH)
        await self.storage.update(uaid, a, 4, "kept")
        await self.storage.register(uaid, a, "again", 2, fresh=True)  # live: unchanged
        await self.storage.register(uaid, b, b, 2, fresh=True)  # a second channel
        await self.failure_of(self.storage.register(uaid, c, c, 2, fresh=True), TooManyChannels)
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id="first", version=4, data="kept")],
        )
        self.assertEqual((await self.storage.update(uaid, c, 1, None)).outcome, UpdateOutcome.GONE)
        await self.storage.unregister(uaid, b)
        await self.storage.register(uaid, b, "revived", 2, fresh=True)  # over a tombstone
        result = await self.storage.update(uaid, b, 1, None)
        self.assertEqual(result, UpdateResult(outcome=UpdateOutcome.STORED, channel_id="revived"))

        webpush = new_id()
        await self.storage.register(webpush, a, a, 1, Mode.WEBPUSH, fresh=True)
        await self.storage.register(webpush, a, a, 1, Mode.WEBPUSH, fresh=True)  # again: fine
        await self.failure_of(
            self.storage.register(webpush, b, b, 1, Mode.WEBPUSH, fresh=True), TooManyChannels
        )
        self.assertEqual(await self.storage.user_mode(webpush), Mode.WEBPUSH)
        stored = await self.storage.store_message(webpush, NewMessage(chid=a, ttl=60), 0)
        self.assertEqual(stored.outcome, StoreOutcome.STORED)

    async def test_many_channels(self) -> None:
        """500 channels with ``max_channels`` 0 (no limit) all register and deliver, in order."""
        uaid = new_id()
        chids = sorted(new_id() for _ in range(500))
        for chid in chids:
            await self.storage.register(uaid, chid, spelling(chid), 0)
        for version, chid in enumerate(chids, start=1):
            await self.storage.update(uaid, chid, version, None)
        pending = await self.storage.fetch_pending(uaid)
        self.assertEqual(
            pending,
            [PendingUpdate(channel_id=spelling(c), version=v) for v, c in enumerate(chids, 1)],
        )
        await self.storage.register(uaid, new_id(), "x", 501)
        await self.failure_of(self.storage.register(uaid, new_id(), "y", 501), TooManyChannels)

    # -- unregister -----------------------------------------------------------

    async def test_unregister_leaves_tombstone(self) -> None:
        """After unregister, updates are GONE and ``expired`` lists the channel."""
        uaid, chid, _ = await self.registered()
        await self.storage.update(uaid, chid, 3, "data")
        await self.storage.unregister(uaid, chid)
        self.assertEqual(
            await self.storage.update(uaid, chid, 4, None), UpdateResult(outcome=UpdateOutcome.GONE)
        )
        self.assertEqual(await self.storage.fetch_pending(uaid), [])
        self.assertFalse(await self.storage.ack(uaid, chid, 4))
        self.assertEqual(await self.storage.expired(uaid, [chid]), [chid])
        self.assertIsNotNone(await self.storage.user_mode(uaid))
        await self.storage.unregister(uaid, chid)  # twice: no-op
        self.assertEqual(await self.storage.expired(uaid, [chid]), [chid])

    async def test_unregister_unknown(self) -> None:
        """Unregistering an unknown channel or UAID does nothing."""
        uaid, chid, _ = await self.registered()
        stranger = new_id()
        await self.storage.unregister(uaid, stranger)
        await self.storage.unregister(stranger, chid)
        self.assertEqual(await self.storage.expired(uaid, [stranger]), [])
        self.assertIsNone(await self.storage.user_mode(stranger))
        self.assertEqual(
            (await self.storage.update(uaid, chid, 1, None)).outcome, UpdateOutcome.STORED
        )

    async def test_tombstone_expires(self) -> None:
        """A tombstone lives ``ttl_deleted``; then the channel is simply unknown."""
        storage = self.make_storage(ttl_deleted=self.expiry_ttl)
        uaid, chid, other = new_id(), new_id(), new_id()
        await storage.register(uaid, chid, chid, 1)
        await storage.unregister(uaid, chid)
        await storage.register(uaid, other, other, 0)
        self.assertEqual(await storage.expired(uaid, [chid]), [chid])
        await self.advance(self.expiry_ttl + self.expiry_slack)
        self.assertEqual(await storage.expired(uaid, [chid]), [])
        self.assertEqual((await storage.update(uaid, chid, 1, None)).outcome, UpdateOutcome.GONE)
        self.assertIsNotNone(await storage.user_mode(uaid))
        await storage.register(uaid, chid, "fresh", 2)
        self.assertEqual(
            await storage.update(uaid, chid, 1, None),
            UpdateResult(outcome=UpdateOutcome.STORED, channel_id="fresh"),
        )

    # -- update ---------------------------------------------------------------

    async def test_update_unknown_uaid(self) -> None:
        """An update for an unknown UAID is GONE and creates nothing."""
        uaid = new_id()
        result = await self.storage.update(uaid, new_id(), 1, "x")
        self.assertEqual(result, UpdateResult(outcome=UpdateOutcome.GONE))
        self.assertIsNone(await self.storage.user_mode(uaid))

    async def test_update_unknown_channel(self) -> None:
        """An update for an unknown channel of a known UAID is GONE and creates nothing."""
        uaid, _, _ = await self.registered()
        chid = new_id()
        result = await self.storage.update(uaid, chid, 1, "x")
        self.assertEqual(result, UpdateResult(outcome=UpdateOutcome.GONE))
        self.assertEqual(await self.storage.fetch_pending(uaid), [])
        self.assertEqual(await self.storage.expired(uaid, [chid]), [])

    async def test_update_stored(self) -> None:
        """An update is STORED with the client's spelling, and pending."""
        uaid, chid, channel_id = await self.registered()
        result = await self.storage.update(uaid, chid, 12, "hello")
        self.assertEqual(result, UpdateResult(outcome=UpdateOutcome.STORED, channel_id=channel_id))
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=12, data="hello")],
        )

    async def test_latest_version_wins(self) -> None:
        """Only the latest update is kept, even when its version is older."""
        uaid, chid, channel_id = await self.registered()
        await self.storage.update(uaid, chid, 5, "five")
        await self.storage.update(uaid, chid, 3, "three")
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=3, data="three")],
        )

    async def test_only_newer(self) -> None:
        """With ``only_newer``, a version not above the stored one is STALE and not written."""
        uaid, chid, channel_id = await self.registered()
        await self.storage.update(uaid, chid, 5, "five")
        stale = UpdateResult(outcome=UpdateOutcome.STALE, channel_id=channel_id)
        self.assertEqual(await self.storage.update(uaid, chid, 5, "x", only_newer=True), stale)
        self.assertEqual(await self.storage.update(uaid, chid, 4, "x", only_newer=True), stale)
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=5, data="five")],
        )
        self.assertEqual(
            (await self.storage.update(uaid, chid, 6, None, only_newer=True)).outcome,
            UpdateOutcome.STORED,
        )
        self.assertTrue(await self.storage.ack(uaid, chid, 6))
        # The acked version still counts.
        self.assertEqual(await self.storage.update(uaid, chid, 6, None, only_newer=True), stale)

    async def test_only_newer_first_update(self) -> None:
        """A fresh channel holds version 0: ``only_newer`` accepts any positive version."""
        uaid, chid, _ = await self.registered()
        self.assertEqual(
            (await self.storage.update(uaid, chid, 0, None, only_newer=True)).outcome,
            UpdateOutcome.STALE,
        )
        self.assertEqual(
            (await self.storage.update(uaid, chid, 1, None, only_newer=True)).outcome,
            UpdateOutcome.STORED,
        )

    async def test_data(self) -> None:
        """``data`` round-trips exactly (empty, non-ASCII, lone surrogates) and None stays None."""
        uaid = new_id()
        values = {new_id(): v for v in (None, "", "héllo ☃ \U0001f600", "\ud800x", "a" * 4096)}
        for chid in values:
            await self.storage.register(uaid, chid, chid, 0)
        for chid, data in values.items():
            await self.storage.update(uaid, chid, 1, data)
        pending = await self.storage.fetch_pending(uaid)
        self.assertEqual({p.channel_id: p.data for p in pending}, values)

    async def test_big_versions(self) -> None:
        """Versions past 64 bits round-trip and compare correctly."""
        uaid, chid, channel_id = await self.registered()
        big = 2**64 - 1
        await self.storage.update(uaid, chid, big, None)
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=big)],
        )
        self.assertEqual(
            (await self.storage.update(uaid, chid, big, None, only_newer=True)).outcome,
            UpdateOutcome.STALE,
        )
        self.assertFalse(await self.storage.ack(uaid, chid, big - 1))
        self.assertTrue(await self.storage.ack(uaid, chid, big))

    # -- ack ------------------------------------------------------------------

    async def test_ack_older_keeps_newer(self) -> None:
        """An ack of an older version keeps the newer update pending."""
        uaid, chid, channel_id = await self.registered()
        await self.storage.update(uaid, chid, 5, "five")
        self.assertFalse(await self.storage.ack(uaid, chid, 4))
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=5, data="five")],
        )

    async def test_ack_equal_clears(self) -> None:
        """An ack of the stored version clears it; a second ack finds nothing."""
        uaid, chid, _ = await self.registered()
        await self.storage.update(uaid, chid, 5, "five")
        self.assertTrue(await self.storage.ack(uaid, chid, 5))
        self.assertEqual(await self.storage.fetch_pending(uaid), [])
        self.assertFalse(await self.storage.ack(uaid, chid, 5))

    async def test_ack_newer_clears(self) -> None:
        """An ack of a newer version than stored clears it too, and drops the data."""
        uaid, chid, channel_id = await self.registered()
        await self.storage.update(uaid, chid, 5, "five")
        self.assertTrue(await self.storage.ack(uaid, chid, 50))
        self.assertEqual(await self.storage.fetch_pending(uaid), [])
        await self.storage.update(uaid, chid, 6, None)
        self.assertEqual(
            await self.storage.fetch_pending(uaid),
            [PendingUpdate(channel_id=channel_id, version=6)],
        )

    async def test_ack_nothing_pending(self) -> None:
        """An ack of a registered channel, unknown channel or unknown UAID is False."""
        uaid, chid, _ = await self.registered()
        self.assertFalse(await self.storage.ack(uaid, chid, 1))
        self.assertFalse(await self.storage.ack(uaid, new_id(), 1))
        self.assertFalse(await self.storage.ack(new_id(), chid, 1))

    # -- fetch_pending, expired -----------------------------------------------

    async def test_fetch_pending_content(self) -> None:
        """Only live channels are pending, sorted by chid, with their spelling, version, data."""
        uaid = new_id()
        live = sorted(new_id() for _ in range(3))
        quiet, acked, gone = new_id(), new_id(), new_id()
        for chid in [*live, quiet, acked, gone]:
            await self.storage.register(uaid, chid, spelling(chid), 0)
        for version, chid in enumerate(reversed(live), start=10):
            await self.storage.update(uaid, chid, version, f"d{version}")
        await self.storage.update(uaid, acked, 1, "a")
        await self.storage.ack(uaid, acked, 1)
        await self.storage.update(uaid, gone, 1, "g")
        await self.storage.unregister(uaid, gone)
        expected = [
            PendingUpdate(channel_id=spelling(chid), version=v, data=f"d{v}")
            for v, chid in zip([12, 11, 10], live, strict=True)
        ]
        self.assertEqual(await self.storage.fetch_pending(uaid), expected)

    async def test_expired_filters_and_keeps_order(self) -> None:
        """``expired`` answers the given chids that are tombstones, in the given order."""
        uaid = new_id()
        dead1, dead2, alive = new_id(), new_id(), new_id()
        for chid in (dead1, dead2, alive):
            await self.storage.register(uaid, chid, chid, 0)
        await self.storage.unregister(uaid, dead1)
        await self.storage.unregister(uaid, dead2)
        asked = [dead2, alive, new_id(), dead1]
        self.assertEqual(await self.storage.expired(uaid, asked), [dead2, dead1])
        self.assertEqual(await self.storage.expired(uaid, []), [])

    # -- check --------------------------------------------------------------

    async def test_check(self) -> None:
        """A healthy backend passes ``check``."""
        self.assertIsNone(await self.storage.check())


# -- the contract, synchronously ----------------------------------------------


class ClockedBackend(BackendFixture):
    """Backends whose time is a ``task.Clock`` (``advance`` moves it)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        super().setUp()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


class _ClockedContract(ClockedBackend, StorageContract):
    """The storage contract on a ``task.Clock``, with a test that needs the exact clock."""

    async def test_tombstone_expiry_boundary(self) -> None:
        """A tombstone is alive until exactly ``ttl_deleted`` after the unregister."""
        storage = self.make_storage(ttl_deleted=30)
        uaid, chid = new_id(), new_id()
        await storage.register(uaid, chid, chid, 0)
        await storage.unregister(uaid, chid)
        self.clock.advance(29.5)
        self.assertEqual(await storage.expired(uaid, [chid]), [chid])
        self.clock.advance(0.5)
        self.assertEqual(await storage.expired(uaid, [chid]), [])


@synchronous
class MemoryContractTests(_ClockedContract, SynchronousTestCase):
    """``MemoryStorage`` passes the contract (it is the reference)."""

    def make_storage(self, *, ttl_deleted: float) -> Storage:
        return MemoryStorage(self.clock, tombstone_ttl=ttl_deleted)


@synchronous
class SqliteContractTests(_ClockedContract, SynchronousTestCase):
    """``SqliteStorage`` with an inline runner passes the contract."""

    def make_storage(self, *, ttl_deleted: float) -> Storage:
        path = os.path.join(self.mktemp(), "state", "db.sqlite3")
        storage = SqliteStorage(path, inline_run, self.clock, ttl_deleted=ttl_deleted)
        self.addCleanup(storage.close)
        return storage


@synchronous
class FakeMemcachedContractTests(_ClockedContract, SynchronousTestCase):
    """``MemcachedStorage`` on ``FakeMemcache`` passes the contract."""

    def make_storage(self, *, ttl_deleted: float) -> Storage:
        self.client = FakeMemcache(self.clock)
        return MemcachedStorage(
            self.client,
            inline_submit,
            self.clock,
            ttl_live=86400 * 60,
            ttl_registered=86400 * 60,
            ttl_deleted=ttl_deleted,
            key_prefix="pt:",
        )


# -- one model: random operation sequences agree on every backend --------------

_UAIDS = 2
_CHIDS = 3
_TTL = 100.0

_uaid = st.sampled_from([0, 0, 0, 1])
_chid = st.integers(0, _CHIDS - 1)
_version = st.sampled_from([0, 1, 2, 3, 5, 2**64])
_data = st.sampled_from([None, "", "d", "\u00e9\ud800"])
#: Operation kinds, repeated to weight them (common ones first).
_KINDS = [
    *["update"] * 6,
    *["ack"] * 4,
    *["fetch_pending"] * 3,
    *["register"] * 3,
    *["unregister"] * 2,
    "expired",
    "user_mode",
    "advance",
    # WebPush (uaid 1 starts as a WebPush user).
    *["store_message"] * 6,
    *["delete_message"] * 3,
    *["fetch_messages"] * 3,
    "register_webpush",
]
_ttl = st.sampled_from([0, 5, 50, 150])
_topic = st.sampled_from([None, None, "a", "b"])


@st.composite
def _op(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(_KINDS))
    if kind == "advance":
        return (kind, draw(st.sampled_from([1.0, 40.0, 99.0, 100.0])))
    u = draw(_uaid)
    if kind == "register":
        return (kind, u, draw(_chid), draw(st.integers(0, 1)), draw(st.integers(0, 3)))
    if kind == "update":
        return (kind, u, draw(_chid), draw(_version), draw(_data), draw(st.booleans()))
    if kind == "ack":
        return (kind, u, draw(_chid), draw(_version))
    if kind == "unregister":
        return (kind, u, draw(_chid))
    if kind == "expired":
        return (kind, u, draw(st.lists(_chid, max_size=4)))
    if kind in ("store_message", "delete_message", "fetch_messages", "register_webpush"):
        u = draw(st.sampled_from([1, 1, 1, 0]))
    if kind == "register_webpush":
        return (kind, u, draw(_chid), draw(st.integers(0, 3)))
    if kind == "store_message":
        topic, data = draw(_topic), draw(st.sampled_from([None, "x"]))
        return (kind, u, draw(_chid), draw(_ttl), topic, data, draw(st.sampled_from([0, 2, 3])))
    if kind == "delete_message":
        # The n-th last sequence number stored (or a made-up one past them).
        return (kind, u, draw(st.integers(0, 4)))
    return (kind, u)


_OPS = _op()


class ModelTests(SynchronousTestCase):
    """Every backend answers every operation sequence exactly as ``MemoryStorage`` does."""

    def _backends(self, clock: Clock) -> dict[str, Storage]:
        if not hasattr(self, "_db"):
            self._db = os.path.join(self.mktemp(), "model.sqlite3")
        sqlite_storage = SqliteStorage(self._db, inline_run, clock, ttl_deleted=_TTL)
        self.addCleanup(sqlite_storage.close)
        return {
            "memory": MemoryStorage(clock, tombstone_ttl=_TTL),
            "sqlite": sqlite_storage,
            "memcached": MemcachedStorage(
                FakeMemcache(clock),
                inline_submit,
                clock,
                ttl_live=3e6,
                ttl_registered=3e6,
                ttl_deleted=_TTL,
            ),
        }

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_OPS, min_size=10, max_size=60))
    def test_backends_agree(self, ops: list[tuple[Any, ...]]) -> None:
        clock = Clock()
        clock.advance(EPOCH)
        backends = self._backends(clock)
        uaids = [new_id() for _ in range(_UAIDS)]
        chids = sorted(new_id() for _ in range(_CHIDS))
        # Start from users with channels, where the interesting states are.
        prologue = [("register", 0, c, 0, 0) for c in range(_CHIDS)]
        prologue += [("register_webpush", 1, c, 0) for c in range(_CHIDS - 1)]
        seqs: list[int] = []
        for step, op in enumerate([*prologue, *ops]):
            if op[0] == "advance":
                clock.advance(op[1])
                continue
            if op[0] == "delete_message":
                back = op[2] + 1
                op = (*op[:2], seqs[-back] if back <= len(seqs) else 7)
            answers = {
                name: self._apply(storage, op, uaids, chids) for name, storage in backends.items()
            }
            reference = answers.pop("memory")
            if isinstance(reference, StoreResult) and reference.message is not None:
                seqs.append(reference.message.seq)
            for name, answer in answers.items():
                self.assertEqual(answer, reference, f"{name} differs at step {step}: {op!r}")

    @staticmethod
    def _apply(storage: Storage, op: tuple[Any, ...], uaids: list[str], chids: list[str]) -> object:
        name, u = op[0], uaids[op[1]]
        if name == "register":
            chid = chids[op[2]]
            d: Deferred[Any] = storage.register(u, chid, f"{chid}-{op[3]}", op[4])
        elif name == "unregister":
            d = storage.unregister(u, chids[op[2]])
        elif name == "update":
            d = storage.update(u, chids[op[2]], op[3], op[4], only_newer=op[5])
        elif name == "ack":
            d = storage.ack(u, chids[op[2]], op[3])
        elif name == "fetch_pending":
            d = storage.fetch_pending(u)
        elif name == "expired":
            d = storage.expired(u, [chids[i] for i in op[2]])
        elif name == "register_webpush":
            chid = chids[op[2]]
            d = storage.register(u, chid, f"{chid}-wp", op[3], Mode.WEBPUSH)
        elif name == "store_message":
            _, _, c, ttl, topic, data, max_pending = op
            headers = {} if data is None else {"encoding": "aes128gcm"}
            new = NewMessage(chid=chids[c], ttl=ttl, topic=topic, data=data, headers=headers)
            d = storage.store_message(u, new, max_pending)
        elif name == "delete_message":
            d = storage.delete_message(u, op[2])
        elif name == "fetch_messages":
            d = storage.fetch_messages(u)
        else:
            d = storage.user_mode(u)
        results: list[object] = []
        d.addBoth(results.append)
        (result,) = results
        if isinstance(result, Failure):
            return ("error", type(result.value).__name__)
        return result


# -- SQLite specifics -----------------------------------------------------------


class SqliteTests(SynchronousTestCase):
    """Schema, durability and error handling of ``SqliteStorage``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.path = os.path.join(self.mktemp(), "pushtwisted.sqlite3")

    def open(self, **kwargs: Any) -> SqliteStorage:
        storage = SqliteStorage(self.path, inline_run, self.clock, ttl_deleted=100, **kwargs)
        self.addCleanup(storage.close)
        return storage

    def test_survives_restart(self) -> None:
        """Users, channels, pending updates and tombstones survive closing and reopening."""
        storage = self.open()
        uaid, live, dead = new_id(), new_id(), new_id()
        self.successResultOf(storage.register(uaid, live, "Live", 0))
        self.successResultOf(storage.register(uaid, dead, "Dead", 0))
        self.successResultOf(storage.update(uaid, live, 42, "kept"))
        self.successResultOf(storage.unregister(uaid, dead))
        self.successResultOf(storage.close())

        again = self.open()
        self.successResultOf(again.open())
        self.assertIsNotNone(self.successResultOf(again.user_mode(uaid)))
        self.assertEqual(
            self.successResultOf(again.fetch_pending(uaid)),
            [PendingUpdate(channel_id="Live", version=42, data="kept")],
        )
        self.assertEqual(self.successResultOf(again.expired(uaid, [dead])), [dead])

    def test_schema_and_wal(self) -> None:
        """The file is in WAL mode and carries the schema version."""
        storage = self.open()
        self.successResultOf(storage.open())
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        self.assertEqual(tables, {"users", "channels", "wp_channels", "messages"})

    def test_files_are_private(self) -> None:
        """The directory is created 0700, the database and its -wal and -shm 0600."""
        storage = self.open()
        self.successResultOf(storage.register(new_id(), new_id(), "x", 0))
        directory = os.path.dirname(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        names = sorted(os.listdir(directory))
        self.assertEqual(names, [os.path.basename(self.path) + s for s in ("", "-shm", "-wal")])
        for name in names:
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode), 0o600)

    def test_newer_schema_refused(self) -> None:
        """A database written by a newer schema is left alone: ``StorageUnavailable``."""
        os.makedirs(os.path.dirname(self.path))
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        storage = self.open()
        failure = self.failureResultOf(storage.open(), StorageUnavailable)
        self.assertIn("99", str(failure.value))

    def test_unusable_path(self) -> None:
        """A path that cannot hold a database fails with ``StorageUnavailable``, never raises."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("not a directory")
        storage = SqliteStorage(
            os.path.join(blocker, "db.sqlite3"), inline_run, self.clock, ttl_deleted=1
        )
        self.failureResultOf(storage.user_mode(new_id()), StorageUnavailable)
        self.failureResultOf(storage.check(), StorageUnavailable)

    def test_corrupt_file(self) -> None:
        """A file that is not a database fails with ``StorageUnavailable``."""
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"this is not sqlite" * 100)
        self.failureResultOf(self.open().user_mode(new_id()), StorageUnavailable)

    def test_closed(self) -> None:
        """After ``close`` every call fails with ``StorageUnavailable``."""
        storage = self.open()
        self.successResultOf(storage.check())
        self.successResultOf(storage.close())
        self.failureResultOf(storage.user_mode(new_id()), StorageUnavailable)

    def test_purge_expired(self) -> None:
        """``purge_expired`` deletes only tombstones past their TTL."""
        storage = self.open()
        uaid, old, young, alive = new_id(), new_id(), new_id(), new_id()
        for chid in (old, young, alive):
            self.successResultOf(storage.register(uaid, chid, chid, 0))
        self.successResultOf(storage.unregister(uaid, old))
        self.clock.advance(60)
        self.successResultOf(storage.unregister(uaid, young))
        self.clock.advance(40)
        self.assertEqual(self.successResultOf(storage.purge_expired()), 1)
        self.assertEqual(self.successResultOf(storage.expired(uaid, [old, young])), [young])

    def test_memory_path_refused(self) -> None:
        """``:memory:`` would give each thread its own database, so it is refused."""
        self.assertRaises(
            ValueError, SqliteStorage, ":memory:", inline_run, self.clock, ttl_deleted=1
        )


# -- memcached specifics (on the fake) ------------------------------------------


class FakeMemcachedTests(SynchronousTestCase):
    """Layout, expiry, errors and forced races of ``MemcachedStorage``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.client = FakeMemcache(self.clock)
        self.storage = self.make()

    def make(self, **ttls: float) -> MemcachedStorage:
        kwargs: dict[str, float] = {
            "ttl_live": 86400.0,
            "ttl_registered": 86400.0,
            "ttl_deleted": 600.0,
        }
        kwargs.update(ttls)
        return MemcachedStorage(self.client, inline_submit, self.clock, key_prefix="p-", **kwargs)

    def alone(self, steps: Steps[Any]) -> object:
        """Run one operation to its end on the fake (as a racing writer would)."""
        ((ok, value),) = MemcacheSteps(self.client)([steps])
        self.assertTrue(ok, value)
        return value

    def test_layout(self) -> None:
        """The list key holds sorted chids; each record is JSON with its state."""
        uaid, b, a = new_id(), "b" * 32, "a" * 32
        self.successResultOf(self.storage.register(uaid, b, "B", 0))
        self.successResultOf(self.storage.register(uaid, a, "A", 0))
        self.successResultOf(self.storage.update(uaid, b, 3, "x"))
        self.assertEqual(self.client.get(f"p-{uaid}"), [a, b])
        record = self.client.get(f"p-{uaid}.{b}")
        self.assertEqual(
            {k: record[k] for k in ("state", "channel_id", "version", "data")},
            {"state": "live", "channel_id": "B", "version": 3, "data": "x"},
        )
        self.assertEqual(self.client.get(f"p-{uaid}.{a}")["state"], "registered")

    def test_ttl_by_state(self) -> None:
        """Records expire by state: registered, live, and the tombstone's TTL."""
        storage = self.make(ttl_live=200.0, ttl_registered=300.0, ttl_deleted=50.0)
        uaid, chid = new_id(), new_id()
        key = f"p-{uaid}.{chid}"
        self.successResultOf(storage.register(uaid, chid, chid, 0))
        self.assertEqual(self.client.expiries[key], 300)
        self.assertEqual(self.client.expiries[f"p-{uaid}"], 300)
        self.successResultOf(storage.update(uaid, chid, 1, None))
        self.assertEqual(self.client.expiries[key], 200)
        self.successResultOf(storage.unregister(uaid, chid))
        self.assertEqual(self.client.expiries[key], 50)

    def test_registered_record_expires(self) -> None:
        """A registered channel not refreshed within its TTL is gone (GONE, not stored)."""
        storage = self.make(ttl_registered=300.0, ttl_live=300.0)
        uaid, chid = new_id(), new_id()
        self.successResultOf(storage.register(uaid, chid, chid, 0))
        self.clock.advance(301)
        self.assertIsNone(self.successResultOf(storage.user_mode(uaid)))
        result = self.successResultOf(storage.update(uaid, chid, 1, None))
        self.assertEqual(result.outcome, UpdateOutcome.GONE)

    def test_long_ttl_is_absolute(self) -> None:
        """TTLs over 30 days are sent as absolute times, so records do not vanish at once."""
        storage = self.make(ttl_live=40 * 86400.0, ttl_registered=60 * 86400.0)
        uaid, chid = new_id(), new_id()
        self.successResultOf(storage.register(uaid, chid, chid, 0))
        self.assertEqual(self.client.expiries[f"p-{uaid}.{chid}"], int(EPOCH) + 60 * 86400)
        self.successResultOf(storage.update(uaid, chid, 1, None))
        self.assertEqual(self.client.expiries[f"p-{uaid}.{chid}"], int(EPOCH) + 40 * 86400)
        self.clock.advance(39 * 86400)
        self.assertIsNotNone(self.client.get(f"p-{uaid}.{chid}"))
        self.clock.advance(2 * 86400)
        self.assertIsNone(self.client.get(f"p-{uaid}.{chid}"))

    def test_hello_refreshes(self) -> None:
        """``user_mode`` and ``fetch_pending`` keep an idle device's registrations alive."""
        storage = self.make(ttl_registered=100.0, ttl_live=100.0)
        uaid, chid = new_id(), new_id()
        self.successResultOf(storage.register(uaid, chid, chid, 0))
        for _ in range(5):
            self.clock.advance(60)
            self.assertIsNotNone(self.successResultOf(storage.user_mode(uaid)))
            self.successResultOf(storage.fetch_pending(uaid))
        self.assertEqual(
            self.successResultOf(storage.update(uaid, chid, 1, None)).outcome, UpdateOutcome.STORED
        )

    def test_errors_are_not_misses(self) -> None:
        """When memcached fails, every call errbacks ``StorageUnavailable``, never a miss."""
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, chid, chid, 0))
        self.client.broken = True
        for d in (
            self.storage.user_mode(uaid),
            self.storage.register(uaid, new_id(), "x", 0),
            self.storage.unregister(uaid, chid),
            self.storage.update(uaid, chid, 1, None),
            self.storage.fetch_pending(uaid),
            self.storage.ack(uaid, chid, 1),
            self.storage.expired(uaid, [chid]),
            self.storage.check(),
        ):
            self.failureResultOf(d, StorageUnavailable)
        self.client.broken = False
        self.assertIsNotNone(self.successResultOf(self.storage.user_mode(uaid)))

    def test_corrupt_values(self) -> None:
        """A value of the wrong shape is an error, not a miss."""
        uaid, chid = new_id(), new_id()
        self.client.set(f"p-{uaid}", {"not": "a list"})
        self.client.set(f"p-{uaid}.{chid}", ["not", "a record"])
        self.failureResultOf(self.storage.fetch_pending(uaid), StorageUnavailable)
        self.failureResultOf(self.storage.update(uaid, chid, 1, None), StorageUnavailable)

    def test_ack_races_newer_update(self) -> None:
        """An update landing between an ack's read and write survives the ack."""
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, chid, "C", 0))
        self.successResultOf(self.storage.update(uaid, chid, 5, "five"))
        self.client.interpose(
            f"p-{uaid}.{chid}",
            lambda: self.alone(self.storage.update_steps(uaid, chid, 6, "six", False, 0)),
        )
        self.assertFalse(self.successResultOf(self.storage.ack(uaid, chid, 5)))
        self.assertEqual(
            self.successResultOf(self.storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id="C", version=6, data="six")],
        )

    def test_update_races_ack(self) -> None:
        """An ack landing between an update's read and write does not swallow the update."""
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, chid, "C", 0))
        self.successResultOf(self.storage.update(uaid, chid, 5, "five"))
        self.client.interpose(
            f"p-{uaid}.{chid}", lambda: self.alone(self.storage.ack_steps(uaid, chid, 5, 0))
        )
        self.successResultOf(self.storage.update(uaid, chid, 6, "six"))
        self.assertEqual(
            self.successResultOf(self.storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id="C", version=6, data="six")],
        )

    def test_update_races_unregister(self) -> None:
        """An unregister landing between an update's read and write wins: GONE, no resurrection."""
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, chid, "C", 0))
        self.client.interpose(
            f"p-{uaid}.{chid}",
            lambda: self.alone(self.storage.unregister_steps(uaid, chid, EPOCH)),
        )
        result = self.successResultOf(self.storage.update(uaid, chid, 1, None))
        self.assertEqual(result.outcome, UpdateOutcome.GONE)
        self.assertEqual(self.successResultOf(self.storage.expired(uaid, [chid])), [chid])

    def test_registers_race_on_list(self) -> None:
        """Two registers writing the channel list at once both end up listed."""
        uaid, a, b = new_id(), new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, new_id(), "first", 0))
        self.client.interpose(
            f"p-{uaid}", lambda: self.alone(self.storage.register_steps(uaid, b, "B", 0, EPOCH))
        )
        self.successResultOf(self.storage.register(uaid, a, "A", 0))
        self.assertLessEqual({a, b}, set(self.client.get(f"p-{uaid}")))

    def test_register_races_prune(self) -> None:
        """A prune between a register's list write and record write cannot unlist the channel."""
        uaid, chid = new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, new_id(), "first", 0))
        self.client.interpose(
            f"p-{uaid}.{chid}", lambda: self.alone(self.storage._prune(uaid, [chid], EPOCH))
        )
        self.successResultOf(self.storage.register(uaid, chid, "C", 0))
        self.assertIn(chid, self.client.get(f"p-{uaid}"))
        self.successResultOf(self.storage.update(uaid, chid, 1, None))
        self.assertEqual(
            self.successResultOf(self.storage.fetch_pending(uaid)),
            [PendingUpdate(channel_id="C", version=1)],
        )

    def test_first_register_two_rounds(self) -> None:
        """A new UAID's first register: one read round, then both adds with the list read."""
        uaid, chid = new_id(), new_id()
        rounds, start = self.client.rounds, len(self.client.commands)
        self.successResultOf(self.storage.register(uaid, chid, "C", 0))
        self.assertEqual(self.client.rounds - rounds, 2)
        self.assertEqual(
            [repr(c) for c in self.client.commands[start:]],
            [
                f"Get('p-{uaid}.{chid}')",
                f"Get('p-{uaid}')",
                f"Store(add, 'p-{uaid}')",
                f"Store(add, 'p-{uaid}.{chid}')",
                f"Get('p-{uaid}')",
            ],
        )
        self.assertEqual(self.client.get(f"p-{uaid}"), [chid])
        self.assertEqual(self.client.get(f"p-{uaid}.{chid}")["state"], "registered")

    def test_fresh_register_one_round(self) -> None:
        """A fresh first register skips the read: both adds with the list read, in one round."""
        uaid, chid = new_id(), new_id()
        rounds, start = self.client.rounds, len(self.client.commands)
        self.successResultOf(self.storage.register(uaid, chid, "C", 0, fresh=True))
        self.assertEqual(self.client.rounds - rounds, 1)
        self.assertEqual(
            [repr(c) for c in self.client.commands[start:]],
            [
                f"Store(add, 'p-{uaid}')",
                f"Store(add, 'p-{uaid}.{chid}')",
                f"Get('p-{uaid}')",
            ],
        )
        self.assertEqual(self.client.get(f"p-{uaid}"), [chid])
        self.assertEqual(self.client.get(f"p-{uaid}.{chid}")["state"], "registered")

    def test_fresh_webpush_register_one_round(self) -> None:
        """A fresh WebPush first register is one add of the user record."""
        uaid, chid = new_id(), new_id()
        rounds, start = self.client.rounds, len(self.client.commands)
        self.successResultOf(self.storage.register(uaid, chid, "C", 0, Mode.WEBPUSH, fresh=True))
        self.assertEqual(self.client.rounds - rounds, 1)
        self.assertEqual(
            [repr(c) for c in self.client.commands[start:]], [f"Store(add, 'p-{uaid}')"]
        )
        self.assertEqual(self.successResultOf(self.storage.user_mode(uaid)), Mode.WEBPUSH)

    def test_fresh_register_record_there(self) -> None:
        """When the record is there after all, the fresh register reads and keeps it, listed."""
        uaid, chid = new_id(), new_id()
        other = ChannelRecord("registered", "other", 0, None, EPOCH).encode()
        self.client.add(f"p-{uaid}.{chid}", other)
        self.successResultOf(self.storage.register(uaid, chid, "C", 0, fresh=True))
        self.assertEqual(self.client.get(f"p-{uaid}"), [chid])
        self.assertEqual(self.client.get(f"p-{uaid}.{chid}")["channel_id"], "other")

    def test_first_register_races_list(self) -> None:
        """A list made by another register between the read and the adds: both chids listed."""
        uaid, a, b = new_id(), new_id(), new_id()
        self.client.interpose(
            f"p-{uaid}", lambda: self.alone(self.storage.register_steps(uaid, b, "B", 0, EPOCH))
        )
        self.successResultOf(self.storage.register(uaid, a, "A", 0))
        self.assertEqual(self.client.get(f"p-{uaid}"), sorted([a, b]))
        self.assertEqual(self.client.get(f"p-{uaid}.{a}")["channel_id"], "A")

    def test_first_register_races_list_over_limit(self) -> None:
        """When the list made meanwhile is full, the record added is taken back."""
        uaid, a, b = new_id(), new_id(), new_id()
        self.client.interpose(
            f"p-{uaid}", lambda: self.alone(self.storage.register_steps(uaid, b, "B", 1, EPOCH))
        )
        self.failureResultOf(self.storage.register(uaid, a, "A", 1), TooManyChannels)
        self.assertEqual(self.client.get(f"p-{uaid}"), [b])
        self.assertIsNone(self.client.get(f"p-{uaid}.{a}"))

    def test_first_register_races_record(self) -> None:
        """A record made by a concurrent register of the same chid is kept, and listed."""
        uaid, chid = new_id(), new_id()
        self.client.interpose(
            f"p-{uaid}.{chid}",
            lambda: self.client.add(
                f"p-{uaid}.{chid}", ChannelRecord("registered", "other", 0, None, EPOCH).encode()
            ),
        )
        self.successResultOf(self.storage.register(uaid, chid, "C", 0))
        self.assertEqual(self.client.get(f"p-{uaid}"), [chid])
        self.assertEqual(self.client.get(f"p-{uaid}.{chid}")["channel_id"], "other")

    def test_prune_vanished(self) -> None:
        """Chids whose records vanished leave the list at the next ``fetch_pending``."""
        uaid, gone, kept = new_id(), new_id(), new_id()
        self.successResultOf(self.storage.register(uaid, gone, "G", 0))
        self.successResultOf(self.storage.register(uaid, kept, "K", 0))
        self.client.delete(f"p-{uaid}.{gone}")
        self.successResultOf(self.storage.fetch_pending(uaid))
        self.assertEqual(self.client.get(f"p-{uaid}"), [kept])

    def test_key_prefix_validated(self) -> None:
        """Prefixes that would break memcached keys are refused."""
        for prefix in ("a b", "x" * 186, "tab\t", "é"):
            self.assertRaises(
                ValueError,
                MemcachedStorage,
                self.client,
                inline_submit,
                self.clock,
                ttl_live=1,
                ttl_registered=1,
                ttl_deleted=1,
                key_prefix=prefix,
            )
