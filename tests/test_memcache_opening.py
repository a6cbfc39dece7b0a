"""``MemcachedStorage.open_user``: the hello's mode read, claim and fetch as one job.

On ``FakeMemcache``, which counts pipelined round trips (``rounds``) and
commands, and with a ``submit`` that counts the jobs sent to the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.directory import MemcachedDirectory, NodeEntry
from pushtwisted.storage._memcache_steps import Steps
from pushtwisted.storage.interface import Mode, Opened, UpdateOutcome, UpdateResult
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.testing import FakeSession, inline_submit
from pushtwisted.testing.cluster import FakeNode, Network
from pushtwisted.testing.memcache import FakeMemcache
from tests.test_storage_contract import EPOCH, new_id, spelling

NODE_A = "http://10.0.0.1:3000"
NODE_B = "http://10.0.0.2:3000"


class _StepsClaim:
    """A claim whose write is an update of ``chid``, given as memcached steps."""

    def __init__(self, storage: MemcachedStorage, clock: Clock, chid: str) -> None:
        self.storage = storage
        self.clock = clock
        self.chid = chid
        self.landings: list[tuple[str, object]] = []

    def run(self, uaid: str) -> Deferred[None]:
        raise AssertionError("a claim with steps is not run on its own")

    def steps(self, uaid: str) -> Steps[UpdateResult]:
        return self.storage.update_steps(uaid, self.chid, 9, None, False, self.clock.seconds())

    def landed(self, uaid: str, result: object) -> None:
        self.landings.append((uaid, result))


class OpenUserStepsTests(SynchronousTestCase):
    """One job per hello, the claim inside it, fewer reads than the parts one by one."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.client = FakeMemcache(self.clock)
        self.jobs: list[str] = []

        def submit(operation: str, executor: Callable[[list[Any]], Any], item: Any) -> Any:
            self.jobs.append(operation)
            return inline_submit(operation, executor, item)

        self.submit = submit

        day = 86400
        self.storage = MemcachedStorage(
            self.client, submit, self.clock, ttl_live=day, ttl_registered=day, ttl_deleted=day
        )
        self.uaid, self.chid = new_id(), new_id()
        self.successResultOf(self.storage.register(self.uaid, self.chid, spelling(self.chid), 0))
        self.successResultOf(self.storage.update(self.uaid, self.chid, 5, None))
        self.jobs.clear()

    def open(self, claim: Any = None) -> Opened:
        rounds, commands = self.client.rounds, len(self.client.commands)
        opened = self.successResultOf(self.storage.open_user(self.uaid, lambda m: True, claim))
        self.cost = (self.client.rounds - rounds, len(self.client.commands) - commands)
        return opened

    def test_one_job_reads_the_user_once(self) -> None:
        """Without a claim: one job, the fetch goes on from the mode read (two rounds,
        three commands: touch and gets of the user, gets of the record)."""
        opened = self.open()
        self.assertEqual(self.jobs, ["open_user"])
        self.assertEqual([p.version for p in opened.pending], [5])
        self.assertEqual(self.cost, (2, 3))
        rounds, commands = self.client.rounds, len(self.client.commands)
        self.successResultOf(self.storage.user_mode(self.uaid))
        self.successResultOf(self.storage.fetch_pending(self.uaid))
        parts = (self.client.rounds - rounds, len(self.client.commands) - commands)
        self.assertEqual(parts, (3, 4))  # the parts one by one read the user twice

    def test_claim_steps_inside_the_job_before_the_fetch(self) -> None:
        """A claim given as steps runs in the same job, after the mode read and before
        the fetch (which sees its write); its result goes to ``landed``."""
        claim = _StepsClaim(self.storage, self.clock, self.chid)
        opened = self.open(claim)
        self.assertEqual(self.jobs, ["open_user"])
        self.assertEqual([p.version for p in opened.pending], [9])
        [(uaid, result)] = claim.landings
        self.assertEqual(uaid, self.uaid)
        assert isinstance(result, UpdateResult)
        self.assertIs(result.outcome, UpdateOutcome.STORED)

    def test_claim_not_made_when_not_kept(self) -> None:
        """A UAID the hello does not keep is not claimed: the steps never run."""
        claim = _StepsClaim(self.storage, self.clock, self.chid)
        opened = self.successResultOf(
            self.storage.open_user(self.uaid, lambda m: m is Mode.WEBPUSH, claim)
        )
        self.assertEqual((opened.kept, claim.landings), (False, []))
        self.assertEqual(self.successResultOf(self.storage.fetch_pending(self.uaid))[0].version, 5)

    def test_failure_fails_the_job(self) -> None:
        """A memcached failure fails the whole call with ``StorageUnavailable``."""
        self.client.broken = True
        self.failureResultOf(self.storage.open_user(self.uaid, lambda m: True))

    def test_cluster_claim_in_the_job(self) -> None:
        """A cluster node's claim, on a directory sharing the storage's client, writes the
        directory entry inside the hello's one job, and the previous node is kicked."""
        directory = MemcachedDirectory(self.client, self.submit, self.clock, ttl=3600.0)
        network = Network()
        here = FakeNode(NODE_A, directory=directory, network=network, clock=self.clock)
        there = FakeNode(NODE_B, directory=directory, network=network, clock=self.clock)
        old = FakeSession(1000)
        there.connect(self.uaid, old)
        self.successResultOf(directory.set_node(self.uaid, NODE_B, 1000))
        self.jobs.clear()
        opened = self.open(here.router.claim(5000))
        self.assertEqual(self.jobs, ["open_user"])
        self.assertEqual([p.version for p in opened.pending], [5])
        entry = self.successResultOf(directory.get_node(self.uaid))
        self.assertEqual(entry, NodeEntry(node_url=NODE_A, connected_at=5000))
        network.flush()
        self.assertEqual(network.sent, [("DELETE", f"{NODE_B}/notif/{self.uaid}/1000")])
        self.assertEqual(old.replaced_count, 1)
