"""Tests for ``pushtwisted.web.endpoint`` in a cluster: live delivery through ``node.router``.

``pushtwisted.testing.FakeRouter`` stands for the node's router (answers,
failures, a pending answer); ``ClusterEndpointTests`` wires a real cluster
``Router`` over the fake nodes of ``pushtwisted.testing.cluster``, so a PUT
reaches a session on another node through a signed ``PUT /push/<uaid>``.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage.interface import PendingUpdate
from pushtwisted.testing import FakeRouter, FakeSession
from pushtwisted.testing.cluster import FakeNode, MemoryDirectory, Network
from pushtwisted.web.endpoint import build_endpoint_root
from tests import test_endpoint

A = "http://10.0.0.1:3000"
B = "http://10.0.0.2:3000"


class RouterEndpointTests(test_endpoint.EndpointTestCase):
    """With ``node.router`` set, the endpoint stores, then asks the router to deliver."""

    def setUp(self) -> None:
        super().setUp()
        self.router = FakeRouter()
        #: What storage held for the UAID at each ``deliver`` call.
        self.pending_at_call: list[list[PendingUpdate]] = []
        self.router.on_deliver = lambda: self.pending_at_call.append(self.pending())
        # A session here must be reached through the router, not directly.
        self.local = FakeSession()
        self.registry.add(self.uaid, self.local)

    def put_routed(self, **kwargs: Any) -> tuple[Any, bytes]:
        stub = StubTreq(build_endpoint_root(self.node(router=self.router)))
        return self.put(stub=stub, **kwargs)

    def test_delivered_is_200(self) -> None:
        """The router confirming a live socket took the update is 200; the update was
        stored before the router was asked, with the client's channel ID spelling."""
        response, body = self.put_routed(data={"version": "7", "data": "hi"})
        self.assertJSON(response, body, 200, {})
        self.assertEqual(self.router.delivered, [(self.uaid, self.channel_id, 7, "hi")])
        self.assertEqual(
            self.pending_at_call,
            [[PendingUpdate(channel_id=self.channel_id, version=7, data="hi")]],
        )
        self.assertEqual(self.local.delivered, [])
        # Counted by the session on the node that wrote it, not here.
        self.assertEqual(self.metrics.count("notifications_delivered"), 0)
        self.assertEqual(self.metrics.count("notifications_stored"), 1)

    def test_not_delivered_is_202(self) -> None:
        """The router answering "not delivered" (no node, not there, timeout) is 202."""
        self.router.answer = False
        response, body = self.put_routed(data={"version": "7"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(self.pending()[0].version, 7)
        self.assertEqual(self.metrics.count("notifications_delivered"), 0)

    def test_router_failure_is_202(self) -> None:
        """A router that errbacks is logged and answered 202, never 5xx: it is stored."""
        self.router.answer = fail(RuntimeError("router broke"))
        response, body = self.put_routed(data={"version": "7"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.pending()[0].version, 7)

    def test_router_storage_error_is_202(self) -> None:
        """Even a ``StorageUnavailable`` from routing (the directory) is 202, not 503:
        the update itself was stored."""
        self.router.answer = fail(StorageUnavailable("directory down"))
        response, body = self.put_routed(data={"version": "7"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(len(self.flushLoggedErrors(StorageUnavailable)), 1)

    def test_router_raising_is_202(self) -> None:
        """A router whose ``deliver`` raises synchronously is answered 202 too."""
        self.router.answer = RuntimeError("router exploded")
        response, body = self.put_routed(data={"version": "7"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_answer_waits_for_router(self) -> None:
        """The answer is written only once the router has answered."""
        pending: Deferred[bool] = Deferred()
        self.router.answer = pending
        stub = StubTreq(build_endpoint_root(self.node(router=self.router)))
        d = stub.request("PUT", test_endpoint.BASE + "/update/" + self.token, data={"version": "3"})
        self.assertNoResult(d)
        self.assertEqual(self.pending()[0].version, 3)
        pending.callback(True)
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)

    def test_gone_is_not_routed(self) -> None:
        """A PUT to an unregistered channel is 410 and never reaches the router."""
        self.successResultOf(self.storage.unregister(self.uaid, self.chid))
        response, body = self.put_routed(data={"version": "7"})
        self.assertEqual(response.code, 410)
        self.assertEqual(self.router.delivered, [])

    def test_stale_is_not_routed(self) -> None:
        """With ``monotonic_versions``, a stale version is 200 and never reaches the router."""
        self.endpoint_config(monotonic_versions=True)
        self.put_routed(data={"version": "10"})
        response, body = self.put_routed(data={"version": "9"})
        self.assertJSON(response, body, 200, {})
        self.assertEqual([call[2] for call in self.router.delivered], [10])

    def test_store_data_off_still_routes_data(self) -> None:
        """With ``store_data`` off, storage gets no data but the routed update carries it."""
        self.storage_config(store_data=False)
        self.put_routed(data={"version": "5", "data": "secret"})
        self.assertEqual(self.router.delivered, [(self.uaid, self.channel_id, 5, "secret")])
        self.assertEqual(self.pending()[0].data, None)


class ClusterEndpointTests(test_endpoint.EndpointTestCase):
    """A real ``Router``: the endpoint of node A reaches a device connected to node B."""

    def setUp(self) -> None:
        super().setUp()
        self.directory = MemoryDirectory()
        self.network = Network()
        self.a = FakeNode(A, directory=self.directory, network=self.network, clock=self.clock)
        self.b = FakeNode(B, directory=self.directory, network=self.network, clock=self.clock)
        self.registry = self.a.registry
        self.stub = StubTreq(build_endpoint_root(self.node(router=self.a.router)))

    def put_via_a(self, version: int) -> int:
        d = self.stub.request(
            "PUT", f"{test_endpoint.BASE}/update/{self.token}", data={"version": str(version)}
        )
        self.network.flush()
        self.stub.flush()
        response = self.successResultOf(d)
        self.successResultOf(response.content())
        return int(response.code)

    def test_forwarded_to_other_node(self) -> None:
        """The device is on B: A forwards the stored update and answers 200."""
        session = FakeSession()
        self.b.connect(self.uaid, session)
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.assertEqual(self.put_via_a(4), 200)
        self.assertEqual(session.delivered, [(self.channel_id, 4, None)])
        self.assertEqual(self.pending()[0].version, 4)

    def test_local_session_through_router(self) -> None:
        """The device is on A itself: delivered without any node-to-node request."""
        session = FakeSession()
        self.a.connect(self.uaid, session)
        self.assertEqual(self.put_via_a(4), 200)
        self.assertEqual(session.delivered, [(self.channel_id, 4, None)])
        self.assertEqual(self.network.sent, [])

    def test_node_unreachable_is_202(self) -> None:
        """B refuses connections: 202, stored, and B's entry is cleared."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.refusing.add("10.0.0.2:3000")
        self.assertEqual(self.put_via_a(4), 202)
        self.assertEqual(self.pending()[0].version, 4)
        self.assertIsNone(self.successResultOf(self.directory.get_node(self.uaid)))

    def test_not_there_is_202(self) -> None:
        """The entry names B but B has no session for the UAID: 202, stored."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.assertEqual(self.put_via_a(4), 202)
        self.assertEqual(self.pending()[0].version, 4)

    def test_nobody_is_202(self) -> None:
        """No directory entry and no local session: 202 without any request."""
        self.assertEqual(self.put_via_a(4), 202)
        self.assertEqual(self.network.sent, [])
