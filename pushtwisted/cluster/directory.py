"""The cluster's directory: which node holds the connection of each UAID.

At hello a node writes ``uaid -> (its router URL, connected_at)``; an
endpoint that stored an update reads it to find the node to forward to.
Every write is a compare-and-set on the entry, so:

- ``set_node`` replaces whatever is there and returns exactly the entry it
  replaced (the node to tell to drop its older socket);
- ``clear_node`` removes an entry only while it is still the one given (the
  node's own entry at disconnect, or a dead node's entry that a forward
  could not reach), so a device that has just reconnected elsewhere is never
  erased.

``connected_at`` is the holding node's own clock in integer milliseconds; it
is compared only with other values of that node's clock (see ``router``).

``MemcachedDirectory`` is the shared directory of a cluster, under the
storage ``key_prefix`` as ``<prefix>node:<uaid>``.  memcached's text
protocol has no conditional delete, so a cleared entry becomes a short-lived
tombstone written with ``cas`` (read back as "no entry").  Its operations
are steps of ``pushtwisted.storage._memcache_steps`` on the storage's own
client and executor, so a hello's directory write shares the pool's batches
and round trips with the storage calls of the same reactor turn.  Tests use
``pushtwisted.testing.cluster.MemoryDirectory``.

A miss is a normal result (None); a backend failure errbacks with
``StorageUnavailable``, never reads as a miss.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage._memcache import MemcacheClient, check_key_prefix, memcached_expire
from pushtwisted.storage._memcache_steps import MemcacheSteps, Steps
from pushtwisted.storage._memcache_wire import Get, Store

if TYPE_CHECKING:
    from pushtwisted.threadpool import BatchRunner

__all__ = ["Directory", "MemcachedDirectory", "NodeEntry"]

#: gets/cas attempts before giving up with StorageUnavailable.
_CAS_ATTEMPTS = 32
#: Seconds a cleared entry's tombstone lives (any set_node replaces it sooner).
_TOMBSTONE_TTL = 10
#: The value of a cleared entry.
_TOMBSTONE: dict[str, object] = {}
_KEY_TAG = "node:"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeEntry:
    """Where one UAID is connected.

    :ivar node_url: the holding node's router URL (``[router] public_url``).
    :ivar connected_at: when the connection's hello succeeded, in integer
        milliseconds of the holding node's clock.
    """

    node_url: str
    connected_at: int

    def encode(self) -> dict[str, object]:
        """Return the JSON-serialisable form stored in the directory."""
        return {"node": self.node_url, "connected_at": self.connected_at}


def _decode_entry(value: object) -> NodeEntry | None:
    """Return the entry stored as ``value``; None for a tombstone or a miss.

    :raises StorageUnavailable: for a value that is neither.
    """
    if value is None or value == _TOMBSTONE:
        return None
    if isinstance(value, dict):
        node = value.get("node")
        connected_at = value.get("connected_at")
        if (
            isinstance(node, str)
            and node
            and isinstance(connected_at, int)
            and not isinstance(connected_at, bool)
        ):
            return NodeEntry(node_url=node, connected_at=connected_at)
    raise StorageUnavailable(f"memcached: corrupt directory entry {value!r:.80}")


class Directory(Protocol):
    """The shared ``uaid -> NodeEntry`` map (UAIDs in normal form)."""

    def set_node(
        self, uaid: str, node_url: str, connected_at: int, fresh: bool = False
    ) -> Deferred[NodeEntry | None]:
        """Make ``node_url`` the holder of ``uaid``; fire with the entry it replaced.

        ``fresh``: this node has just made ``uaid`` (no entry is expected).
        """

    def get_node(self, uaid: str) -> Deferred[NodeEntry | None]:
        """Fire with the current entry of ``uaid``, or None."""

    def clear_node(self, uaid: str, entry: NodeEntry) -> Deferred[bool]:
        """Remove the entry of ``uaid`` only if it still equals ``entry``.

        Fires True when it was removed, False when it had changed or was gone.
        """

    def set_node_steps(
        self, uaid: str, node_url: str, connected_at: int
    ) -> Generator[Any, Any, NodeEntry | None] | None:
        """``set_node`` as memcached steps on the storage's client, or None (no such form).

        A hello's ``Storage.open_user`` runs them in its own job.
        """


class MemcachedDirectory:
    """A ``Directory`` in memcached, shared by every node of a cluster.

    :param client: a thread-safe pymemcache client with the JSON serde
        (``pushtwisted.storage._memcache.make_memcached_client``).
    :param submit: runs the operations on the storage pool
        (``ThreadPoolService.submit``), with ``MemcacheSteps(client)``.
    :param clock: the reactor clock (``now`` for long expiries).
    :param ttl: seconds an entry lives after its hello (clamped for
        memcached like ``memcached_expire``); use the storage
        ``ttl_registered``.
    :param key_prefix: the storage ``key_prefix``; keys are
        ``<prefix>node:<uaid>``.
    :raises ValueError: for a non-positive ``ttl`` or a ``key_prefix`` that
        ``check_key_prefix`` refuses.
    """

    def __init__(
        self,
        client: MemcacheClient,
        submit: BatchRunner,
        clock: IReactorTime,
        *,
        ttl: float,
        key_prefix: str = "",
    ) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be > 0")
        check_key_prefix(key_prefix)
        self._steps = MemcacheSteps(client)
        self._submit = submit
        self._clock = clock
        self._ttl = ttl
        self._prefix = key_prefix

    def _key(self, uaid: str) -> str:
        return f"{self._prefix}{_KEY_TAG}{uaid}"

    # -- the asynchronous API (reactor thread) --------------------------------

    def set_node(
        self, uaid: str, node_url: str, connected_at: int, fresh: bool = False
    ) -> Deferred[NodeEntry | None]:
        """Replace the entry with a compare-and-set loop; fire with the replaced entry.

        ``fresh`` (a UAID this node has just made): try ``add`` first, which
        saves the read and its round trip; when an entry exists after all,
        the loop replaces it as for any other UAID.
        """
        steps = self.set_node_steps(uaid, node_url, connected_at, fresh)
        return self._submit("directory_set", self._steps, steps)

    def set_node_steps(
        self, uaid: str, node_url: str, connected_at: int, fresh: bool = False
    ) -> Steps[NodeEntry | None]:
        """``set_node`` as steps, for a job of the storage sharing this client."""
        entry = NodeEntry(node_url=node_url, connected_at=connected_at)
        expire = memcached_expire(self._ttl, self._clock.seconds())
        return self.set_steps(self._key(uaid), entry, expire, fresh)

    def get_node(self, uaid: str) -> Deferred[NodeEntry | None]:
        """Fire with the entry or None."""
        return self._submit("directory_get", self._steps, self.get_steps(self._key(uaid)))

    def clear_node(self, uaid: str, entry: NodeEntry) -> Deferred[bool]:
        """Replace the entry by a tombstone if, and only if, it still equals ``entry``."""
        steps = self.clear_steps(self._key(uaid), entry)
        return self._submit("directory_clear", self._steps, steps)

    # -- the operations (steps, run on the storage pool) ------------------------

    def set_steps(
        self, key: str, entry: NodeEntry, expire: int, fresh: bool = False
    ) -> Steps[NodeEntry | None]:
        """``set_node`` as steps (``fresh``: ``add`` before any read)."""
        value = entry.encode()
        if fresh and (yield Store(b"add", key, value, expire)):
            return None
        for _ in range(_CAS_ATTEMPTS):
            current, cas = yield Get(key)
            if current is None:
                if (yield Store(b"add", key, value, expire)):
                    return None
                continue  # another node added it first: read it and replace it
            try:
                previous = _decode_entry(current)
            except StorageUnavailable:
                previous = None  # a corrupt entry is simply replaced
            if (yield Store(b"cas", key, value, expire, cas)):
                return previous
        raise StorageUnavailable("memcached: directory entry contended, giving up")

    def get_steps(self, key: str) -> Steps[NodeEntry | None]:
        """``get_node`` as steps."""
        current, _ = yield Get(key)
        return _decode_entry(current)

    def clear_steps(self, key: str, entry: NodeEntry) -> Steps[bool]:
        """``clear_node`` as steps."""
        current, cas = yield Get(key)
        if current is None or _decode_entry(current) != entry:
            return False
        # No conditional delete in the text protocol: overwrite with a
        # tombstone, only if nobody wrote in between.
        return bool((yield Store(b"cas", key, _TOMBSTONE, _TOMBSTONE_TTL, cas)))
