"""WebPush on ``MemcachedStorage`` over ``FakeMemcache``: layout, costs, expiry, races.

The message contract runs in ``tests/test_storage_messages.py``; here are
what only memcached has: the user record and body keys, the commands and
round trips each operation costs, bodies that vanish, and forced
interleavings of concurrent writers (``FakeMemcache.interpose`` runs a whole
other operation just before a ``cas`` or ``add``), which must lose nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage._memcache_webpush import WebPushRecords
from pushtwisted.storage.interface import (
    Mode,
    NewMessage,
    StoredMessage,
    StoreOutcome,
    StoreResult,
)
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.testing import inline_submit
from pushtwisted.testing.memcache import FakeMemcache
from tests.test_storage_contract import EPOCH, new_id

#: The first sequence number of a user created at ``EPOCH``.
FIRST = int(EPOCH * 1_000_000)


def message(chid: str, data: str | None = "ZGF0YQ", **kwargs: Any) -> NewMessage:
    fields: dict[str, Any] = {"ttl": 600, "headers": {"encoding": "aes128gcm"}}
    fields.update(kwargs)
    return NewMessage(chid=chid, data=data, **fields)


class _Fake(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.client = FakeMemcache(self.clock)
        self.storage = MemcachedStorage(
            self.client,
            inline_submit,
            self.clock,
            ttl_live=86400.0,
            ttl_registered=86400.0 * 2,
            ttl_deleted=600.0,
            key_prefix="p-",
        )
        #: The same operations as steps, to run alone in the middle of another.
        self.records = WebPushRecords("p-", 86400.0 * 2)
        self.uaid, self.chid = new_id(), new_id()
        self.successResultOf(self.storage.register(self.uaid, self.chid, "C", 0, Mode.WEBPUSH))

    def store(self, new: NewMessage, max_pending: int = 0, uaid: str | None = None) -> StoreResult:
        return self.successResultOf(self.storage.store_message(uaid or self.uaid, new, max_pending))

    def stored(self, new: NewMessage) -> StoredMessage:
        result = self.store(new)
        self.assertIs(result.outcome, StoreOutcome.STORED)
        assert result.message is not None
        return result.message

    def fetch(self) -> list[StoredMessage]:
        return self.successResultOf(self.storage.fetch_messages(self.uaid))

    def alone(self, steps: Steps[Any]) -> object:
        """Run one operation to its end on the fake (as a racing writer would)."""
        ((ok, value),) = MemcacheSteps(self.client)([steps])
        self.assertTrue(ok, value)
        return value

    def costs(self, run: Any) -> tuple[list[str], int]:
        """The commands (verb and key suffix) and rounds that ``run()`` sent."""
        rounds, sent = self.client.rounds, len(self.client.commands)
        run()
        commands = [repr(c).split("(")[0] for c in self.client.commands[sent:]]
        verbs = [
            c.verb.decode() if hasattr(c, "verb") else name.lower()
            for c, name in zip(self.client.commands[sent:], commands, strict=True)
        ]
        return verbs, self.client.rounds - rounds


class LayoutTests(_Fake):
    """The user record, the body keys and their expiries."""

    def test_user_record_and_body(self) -> None:
        """A WebPush user is one object; each message's body is a key of its own."""
        first = self.stored(message(self.chid, topic="t"))
        record = self.client.get(f"p-{self.uaid}")
        self.assertEqual(
            record,
            {
                "mode": "webpush",
                "channels": {self.chid: "C"},
                "next": FIRST + 1,
                "messages": [[FIRST, self.chid, "t", EPOCH, 600]],
            },
        )
        self.assertEqual(first.seq, FIRST)
        body = self.client.get(f"p-{self.uaid}:m:{FIRST}")
        self.assertEqual(body, {"data": "ZGF0YQ", "headers": {"encoding": "aes128gcm"}})
        self.assertEqual(self.client.expiries[f"p-{self.uaid}:m:{FIRST}"], 601)
        self.assertEqual(self.client.expiries[f"p-{self.uaid}"], 86400 * 2)
        # No channel record: the SimplePush operations find nothing.
        self.assertIsNone(self.client.get(f"p-{self.uaid}.{self.chid}"))

    def test_user_mode_refreshes_the_record(self) -> None:
        """A hello's ``user_mode`` keeps an idle WebPush user alive."""
        for _ in range(4):
            self.clock.advance(86400)
            self.assertIs(self.successResultOf(self.storage.user_mode(self.uaid)), Mode.WEBPUSH)
        self.assertIs(self.store(message(self.chid)).outcome, StoreOutcome.STORED)
        self.clock.advance(86400 * 2)
        self.assertIsNone(self.successResultOf(self.storage.user_mode(self.uaid)))

    def test_acked_and_replaced_bodies_deleted(self) -> None:
        """An ack deletes the body with the entry; a topic replacement deletes the old body."""
        acked = self.stored(message(self.chid))
        old = self.stored(message(self.chid, topic="t"))
        self.stored(message(self.chid, topic="t"))
        self.assertTrue(self.successResultOf(self.storage.delete_message(self.uaid, acked.seq)))
        for seq in (acked.seq, old.seq):
            self.assertIsNone(self.client.get(f"p-{self.uaid}:m:{seq}"))
        self.assertEqual(len(self.client.get(f"p-{self.uaid}")["messages"]), 1)

    def test_unregister_deletes_bodies(self) -> None:
        """Unregister removes the channel and its entries, and deletes their bodies."""
        other = new_id()
        self.successResultOf(self.storage.register(self.uaid, other, "O", 0, Mode.WEBPUSH))
        gone = self.stored(message(self.chid))
        kept = self.stored(message(other))
        self.successResultOf(self.storage.unregister(self.uaid, self.chid))
        self.assertIsNone(self.client.get(f"p-{self.uaid}:m:{gone.seq}"))
        self.assertIsNotNone(self.client.get(f"p-{self.uaid}:m:{kept.seq}"))
        record = self.client.get(f"p-{self.uaid}")
        self.assertEqual((record["channels"], len(record["messages"])), ({other: "O"}, 1))

    def test_expired_entries_dropped_at_next_write(self) -> None:
        """An expired entry leaves the index when the record is next written."""
        self.stored(message(self.chid, ttl=10))
        self.clock.advance(10)
        kept = self.stored(message(self.chid))
        entries = self.client.get(f"p-{self.uaid}")["messages"]
        self.assertEqual([e[0] for e in entries], [kept.seq])

    def test_evicted_body_dropped_at_fetch(self) -> None:
        """An entry whose body is gone (evicted) is not answered, and leaves the index."""
        lost = self.stored(message(self.chid, data="bG9zdA"))
        self.stored(message(self.chid, data="a2VwdA"))
        self.client.delete(f"p-{self.uaid}:m:{lost.seq}")
        self.assertEqual([m.data for m in self.fetch()], ["a2VwdA"])
        self.assertEqual(len(self.client.get(f"p-{self.uaid}")["messages"]), 1)

    def test_corrupt_values(self) -> None:
        """A user record or body of the wrong shape is an error, never a miss."""
        stored = self.stored(message(self.chid))
        self.client.set(f"p-{self.uaid}:m:{stored.seq}", ["not", "a body"])
        self.failureResultOf(self.storage.fetch_messages(self.uaid), StorageUnavailable)
        record = self.client.get(f"p-{self.uaid}")
        record["messages"] = [["x"]]
        self.client.set(f"p-{self.uaid}", record)
        for d in (
            self.storage.fetch_messages(self.uaid),
            self.storage.store_message(self.uaid, message(self.chid), 0),
            self.storage.user_mode(self.uaid),
        ):
            self.failureResultOf(d, StorageUnavailable)

    def test_errors_are_not_misses(self) -> None:
        """When memcached fails, every WebPush call errbacks ``StorageUnavailable``."""
        self.client.broken = True
        for d in (
            self.storage.user_mode(self.uaid),
            self.storage.register(self.uaid, new_id(), "x", 0, Mode.WEBPUSH),
            self.storage.store_message(self.uaid, message(self.chid), 0),
            self.storage.fetch_messages(self.uaid),
            self.storage.delete_message(self.uaid, FIRST),
            self.storage.unregister(self.uaid, self.chid),
        ):
            self.failureResultOf(d, StorageUnavailable)


