"""Test doubles for a cluster: a memory directory and fake nodes behind ``StubTreq``.

- ``MemoryDirectory``: a ``Directory`` in a dict (one process);
- ``Network``: the ``HTTPClient`` of a fake cluster, sending each request to
  the fake node its URL names (or refusing it);
- ``FakeNode``: one node of it, with a registry, a real ``Router`` and its
  router listener resource;
- ``HungResource``: a node that accepts requests and never answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.cluster.directory import Directory, NodeEntry
from pushtwisted.cluster.router import Router
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.registry import ClientRegistry
from pushtwisted.testing import FakeSession, RecordingMetrics
from pushtwisted.web.internal import InternalResource

__all__ = ["SECRET", "FakeNode", "HungResource", "MemoryDirectory", "Network"]

#: The shared secret of every ``FakeNode``.
SECRET = "a-shared-cluster-secret"


class MemoryDirectory:
    """A ``Directory`` in a dict: one process only."""

    def __init__(self) -> None:
        self._entries: dict[str, NodeEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def set_node(
        self, uaid: str, node_url: str, connected_at: int, fresh: bool = False
    ) -> Deferred[NodeEntry | None]:
        """Replace the entry; fire with the previous one (``fresh`` changes nothing here)."""
        previous = self._entries.get(uaid)
        self._entries[uaid] = NodeEntry(node_url=node_url, connected_at=connected_at)
        return succeed(previous)

    def get_node(self, uaid: str) -> Deferred[NodeEntry | None]:
        """Fire with the entry or None."""
        return succeed(self._entries.get(uaid))

    def set_node_steps(self, uaid: str, node_url: str, connected_at: int) -> None:
        """None: a dict has no memcached steps (hellos use ``set_node``)."""

    def clear_node(self, uaid: str, entry: NodeEntry) -> Deferred[bool]:
        """Remove the entry if it equals ``entry``."""
        if self._entries.get(uaid) == entry:
            del self._entries[uaid]
            return succeed(True)
        return succeed(False)


class HungResource(Resource):
    """A node that accepts requests and never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.requests: list[Any] = []

    def render(self, request: Any) -> int:
        """Keep the request, answer nothing."""
        self.requests.append(request)
        return NOT_DONE_YET


class Network:
    """An ``HTTPClient`` that sends each request to the fake node named by its URL.

    Hosts in ``refusing``, and hosts with no node, fail at once with
    ``ConnectionRefusedError``; ``failure``, when set, makes every request
    fail with what it returns.  ``sent`` records ``(method, url)``.
    """

    def __init__(self) -> None:
        #: A ``StubTreq`` per node host (treq types it loosely).
        self.nodes: dict[str, Any] = {}
        self.refusing: set[str] = set()
        self.sent: list[tuple[str, str]] = []
        self.failure: Callable[[], Exception] | None = None

    def add(self, url: str, resource: Resource) -> Any:
        """Serve the node at ``url`` with ``resource``; return its ``StubTreq``."""
        stub = StubTreq(resource)  # type: ignore[no-untyped-call]
        self.nodes[urlsplit(url).netloc] = stub
        return stub

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Send the request to its node."""
        self.sent.append((method, url))
        netloc = urlsplit(url).netloc
        if self.failure is not None:
            return fail(self.failure())
        stub = self.nodes.get(netloc)
        if stub is None or netloc in self.refusing:
            return fail(ConnectionRefusedError("refused"))  # type: ignore[no-untyped-call]
        d: Deferred[Any] = stub.request(method, url, **kwargs)
        return d

    def flush(self) -> None:
        """Let every node's ``StubTreq`` deliver what it holds."""
        for stub in self.nodes.values():
            stub.flush()


class FakeNode:
    """One node of a fake cluster: registry, router, and router listener resource.

    Every node shares ``directory``, ``network`` and ``clock``.
    """

    def __init__(
        self,
        url: str,
        *,
        directory: Directory,
        network: Network,
        clock: Clock,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.registry: ClientRegistry[Any] = ClientRegistry()
        self.metrics = RecordingMetrics()
        self.signer = RequestSigner(SECRET, clock=clock)
        self.resource = InternalResource(self.registry, self.signer, self.metrics, clock)
        self.router = Router(
            node_url=url,
            directory=directory,
            registry=self.registry,
            http=network,
            signer=self.signer,
            clock=clock,
            timeout=timeout,
            metrics=self.metrics,
        )
        network.add(url, self.resource)

    def connect(self, uaid: str, session: FakeSession) -> None:
        """Put ``session`` in this node's registry for ``uaid``."""
        self.registry.add(uaid, session)


if TYPE_CHECKING:
    from pushtwisted.cluster.directory import Directory
    from pushtwisted.cluster.router import HTTPClient

    _directory: Directory = MemoryDirectory()
    _network: HTTPClient = Network()
