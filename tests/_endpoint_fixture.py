"""The node the endpoint test modules build: memory storage on a fake clock, one user id.

``NodeFixture`` is not a test case by itself (trial collects only what a
test module defines or imports as a ``TestCase``); each module mixes it
into its own base class and registers the channel it needs.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from twisted.internet.task import Clock

from pushtwisted.config import Config
from pushtwisted.node import Node
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import Router
from pushtwisted.storage.interface import Storage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import RecordingMetrics, make_node
from pushtwisted.tokens import EndpointCrypto, generate_key

__all__ = ["NodeFixture"]


class NodeFixture:
    """``setUp`` builds the parts of a ``Node``; ``node()`` puts them together.

    :cvar now: the clock's time when the test starts.
    """

    now: float = 1_700_000_000.0
    router: Router | None

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.clock = Clock()
        self.clock.advance(self.now)
        self.storage: Storage = MemoryStorage(self.clock)
        self.registry: ClientRegistry[Any] = ClientRegistry()
        self.crypto = EndpointCrypto([generate_key()])
        self.metrics = RecordingMetrics()
        self.config = Config()
        self.router = None
        self.uaid = uuid.uuid4().hex
        self.chid = uuid.uuid4().hex

    def endpoint_config(self, **changes: Any) -> None:
        """Replace fields of the ``[endpoint]`` section of ``self.config``."""
        self.config = dataclasses.replace(
            self.config, endpoint=dataclasses.replace(self.config.endpoint, **changes)
        )

    def node(self, **changes: Any) -> Node:
        """A ``Node`` of this fixture's parts (``changes`` replace some of its fields)."""
        node = make_node(
            config=self.config,
            storage=self.storage,
            registry=self.registry,
            crypto=self.crypto,
            clock=self.clock,
            metrics=self.metrics,
            router=self.router,
        )
        return dataclasses.replace(node, **changes) if changes else node
