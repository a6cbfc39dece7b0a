"""The memcached pipeline on real sockets: a real memcached, and servers that misbehave.

``_StoreHashClient.pipeline`` (``pushtwisted.storage._memcache``) over
``_memcache_wire.exchange``: the replies of a mixed round, reads that see
the writes of their round, a corrupt value, an error line, a server that
never answers (socket timeout, then the fail-fast window), one that closes
the connection half-way through a round, and a dead server among live
ones.  The blocking calls run on the reactor's thread pool; the fake
servers are Twisted protocols on the real reactor.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import (
    MemcacheError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from pushtwisted.storage._memcache import make_memcached_client
from pushtwisted.storage._memcache_wire import Command, Delete, Get, Store, Touch
from tests.integration.memcached_fixture import MemcachedProcess, free_port, shared_memcached


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Silent(Protocol):
    """Takes every request and never answers."""

    def dataReceived(self, data: bytes) -> None:
        pass


class _HalfAnswer(Protocol):
    """Answers the first command of a request, then hangs up."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"STORED\r\n")
        self.transport.loseConnection()


class _Counting(Factory):
    def __init__(self, protocol: type[Protocol]) -> None:
        self.protocol = protocol
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.connections += 1
        return super().buildProtocol(addr)


class PipelineTests(TestCase):
    """``pipeline`` answers each command of a round, and fails only what failed."""

    def client(self, servers: list[str], **kwargs: Any) -> Any:
        options: dict[str, Any] = {"pool_size": 2, "connect_timeout": 1.0, "timeout": 2.0}
        options.update(kwargs)
        client = make_memcached_client(servers, **options)
        self.addCleanup(client.close)
        return client

    def key(self) -> str:
        return f"pt-pipe-{uuid.uuid4().hex}"

    async def pipeline(self, client: Any, commands: Sequence[Command]) -> list[Any]:
        replies: list[Any] = await deferToThread(client.pipeline, commands)
        self.assertEqual(len(replies), len(commands))
        return replies

    def fake_server(self, protocol: type[Protocol]) -> tuple[str, _Counting]:
        factory = _Counting(protocol)
        port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}", factory

    async def test_mixed_round(self) -> None:
        """Every kind of command gets its reply, in order; the reads see the writes."""
        client = self.client([shared_memcached()])
        old, new, missing = self.key(), self.key(), self.key()
        ((_, cas),) = await self.pipeline(client, [Get(old)])
        self.assertIsNone(cas)
        await self.pipeline(client, [Store(b"set", old, {"v": 1}, 60)])
        ((_, cas),) = await self.pipeline(client, [Get(old)])
        replies = await self.pipeline(
            client,
            [
                Get(old),
                Store(b"cas", old, {"v": 2}, 60, cas),
                Store(b"cas", old, {"v": 3}, 60, cas),  # the token is stale now
                Store(b"cas", missing, 1, 60, b"1"),
                Store(b"add", new, "n", 60),
                Store(b"add", new, "again", 60),
                Touch(old, 120),
                Touch(missing, 120),
                Delete(missing),
                Get(new),
                Get(missing),
            ],
        )
        self.assertEqual(replies[0][0], {"v": 2}, "the read sees the round's write")
        self.assertEqual(replies[1:9], [True, False, None, True, False, True, False, False])
        self.assertEqual(replies[9][0], "n")
        self.assertEqual(replies[10], (None, None))
        ((value, _),) = await self.pipeline(client, [Get(old)])
        self.assertEqual(value, {"v": 2})

    async def test_same_key_read_twice(self) -> None:
        """Two reads of one key in a round both get its value."""
        client = self.client([shared_memcached()])
        key = self.key()
        replies = await self.pipeline(client, [Store(b"set", key, 5, 60), Get(key), Get(key)])
        self.assertEqual([replies[1][0], replies[2][0]], [5, 5])
        self.assertEqual(replies[1][1], replies[2][1])

    async def test_corrupt_value(self) -> None:
        """A value that is not JSON fails the reads of it, not the round nor the connection."""
        address = shared_memcached()
        host, port = address.rsplit(":", 1)
        raw = Client((host, int(port)))
        self.addCleanup(raw.close)
        corrupt, good = self.key(), self.key()
        raw.set(corrupt, b"{not json", noreply=False)
        client = self.client([address])
        replies = await self.pipeline(
            client, [Store(b"set", good, [1], 60), Get(corrupt), Get(good)]
        )
        self.assertIs(replies[0], True)
        self.assertIsInstance(replies[1], ValueError)
        self.assertEqual(replies[2][0], [1])
        self.assertEqual((await self.pipeline(client, [Get(good)]))[0][0], [1])

    async def test_error_line(self) -> None:
        """An error line fails every command of the server's round; the next round works."""
        client = self.client([shared_memcached()])
        key, big = self.key(), self.key()
        replies = await self.pipeline(
            client, [Store(b"set", big, "x" * (2 * 1024 * 1024), 60), Store(b"set", key, 1, 60)]
        )
        self.assertIsInstance(replies[0], MemcacheServerError)
        self.assertIs(replies[1], replies[0])
        replies = await self.pipeline(client, [Store(b"set", key, 2, 60), Get(key)])
        self.assertEqual(replies, [True, (2, replies[1][1])])

    async def test_silent_server(self) -> None:
        """A server that never answers: the round fails with the socket timeout, then
        the server's calls fail at once for ``retry_timeout`` without connecting."""
        address, factory = self.fake_server(_Silent)
        client = self.client([address], timeout=0.3, retry_timeout=30.0)
        replies = await self.pipeline(client, [Store(b"set", "a", 1, 60), Get("b")])
        self.assertIsInstance(replies[0], TimeoutError)
        self.assertIs(replies[1], replies[0])
        self.assertEqual(factory.connections, 1)
        replies = await self.pipeline(client, [Get("a")])
        self.assertIsInstance(replies[0], MemcacheError)
        self.assertIn("failed less than", str(replies[0]))
        self.assertEqual(factory.connections, 1)

    async def test_closed_mid_round(self) -> None:
        """A server that hangs up after one reply fails the whole round; the next round
        connects again once the fail-fast window is over."""
        address, factory = self.fake_server(_HalfAnswer)
        client = self.client([address], retry_timeout=0.0)
        replies = await self.pipeline(
            client, [Store(b"set", "a", 1, 60), Store(b"set", "b", 1, 60)]
        )
        self.assertIsInstance(replies[0], MemcacheUnexpectedCloseError)
        self.assertIs(replies[1], replies[0])
        replies = await self.pipeline(client, [Store(b"set", "a", 1, 60)])
        self.assertEqual(replies, [True])
        self.assertEqual(factory.connections, 2, "the broken connection was not reused")

    async def test_dead_server_among_live_ones(self) -> None:
        """With a dead server in the ring, its keys fail and the live server's succeed."""
        live = shared_memcached()
        dead = f"127.0.0.1:{free_port()}"
        client = self.client([live, dead])
        by_server: dict[str, str] = {}
        while len(by_server) < 2:
            key = self.key()
            by_server.setdefault(client._get_client(key).server, key)
        live_key = next(k for s, k in by_server.items() if str(s[1]) == live.rsplit(":", 1)[1])
        dead_key = next(k for k in by_server.values() if k != live_key)
        replies = await self.pipeline(
            client,
            [
                Store(b"set", live_key, "up", 60),
                Store(b"set", dead_key, "down", 60),
                Get(live_key),
                Get(dead_key),
            ],
        )
        self.assertIs(replies[0], True)
        self.assertEqual(replies[2][0], "up")
        self.assertIsInstance(replies[1], ConnectionRefusedError)
        # The reads go after every write: by then the dead server is in its
        # fail-fast window, so its read fails without a second connect.
        self.assertIsInstance(replies[3], MemcacheError)

    async def test_two_live_servers(self) -> None:
        """A round spread over two servers answers every command from its own server."""
        other = MemcachedProcess()
        other.start()
        self.addCleanup(other.cleanup)
        client = self.client([shared_memcached(), other.address])
        keys = [self.key() for _ in range(20)]
        writes: list[Command] = [Store(b"set", k, i, 60) for i, k in enumerate(keys)]
        reads: list[Command] = [Get(k) for k in keys]
        replies = await self.pipeline(client, [*reads, *writes])
        self.assertEqual([r[0] for r in replies[:20]], list(range(20)))
        self.assertEqual(replies[20:], [True] * 20)
        servers = {client._get_client(k).server for k in keys}
        self.assertEqual(len(servers), 2, "the keys were spread over both servers")
