"""The ``MessageContract``: WebPush messages and user modes, the same on every backend.

``MessageContract`` is a mixin of ``async def`` tests written against the
WebPush half of the ``Storage`` protocol (``user_mode``, ``register`` with a
mode, ``store_message``, ``fetch_messages``, ``delete_message``, unregister),
with ``MemoryStorage`` as the reference.  Like ``StorageContract`` it needs
``make_storage(ttl_deleted=...)`` and ``advance(seconds)`` from its
subclasses; here it runs synchronously on clocked backends: memory, SQLite
with an inline runner, and memcached on ``FakeMemcache``
(``tests/integration/test_storage_messages_backends.py`` runs it on a real
memcached and on SQLite with the real thread pool).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import TooManyChannels
from pushtwisted.storage.interface import (
    Mode,
    NewMessage,
    StoreOutcome,
    UpdateOutcome,
)
from tests import test_storage_contract as contract
from tests.test_storage_contract import new_id, spelling, synchronous

__all__ = ["MessageContract"]


def message(chid: str, **kwargs: object) -> NewMessage:
    """A ``NewMessage`` for ``chid`` with a TTL of an hour unless given."""
    fields: dict[str, object] = {
        "ttl": 3600,
        "data": "aGVsbG8",
        "headers": {"encoding": "aes128gcm"},
    }
    fields.update(kwargs)
    return NewMessage(chid=chid, **fields)


class MessageContract(contract.BackendFixture):
    """Tests every ``Storage`` must pass for WebPush (mix into a trial test case)."""

    async def webpush_channel(self, uaid: str | None = None) -> tuple[str, str]:
        """Register a fresh WebPush channel; return (uaid, chid)."""
        uaid = uaid or new_id()
        chid = new_id()
        await self.storage.register(uaid, chid, spelling(chid), 0, Mode.WEBPUSH)
        return uaid, chid

    # -- modes ------------------------------------------------------------------

    async def test_mode_of_unknown_user(self) -> None:
        """An unknown UAID has no mode."""
        self.assertIsNone(await self.storage.user_mode(new_id()))

    async def test_mode_set_by_first_register(self) -> None:
        """The first register fixes the mode; later registers keep it."""
        uaid, _ = await self.webpush_channel()
        self.assertIs(await self.storage.user_mode(uaid), Mode.WEBPUSH)
        await self.storage.register(uaid, new_id(), "x", 0, Mode.SIMPLEPUSH)
        self.assertIs(await self.storage.user_mode(uaid), Mode.WEBPUSH)
        simple = new_id()
        await self.storage.register(simple, new_id(), "y", 0)
        self.assertIs(await self.storage.user_mode(simple), Mode.SIMPLEPUSH)

    async def test_modes_do_not_mix(self) -> None:
        """SimplePush updates never land on a WebPush user, nor messages on a SimplePush one."""
        wp_uaid, wp_chid = await self.webpush_channel()
        result = await self.storage.update(wp_uaid, wp_chid, 5, None)
        self.assertIs(result.outcome, UpdateOutcome.GONE)
        sp_uaid, sp_chid = new_id(), new_id()
        await self.storage.register(sp_uaid, sp_chid, "c", 0)
        stored = await self.storage.store_message(sp_uaid, message(sp_chid), 0)
        self.assertIs(stored.outcome, StoreOutcome.GONE)
        self.assertEqual(await self.storage.fetch_messages(sp_uaid), [])

    # -- store ------------------------------------------------------------------

    async def test_store_and_fetch(self) -> None:
        """A stored message comes back with its fields, sequence number and spelling."""
        uaid, chid = await self.webpush_channel()
        result = await self.storage.store_message(
            uaid,
            message(chid, data="AAEC", headers={"encoding": "aesgcm", "crypto_key": "dh=x"}),
            0,
        )
        self.assertIs(result.outcome, StoreOutcome.STORED)
        self.assertEqual(result.channel_id, spelling(chid))
        stored = result.message
        assert stored is not None
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual(fetched, [stored])
        self.assertEqual(stored.chid, chid)
        self.assertEqual(stored.channel_id, spelling(chid))
        self.assertEqual(stored.data, "AAEC")
        self.assertEqual(dict(stored.headers), {"encoding": "aesgcm", "crypto_key": "dh=x"})
        self.assertEqual(stored.ttl, 3600)
        self.assertIsNone(stored.topic)

    async def test_empty_message(self) -> None:
        """A message without body keeps no data and no headers."""
        uaid, chid = await self.webpush_channel()
        await self.storage.store_message(uaid, message(chid, data=None, headers={}), 0)
        [stored] = await self.storage.fetch_messages(uaid)
        self.assertIsNone(stored.data)
        self.assertEqual(dict(stored.headers), {})

    async def test_many_messages_per_channel_in_arrival_order(self) -> None:
        """Every message is kept (no collapsing), in arrival order across channels."""
        uaid, first = await self.webpush_channel()
        _, second = await self.webpush_channel(uaid)
        for chid, data in ((first, "a"), (second, "b"), (first, "c")):
            await self.storage.store_message(uaid, message(chid, data=data), 0)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["a", "b", "c"])
        seqs = [m.seq for m in fetched]
        self.assertEqual(seqs, sorted(set(seqs)))

    async def test_unknown_user_or_channel_is_gone(self) -> None:
        """No user, no channel, or a tombstone: ``GONE`` and nothing stored."""
        uaid, chid = await self.webpush_channel()
        for target_uaid, target_chid in ((new_id(), chid), (uaid, new_id())):
            result = await self.storage.store_message(target_uaid, message(target_chid), 0)
            self.assertIs(result.outcome, StoreOutcome.GONE)
        await self.storage.unregister(uaid, chid)
        result = await self.storage.store_message(uaid, message(chid), 0)
        self.assertIs(result.outcome, StoreOutcome.GONE)
        self.assertEqual(await self.storage.fetch_messages(uaid), [])

    async def test_ttl_zero_is_not_stored(self) -> None:
        """TTL 0 checks the channel and answers its spelling, but stores nothing."""
        uaid, chid = await self.webpush_channel()
        result = await self.storage.store_message(uaid, message(chid, ttl=0), 0)
        self.assertIs(result.outcome, StoreOutcome.NOT_STORED)
        self.assertEqual(result.channel_id, spelling(chid))
        self.assertEqual(await self.storage.fetch_messages(uaid), [])
        gone = await self.storage.store_message(uaid, message(new_id(), ttl=0), 0)
        self.assertIs(gone.outcome, StoreOutcome.GONE)

    async def test_sequence_numbers_never_reused(self) -> None:
        """Deleting the newest message does not free its sequence number."""
        uaid, chid = await self.webpush_channel()
        first = await self.storage.store_message(uaid, message(chid), 0)
        assert first.message is not None
        await self.storage.delete_message(uaid, first.message.seq)
        second = await self.storage.store_message(uaid, message(chid), 0)
        assert second.message is not None
        self.assertGreater(second.message.seq, first.message.seq)

    # -- topics -----------------------------------------------------------------

    async def test_topic_replaces(self) -> None:
        """A message with the topic of a stored one on the same channel replaces it."""
        uaid, chid = await self.webpush_channel()
        old = await self.storage.store_message(uaid, message(chid, topic="t", data="old"), 0)
        await self.storage.store_message(uaid, message(chid, data="plain"), 0)
        new = await self.storage.store_message(uaid, message(chid, topic="t", data="new"), 0)
        assert old.message is not None and new.message is not None
        self.assertGreater(new.message.seq, old.message.seq)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["new", "plain"])
        # The replaced message's id no longer deletes anything.
        self.assertFalse(await self.storage.delete_message(uaid, old.message.seq))
        self.assertEqual(len(await self.storage.fetch_messages(uaid)), 2)

    async def test_topics_are_per_channel(self) -> None:
        """The same topic on two channels is two slots."""
        uaid, first = await self.webpush_channel()
        _, second = await self.webpush_channel(uaid)
        await self.storage.store_message(uaid, message(first, topic="t", data="a"), 0)
        await self.storage.store_message(uaid, message(second, topic="t", data="b"), 0)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual(sorted(m.data or "" for m in fetched), ["a", "b"])

    async def test_topic_messages_first(self) -> None:
        """Topic messages come first, then the others; each group by arrival."""
        uaid, chid = await self.webpush_channel()
        for data, topic in (("p1", None), ("t1", "a"), ("p2", None), ("t2", "b"), ("t1b", "a")):
            await self.storage.store_message(uaid, message(chid, topic=topic, data=data), 0)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["t2", "t1b", "p1", "p2"])

    # -- expiry -----------------------------------------------------------------

    async def test_expiry(self) -> None:
        """A message is fetched until ``stored_at + ttl``, never from then on."""
        uaid, chid = await self.webpush_channel()
        await self.storage.store_message(uaid, message(chid, ttl=10, data="short"), 0)
        await self.storage.store_message(uaid, message(chid, ttl=100, data="long"), 0)
        await self.advance(9.5)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["short", "long"])
        await self.advance(1)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["long"])

    async def test_expired_messages_do_not_count(self) -> None:
        """An expired message frees its place under ``max_pending``."""
        uaid, chid = await self.webpush_channel()
        await self.storage.store_message(uaid, message(chid, ttl=5), 1)
        full = await self.storage.store_message(uaid, message(chid), 1)
        self.assertIs(full.outcome, StoreOutcome.FULL)
        await self.advance(5)
        again = await self.storage.store_message(uaid, message(chid), 1)
        self.assertIs(again.outcome, StoreOutcome.STORED)

    # -- the backlog cap --------------------------------------------------------

    async def test_backlog_cap(self) -> None:
        """Past ``max_pending`` stored messages of the UAID: ``FULL``, nothing stored."""
        uaid, first = await self.webpush_channel()
        _, second = await self.webpush_channel(uaid)
        for chid in (first, second, first):
            result = await self.storage.store_message(uaid, message(chid), 3)
            self.assertIs(result.outcome, StoreOutcome.STORED)
        full = await self.storage.store_message(uaid, message(second), 3)
        self.assertIs(full.outcome, StoreOutcome.FULL)
        self.assertEqual(full.channel_id, spelling(second))
        self.assertEqual(len(await self.storage.fetch_messages(uaid)), 3)

    async def test_backlog_cap_lets_topic_replacement_through(self) -> None:
        """At the cap, a message replacing one by its topic is still stored."""
        uaid, chid = await self.webpush_channel()
        await self.storage.store_message(uaid, message(chid, topic="t", data="old"), 1)
        result = await self.storage.store_message(uaid, message(chid, topic="t", data="new"), 1)
        self.assertIs(result.outcome, StoreOutcome.STORED)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["new"])

    async def test_backlog_cap_is_per_uaid(self) -> None:
        """Another UAID's messages do not count."""
        uaid, chid = await self.webpush_channel()
        other, other_chid = await self.webpush_channel()
        await self.storage.store_message(other, message(other_chid), 1)
        result = await self.storage.store_message(uaid, message(chid), 1)
        self.assertIs(result.outcome, StoreOutcome.STORED)

    # -- delete and unregister ----------------------------------------------------

    async def test_delete_exactly_one(self) -> None:
        """An ack deletes that message only; a second delete finds nothing."""
        uaid, chid = await self.webpush_channel()
        first = await self.storage.store_message(uaid, message(chid, data="a"), 0)
        await self.storage.store_message(uaid, message(chid, data="b"), 0)
        assert first.message is not None
        self.assertTrue(await self.storage.delete_message(uaid, first.message.seq))
        self.assertFalse(await self.storage.delete_message(uaid, first.message.seq))
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["b"])

    async def test_delete_other_uaid(self) -> None:
        """A sequence number of one UAID deletes nothing of another."""
        uaid, chid = await self.webpush_channel()
        other, _ = await self.webpush_channel()
        stored = await self.storage.store_message(uaid, message(chid), 0)
        assert stored.message is not None
        self.assertFalse(await self.storage.delete_message(other, stored.message.seq))
        self.assertFalse(await self.storage.delete_message(new_id(), stored.message.seq))
        self.assertEqual(len(await self.storage.fetch_messages(uaid)), 1)

    async def test_unregister_deletes_the_channels_messages(self) -> None:
        """Unregister removes that channel's messages and keeps the others."""
        uaid, gone = await self.webpush_channel()
        _, kept = await self.webpush_channel(uaid)
        await self.storage.store_message(uaid, message(gone, data="x"), 0)
        await self.storage.store_message(uaid, message(kept, data="y"), 0)
        await self.storage.store_message(uaid, message(gone, topic="t", data="z"), 0)
        await self.storage.unregister(uaid, gone)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["y"])
        # Registered again, the channel starts empty.
        await self.storage.register(uaid, gone, spelling(gone), 0, Mode.WEBPUSH)
        fetched = await self.storage.fetch_messages(uaid)
        self.assertEqual([m.data for m in fetched], ["y"])

    async def test_unregister_leaves_no_tombstone(self) -> None:
        """A WebPush channel is removed outright: ``expired`` never names it, nor counts it."""
        uaid, chid = await self.webpush_channel()
        await self.storage.unregister(uaid, chid)
        self.assertEqual(await self.storage.expired(uaid, [chid]), [])
        await self.storage.register(uaid, new_id(), "other", 1, Mode.WEBPUSH)
        result = await self.storage.store_message(uaid, message(chid), 0)
        self.assertIs(result.outcome, StoreOutcome.GONE)

    async def test_channel_limit(self) -> None:
        """``max_channels`` counts a WebPush user's channels; unregister frees one."""
        uaid, chid = await self.webpush_channel()
        await self.storage.register(uaid, new_id(), "b", 2, Mode.WEBPUSH)
        with self.assertRaises(TooManyChannels):
            await self.storage.register(uaid, new_id(), "c", 2, Mode.WEBPUSH)
        await self.storage.register(uaid, chid, spelling(chid), 2, Mode.WEBPUSH)  # exists
        await self.storage.unregister(uaid, chid)
        await self.storage.register(uaid, new_id(), "c", 2, Mode.WEBPUSH)

    async def test_register_again_keeps_messages(self) -> None:
        """Registering a live channel again keeps its messages."""
        uaid, chid = await self.webpush_channel()
        await self.storage.store_message(uaid, message(chid), 0)
        await self.storage.register(uaid, chid, spelling(chid), 0, Mode.WEBPUSH)
        self.assertEqual(len(await self.storage.fetch_messages(uaid)), 1)


class _ClockedMessages(contract.ClockedBackend, MessageContract):
    """The message contract on a ``task.Clock``."""


# Each backend is built as for the ``StorageContract`` (the module, not its
# classes, is imported: trial would run imported test cases here again).


@synchronous
class MemoryMessageTests(_ClockedMessages, SynchronousTestCase):
    """``MemoryStorage`` passes the message contract (it is the reference)."""

    make_storage = contract.MemoryContractTests.make_storage


@synchronous
class SqliteMessageTests(_ClockedMessages, SynchronousTestCase):
    """``SqliteStorage`` with an inline runner passes the message contract."""

    make_storage = contract.SqliteContractTests.make_storage


@synchronous
class FakeMemcachedMessageTests(_ClockedMessages, SynchronousTestCase):
    """``MemcachedStorage`` on ``FakeMemcache`` passes the message contract."""

    make_storage = contract.FakeMemcachedContractTests.make_storage
