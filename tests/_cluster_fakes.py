"""Test doubles for cluster tests: routed sessions, fake nodes behind ``StubTreq``,
hung and refusing nodes, and a recording metrics object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.cluster.directory import MemoryDirectory
from pushtwisted.cluster.router import Router
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.registry import ClientRegistry
from pushtwisted.web.internal import InternalResource
from tests.fakes import RecordingMetrics

__all__ = [
    "SECRET",
    "FakeSession",
    "HungResource",
    "Network",
    "RecordingMetrics",
    "FakeNode",
]

SECRET = "a-shared-cluster-secret"


class FakeSession:
    """A connected session that records what the router and the listener ask of it."""

    def __init__(self, connected_at: int | None = 1000, *, accept: bool = True) -> None:
        self.connected_at = connected_at
        self.accept = accept
        self.delivered: list[tuple[str, int, str | None]] = []
        self.checks = 0
        self.replaced_count = 0
        self.check_result: Deferred[None] = succeed(None)
        self.explode = False

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        if self.explode:
            raise RuntimeError("boom")
        if self.accept:
            self.delivered.append((channel_id, version, data))
        return self.accept

    def check_storage(self) -> Deferred[None]:
        if self.explode:
            raise RuntimeError("boom")
        self.checks += 1
        return self.check_result

    def replaced(self) -> None:
        self.replaced_count += 1


class HungResource(Resource):
    """A node that accepts requests and never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class Network:
    """An ``HTTPClient`` that sends each request to the fake node named by its URL.

    Hosts in ``refusing`` fail at once with ``ConnectionRefusedError``; hosts
    with no node fail the same way.  ``sent`` records ``(method, url)``.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, StubTreq] = {}
        self.refusing: set[str] = set()
        self.sent: list[tuple[str, str]] = []
        self.failure: Callable[[], Exception] | None = None

    def add(self, url: str, resource: Resource) -> StubTreq:
        stub = StubTreq(resource)
        self.nodes[urlsplit(url).netloc] = stub
        return stub

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.sent.append((method, url))
        netloc = urlsplit(url).netloc
        if self.failure is not None:
            return fail(self.failure())
        stub = self.nodes.get(netloc)
        if stub is None or netloc in self.refusing:
            return fail(ConnectionRefusedError("refused"))
        d: Deferred[Any] = stub.request(method, url, **kwargs)
        return d

    def flush(self) -> None:
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
        directory: MemoryDirectory,
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