class CostTests(_Fake):
    """The memcached commands and round trips of each WebPush operation."""

    def test_store_fetch_ack(self) -> None:
        """Store: gets, add, cas (3 rounds); fetch of two: gets, then both bodies in
        one round; ack: gets, cas, delete of the body (3 rounds)."""
        verbs, rounds = self.costs(lambda: self.stored(message(self.chid)))
        self.assertEqual((verbs, rounds), (["get", "add", "cas"], 3))
        self.stored(message(self.chid))
        verbs, rounds = self.costs(self.fetch)
        self.assertEqual((verbs, rounds), (["get", "get", "get"], 2))
        seq = self.fetch()[0].seq
        verbs, rounds = self.costs(
            lambda: self.successResultOf(self.storage.delete_message(self.uaid, seq))
        )
        self.assertEqual((verbs, rounds), (["get", "cas", "delete"], 3))

    def test_hello(self) -> None:
        """``user_mode``: touch and gets of the record in one round."""
        verbs, rounds = self.costs(lambda: self.storage.user_mode(self.uaid))
        self.assertEqual((verbs, rounds), (["touch", "get"], 1))

    def test_refusals_write_nothing(self) -> None:
        """GONE, NOT_STORED and FULL cost the one read of the record."""
        self.stored(message(self.chid))
        for new, max_pending in (
            (message(new_id()), 0),
            (message(self.chid, ttl=0), 0),
            (message(self.chid), 1),
        ):
            verbs, rounds = self.costs(lambda n=new, m=max_pending: self.store(n, m))
            self.assertEqual((verbs, rounds), (["get"], 1))


