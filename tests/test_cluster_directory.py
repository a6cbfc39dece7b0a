"""Tests for ``pushtwisted.cluster.directory``: one contract, every backend.

``DirectoryContract`` runs against ``MemoryDirectory`` and against
``MemcachedDirectory`` on ``FakeMemcache`` (``pushtwisted.testing.memcache``,
an in-process memcached model with ``gets``/``cas`` and expiry on a
``task.Clock``).
``tests/integration/test_cluster_directory.py`` runs it against a real
memcached.  The memcached-only tests force the compare-and-set races.
"""

from __future__ import annotations

import uuid

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.directory import Directory, MemcachedDirectory, NodeEntry
from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage._memcache import MAX_RELATIVE_EXPIRE
from pushtwisted.testing import inline_submit
from pushtwisted.testing.cluster import MemoryDirectory
from pushtwisted.testing.memcache import FakeMemcache
from tests.test_storage_contract import EPOCH, synchronous

NODE_A = "http://10.0.0.1:3000"
NODE_B = "http://10.0.0.2:3000"


def new_id() -> str:
    return uuid.uuid4().hex


class DirectoryContract:
    """Tests every ``Directory`` must pass (mix into a trial test case)."""

    directory: Directory

    def make_directory(self) -> Directory:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.directory = self.make_directory()

    async def test_unknown(self) -> None:
        """An unknown UAID has no entry, and clearing it does nothing."""
        uaid = new_id()
        self.assertIsNone(await self.directory.get_node(uaid))
        entry = NodeEntry(node_url=NODE_A, connected_at=1)
        self.assertFalse(await self.directory.clear_node(uaid, entry))

    async def test_set_returns_previous(self) -> None:
        """``set_node`` replaces the entry and returns the one it replaced."""
        uaid = new_id()
        self.assertIsNone(await self.directory.set_node(uaid, NODE_A, 100))
        previous = await self.directory.set_node(uaid, NODE_B, 200)
        self.assertEqual(previous, NodeEntry(node_url=NODE_A, connected_at=100))
        self.assertEqual(
            await self.directory.get_node(uaid),
            NodeEntry(node_url=NODE_B, connected_at=200),
        )

    async def test_clear_own_entry(self) -> None:
        """``clear_node`` with the current entry removes it."""
        uaid = new_id()
        await self.directory.set_node(uaid, NODE_A, 100)
        entry = NodeEntry(node_url=NODE_A, connected_at=100)
        self.assertTrue(await self.directory.clear_node(uaid, entry))
        self.assertIsNone(await self.directory.get_node(uaid))
        self.assertFalse(await self.directory.clear_node(uaid, entry))

    async def test_clear_changed_entry_keeps_it(self) -> None:
        """An entry that changed (another node, or a newer connection) is never cleared."""
        uaid = new_id()
        await self.directory.set_node(uaid, NODE_A, 100)
        await self.directory.set_node(uaid, NODE_B, 200)
        old = NodeEntry(node_url=NODE_A, connected_at=100)
        self.assertFalse(await self.directory.clear_node(uaid, old))
        await self.directory.set_node(uaid, NODE_B, 300)
        older_same_node = NodeEntry(node_url=NODE_B, connected_at=200)
        self.assertFalse(await self.directory.clear_node(uaid, older_same_node))
        self.assertEqual(
            await self.directory.get_node(uaid),
            NodeEntry(node_url=NODE_B, connected_at=300),
        )

    async def test_set_after_clear(self) -> None:
        """After a clear, the next hello's ``set_node`` sees no previous entry."""
        uaid = new_id()
        await self.directory.set_node(uaid, NODE_A, 100)
        await self.directory.clear_node(uaid, NodeEntry(node_url=NODE_A, connected_at=100))
        self.assertIsNone(await self.directory.set_node(uaid, NODE_B, 200))
        self.assertEqual(
            await self.directory.get_node(uaid),
            NodeEntry(node_url=NODE_B, connected_at=200),
        )

    async def test_uaids_are_separate(self) -> None:
        """Entries of different UAIDs do not affect each other."""
        a, b = new_id(), new_id()
        await self.directory.set_node(a, NODE_A, 1)
        await self.directory.set_node(b, NODE_B, 2)
        await self.directory.clear_node(a, NodeEntry(node_url=NODE_A, connected_at=1))
        self.assertIsNone(await self.directory.get_node(a))
        self.assertEqual(
            await self.directory.get_node(b),
            NodeEntry(node_url=NODE_B, connected_at=2),
        )


