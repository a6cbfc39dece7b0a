"""``MemcachedDirectory`` on a real memcached, through the real storage thread pool.

The ``DirectoryContract`` of ``tests/test_cluster_directory.py`` runs against
``$PUSHTWISTED_TEST_MEMCACHED`` (or a memcached started here; skipped without
one, failed under ``CI=true``), plus concurrent hellos racing on one UAID.
"""

from __future__ import annotations

import uuid

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from pushtwisted.cluster.directory import Directory, MemcachedDirectory, NodeEntry
from pushtwisted.storage._memcache import make_memcached_client
from tests.integration.memcached_fixture import shared_memcached
from tests.integration.test_storage_backends import _Pooled, _reactor
from tests.test_cluster_directory import DirectoryContract


class RealMemcachedDirectoryTests(_Pooled, DirectoryContract, TestCase):
    """``MemcachedDirectory`` passes the contract on a real memcached."""

    def make_directory(self) -> Directory:
        address = shared_memcached()
        pool = self.start_pool()
        client = make_memcached_client([address], pool_size=8, connect_timeout=2.0, timeout=5.0)
        self.addCleanup(client.close)
        prefix = f"pt-test-{uuid.uuid4().hex[:8]}:"
        return MemcachedDirectory(client, pool.submit, _reactor(), ttl=3600.0, key_prefix=prefix)

    async def test_concurrent_hellos(self) -> None:
        """Of 20 racing hellos on one UAID, each replaced entry is reported exactly once."""
        uaid = uuid.uuid4().hex
        results = await gatherResults(
            [self.directory.set_node(uaid, f"http://node{i}:3000", i) for i in range(20)]
        )
        final = await self.directory.get_node(uaid)
        assert final is not None
        previous = [r for r in results if r is not None]
        # The writes form one chain: every entry but the last was replaced once.
        self.assertEqual(len(previous), 19)
        written = {NodeEntry(node_url=f"http://node{i}:3000", connected_at=i) for i in range(20)}
        self.assertEqual(set(previous) | {final}, written)