class RaceTests(_Fake):
    """Concurrent writers forced between another operation's read and write."""

    def key(self, seq: int | None = None) -> str:
        return f"p-{self.uaid}" if seq is None else f"p-{self.uaid}:m:{seq}"

    def test_two_stores_at_once(self) -> None:
        """A store landing between another's claim and its cas: both are kept."""
        self.client.interpose(
            self.key(),
            lambda: self.alone(self.records.store(self.uaid, message(self.chid, "Yg"), 0, EPOCH)),
        )
        first = self.stored(message(self.chid, data="YQ"))
        fetched = self.fetch()
        self.assertEqual(sorted(m.data or "" for m in fetched), ["YQ", "Yg"])
        self.assertEqual(len({m.seq for m in fetched}), 2)
        self.assertIn(first, fetched)

    def test_claimed_number_taken(self) -> None:
        """A store whose number another claimed first takes the next one."""
        self.client.interpose(
            self.key(FIRST),
            lambda: self.alone(self.records.store(self.uaid, message(self.chid, "Yg"), 0, EPOCH)),
        )
        mine = self.stored(message(self.chid, data="YQ"))
        self.assertEqual(mine.seq, FIRST + 1)
        self.assertEqual([m.data for m in self.fetch()], ["Yg", "YQ"])

    def test_number_never_reused(self) -> None:
        """A number another message used and freed (acked) meanwhile is not reused."""

        def other() -> None:
            result = self.alone(self.records.store(self.uaid, message(self.chid, "Yg"), 0, EPOCH))
            assert isinstance(result, StoreResult) and result.message is not None
            self.alone(self.records.delete(self.uaid, result.message.seq, EPOCH))

        # Before this store's add of FIRST: another stores FIRST and acks it.
        self.client.interpose(self.key(FIRST), other)
        mine = self.stored(message(self.chid, data="YQ"))
        self.assertGreater(mine.seq, FIRST)
        self.assertEqual(self.client.get(self.key())["next"], mine.seq + 1)
        self.assertEqual([(m.seq, m.data) for m in self.fetch()], [(mine.seq, "YQ")])
        self.assertIsNone(self.client.get(self.key(FIRST)))

    def test_store_races_ack(self) -> None:
        """An ack landing before a store's cas: the ack holds, the new message is kept."""
        acked = self.stored(message(self.chid, data="YQ"))
        self.client.interpose(
            self.key(),
            lambda: self.alone(self.records.delete(self.uaid, acked.seq, EPOCH)),
        )
        self.stored(message(self.chid, data="Yg"))
        self.assertEqual([m.data for m in self.fetch()], ["Yg"])

    def test_ack_races_store(self) -> None:
        """A store landing before an ack's cas: the ack still deletes exactly its message."""
        acked = self.stored(message(self.chid, data="YQ"))
        self.client.interpose(
            self.key(),
            lambda: self.alone(self.records.store(self.uaid, message(self.chid, "Yg"), 0, EPOCH)),
        )
        self.assertTrue(self.successResultOf(self.storage.delete_message(self.uaid, acked.seq)))
        self.assertEqual([m.data for m in self.fetch()], ["Yg"])

    def test_store_races_unregister(self) -> None:
        """An unregister before a store's cas: the store is GONE and leaves no body."""
        self.client.interpose(
            self.key(),
            lambda: self.alone(self.storage.unregister_steps(self.uaid, self.chid, EPOCH)),
        )
        self.assertIs(self.store(message(self.chid)).outcome, StoreOutcome.GONE)
        self.assertIsNone(self.client.get(self.key(FIRST)))
        self.successResultOf(self.storage.register(self.uaid, self.chid, "C", 0, Mode.WEBPUSH))
        self.assertEqual(self.fetch(), [])

    def test_unregister_races_store(self) -> None:
        """A store before an unregister's cas: the unregister removes that message too."""
        self.stored(message(self.chid, data="YQ"))
        self.client.interpose(
            self.key(),
            lambda: self.alone(self.records.store(self.uaid, message(self.chid, "Yg"), 0, EPOCH)),
        )
        self.successResultOf(self.storage.unregister(self.uaid, self.chid))
        self.successResultOf(self.storage.register(self.uaid, self.chid, "C", 0, Mode.WEBPUSH))
        self.assertEqual(self.fetch(), [])

    def test_store_races_full(self) -> None:
        """A store landing first fills the last place: the second is FULL, its body deleted."""
        self.client.interpose(
            self.key(),
            lambda: self.alone(self.records.store(self.uaid, message(self.chid, "Yg"), 1, EPOCH)),
        )
        self.assertIs(self.store(message(self.chid), 1).outcome, StoreOutcome.FULL)
        self.assertIsNone(self.client.get(self.key(FIRST)))
        self.assertEqual([m.data for m in self.fetch()], ["Yg"])