@synchronous
class MemoryDirectoryTests(DirectoryContract, SynchronousTestCase):
    """``MemoryDirectory`` passes the contract."""

    def make_directory(self) -> Directory:
        return MemoryDirectory()

    def test_len(self) -> None:
        """``len`` counts the entries."""
        directory = MemoryDirectory()
        directory.set_node(new_id(), NODE_A, 1)
        self.assertEqual(len(directory), 1)


@synchronous
class FakeMemcachedDirectoryTests(DirectoryContract, SynchronousTestCase):
    """``MemcachedDirectory`` on ``FakeMemcache`` passes the contract and keeps CAS."""

    def make_directory(self) -> Directory:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.client = FakeMemcache(self.clock)
        self.memcached = MemcachedDirectory(
            self.client, inline_submit, self.clock, ttl=3600.0, key_prefix="pt:"
        )
        return self.memcached

    def test_key_and_value(self) -> None:
        """Entries live at ``<prefix>node:<uaid>`` as JSON, with the TTL as expiry."""
        uaid = new_id()
        self.successResultOf(self.directory.set_node(uaid, NODE_A, 5))
        key = f"pt:node:{uaid}"
        self.assertEqual(self.client.get(key), {"node": NODE_A, "connected_at": 5})
        self.assertEqual(self.client.expiries[key], 3600)

    def test_long_ttl_is_absolute(self) -> None:
        """A TTL over 30 days is sent as an absolute time (``memcached_expire``)."""
        directory = MemcachedDirectory(self.client, inline_submit, self.clock, ttl=40 * 86400.0)
        uaid = new_id()
        self.successResultOf(directory.set_node(uaid, NODE_A, 5))
        expire = self.client.expiries[f"node:{uaid}"]
        self.assertGreater(expire, MAX_RELATIVE_EXPIRE)
        self.assertEqual(expire, int(EPOCH) + 40 * 86400)

    def test_entry_expires(self) -> None:
        """An entry not rewritten within the TTL disappears."""
        uaid = new_id()
        self.successResultOf(self.directory.set_node(uaid, NODE_A, 5))
        self.clock.advance(3600)
        self.assertIsNone(self.successResultOf(self.directory.get_node(uaid)))

    def test_cleared_entry_is_tombstone(self) -> None:
        """A cleared entry reads as none and its tombstone expires soon."""
        uaid = new_id()
        self.successResultOf(self.directory.set_node(uaid, NODE_A, 5))
        entry = NodeEntry(node_url=NODE_A, connected_at=5)
        self.assertTrue(self.successResultOf(self.directory.clear_node(uaid, entry)))
        key = f"pt:node:{uaid}"
        self.assertEqual(self.client.get(key), {})
        self.assertLessEqual(self.client.expiries[key], 60)
        self.assertFalse(self.successResultOf(self.directory.clear_node(uaid, entry)))

    def test_clear_loses_race_to_reconnect(self) -> None:
        """A device that reconnects while its dead node's entry is being cleared is kept."""
        uaid = new_id()
        key = f"pt:node:{uaid}"
        self.successResultOf(self.directory.set_node(uaid, NODE_A, 5))
        dead = NodeEntry(node_url=NODE_A, connected_at=5)
        # Between the clear's read and its write, the device says hello on B.
        self.client.interpose(
            key, lambda: self.client.set(key, {"node": NODE_B, "connected_at": 9})
        )
        self.assertFalse(self.successResultOf(self.directory.clear_node(uaid, dead)))
        self.assertEqual(
            self.successResultOf(self.directory.get_node(uaid)),
            NodeEntry(node_url=NODE_B, connected_at=9),
        )

    def test_set_race_returns_true_previous(self) -> None:
        """Two hellos racing: each replaced entry is reported to exactly one writer."""
        uaid = new_id()
        key = f"pt:node:{uaid}"
        self.successResultOf(self.directory.set_node(uaid, NODE_A, 1))
        # Another node writes between this set's gets and its cas: the cas
        # fails, the loop reads again and reports the *other* node's entry.
        self.client.interpose(
            key, lambda: self.client.set(key, {"node": NODE_B, "connected_at": 2})
        )
        previous = self.successResultOf(self.directory.set_node(uaid, NODE_A, 3))
        self.assertEqual(previous, NodeEntry(node_url=NODE_B, connected_at=2))

    def test_fresh_set_is_one_add(self) -> None:
        """A fresh UAID's entry is written with one ``add``, in one round, nothing read."""
        uaid = new_id()
        rounds, commands = self.client.rounds, len(self.client.commands)
        self.assertIsNone(self.successResultOf(self.memcached.set_node(uaid, NODE_A, 5, True)))
        self.assertEqual(self.client.rounds - rounds, 1)
        self.assertEqual(
            [repr(c) for c in self.client.commands[commands:]], [f"Store(add, 'pt:node:{uaid}')"]
        )
        self.assertEqual(
            self.successResultOf(self.directory.get_node(uaid)),
            NodeEntry(node_url=NODE_A, connected_at=5),
        )

    def test_fresh_set_replaces_an_entry_found(self) -> None:
        """A "fresh" UAID that has an entry after all: it is replaced and reported."""
        uaid = new_id()
        self.successResultOf(self.directory.set_node(uaid, NODE_B, 2))
        previous = self.successResultOf(self.memcached.set_node(uaid, NODE_A, 5, True))
        self.assertEqual(previous, NodeEntry(node_url=NODE_B, connected_at=2))
        self.assertEqual(
            self.successResultOf(self.directory.get_node(uaid)),
            NodeEntry(node_url=NODE_A, connected_at=5),
        )

    def test_set_race_on_add(self) -> None:
        """A first hello racing another first hello reads and replaces the winner's entry."""
        uaid = new_id()
        key = f"pt:node:{uaid}"
        self.client.interpose(
            key, lambda: self.client.set(key, {"node": NODE_B, "connected_at": 2})
        )
        previous = self.successResultOf(self.directory.set_node(uaid, NODE_A, 3))
        self.assertEqual(previous, NodeEntry(node_url=NODE_B, connected_at=2))

    def test_set_gives_up_when_contended(self) -> None:
        """A compare-and-set that always loses ends in ``StorageUnavailable``."""
        uaid = new_id()
        key = f"pt:node:{uaid}"
        self.successResultOf(self.directory.set_node(uaid, NODE_A, 1))

        def meddle() -> None:
            self.client.set(key, {"node": NODE_B, "connected_at": 2})
            self.client.interpose(key, meddle)

        self.client.interpose(key, meddle)
        self.failureResultOf(self.directory.set_node(uaid, NODE_A, 3), StorageUnavailable)

    def test_corrupt_entry(self) -> None:
        """A corrupt value fails reads, cannot be cleared, and is replaced by a hello."""
        uaid = new_id()
        key = f"pt:node:{uaid}"
        for corrupt in (
            [1],
            {"node": 5, "connected_at": 1},
            {"node": NODE_A, "connected_at": True},
        ):
            self.client.set(key, corrupt)
            self.failureResultOf(self.directory.get_node(uaid), StorageUnavailable)
        entry = NodeEntry(node_url=NODE_A, connected_at=1)
        self.failureResultOf(self.directory.clear_node(uaid, entry), StorageUnavailable)
        self.assertIsNone(self.successResultOf(self.directory.set_node(uaid, NODE_A, 1)))
        self.assertEqual(self.successResultOf(self.directory.get_node(uaid)), entry)

    def test_errors_are_storage_unavailable(self) -> None:
        """A memcached failure errbacks with ``StorageUnavailable`` on every call."""
        self.client.broken = True
        uaid = new_id()
        entry = NodeEntry(node_url=NODE_A, connected_at=1)
        self.failureResultOf(self.directory.set_node(uaid, NODE_A, 1), StorageUnavailable)
        self.failureResultOf(self.directory.get_node(uaid), StorageUnavailable)
        self.failureResultOf(self.directory.clear_node(uaid, entry), StorageUnavailable)

    def test_bad_arguments(self) -> None:
        """A non-positive TTL or an unusable prefix is a ``ValueError``."""
        for kwargs in (
            {"ttl": 0.0},
            {"ttl": 1.0, "key_prefix": "a b"},
            {"ttl": 1.0, "key_prefix": "x" * 300},
        ):
            with self.assertRaises(ValueError):
                MemcachedDirectory(self.client, inline_submit, self.clock, **kwargs)  # type: ignore[arg-type]
