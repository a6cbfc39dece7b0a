"""``Node``: the collaborators one pushtwisted process shares.

Sessions (one per WebSocket) and the endpoint resource both hold a reference
to the one ``Node`` built by ``tap.build_service``, so that per-connection
objects stay small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from pushtwisted.config import Config
from pushtwisted.metrics import Metrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import Router
from pushtwisted.storage.interface import Storage
from pushtwisted.tokens import EndpointCrypto

__all__ = ["Node"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """Shared state and services of one node.

    :ivar config: the validated configuration.
    :ivar storage: the store of users, channels and pending updates.
    :ivar registry: connected sessions by UAID (normal form).
    :ivar crypto: endpoint token issuer and parser.
    :ivar clock: the reactor's time (``task.Clock`` in tests).
    :ivar metrics: where events are counted.
    :ivar router: delivers stored updates: a ``LocalRouter`` over ``registry``,
        or the cluster's router when ``[router] listen`` is set.
    """

    config: Config
    storage: Storage
    registry: ClientRegistry[Any]
    crypto: EndpointCrypto
    clock: IReactorTime
    metrics: Metrics
    router: Router

    def endpoint_url(self, uaid: str, chid: str) -> str:
        """Return the pushEndpoint URL for a channel (IDs in normal form)."""
        base = self.config.endpoint.public_url.rstrip("/")
        return f"{base}/update/{self.crypto.make_token(uaid, chid)}"

    def webpush_endpoint_url(self, uaid: str, chid: str, key_hash: bytes | None = None) -> str:
        """Return the WebPush pushEndpoint URL for a channel (IDs in normal form).

        ``/wpush/v2/{token}`` when ``key_hash`` (the SHA-256 of the register's
        ``key``) is given, restricting the endpoint to that VAPID key; else
        ``/wpush/v1/{token}``.
        """
        base = self.config.endpoint.public_url.rstrip("/")
        version = "v1" if key_hash is None else "v2"
        token = self.crypto.make_webpush_token(uaid, chid, key_hash)
        return f"{base}/wpush/{version}/{token}"
