"""Tests for ``pushtwisted.cluster.router``: one test per row of the decision table.

Nodes are ``FakeNode``s sharing a ``MemoryDirectory``, a ``task.Clock`` and a
``Network`` that sends each request, through ``StubTreq``, to the
``InternalResource`` of the node named by the URL (so every request is
really signed and verified).  A hung node is a resource that never answers;
a dead node is a host whose requests fail with ``ConnectionRefusedError``.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from pushtwisted.cluster.directory import NodeEntry
from pushtwisted.cluster.router import RouteOutcome, Router
from pushtwisted.cluster.signing import RequestSigner
from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage.interface import StoredMessage
from pushtwisted.testing import FakeSession
from pushtwisted.testing.cluster import FakeNode, HungResource, MemoryDirectory, Network
from pushtwisted.web.internal import InternalResource

A = "http://10.0.0.1:3000"
B = "http://10.0.0.2:3000"
C = "http://10.0.0.3:3000"
NOW = 1_700_000_000.0


class FlakyDirectory(MemoryDirectory):
    """A ``MemoryDirectory`` whose calls can fail, or run a hook before answering."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_get = 0
        self.fail_set = False
        self.fail_clear = False
        self.before_get: list[Any] = []
        self.gets = 0
        #: ``fresh`` of each ``set_node``.
        self.fresh: list[bool] = []

    def get_node(self, uaid: str) -> Deferred[NodeEntry | None]:
        self.gets += 1
        if self.before_get:
            self.before_get.pop(0)()
        if self.fail_get:
            self.fail_get -= 1
            return fail(StorageUnavailable("down"))
        return super().get_node(uaid)

    def set_node(
        self, uaid: str, node_url: str, connected_at: int, fresh: bool = False
    ) -> Deferred[NodeEntry | None]:
        self.fresh.append(fresh)
        if self.fail_set:
            return fail(StorageUnavailable("down"))
        return super().set_node(uaid, node_url, connected_at, fresh)

    def clear_node(self, uaid: str, entry: NodeEntry) -> Deferred[bool]:
        if self.fail_clear:
            return fail(StorageUnavailable("down"))
        return super().clear_node(uaid, entry)


class RouterTestCase(SynchronousTestCase):
    """Three fake nodes A, B, C; this node is A."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.directory = FlakyDirectory()
        self.network = Network()
        self.a = FakeNode(A, directory=self.directory, network=self.network, clock=self.clock)
        self.b = FakeNode(B, directory=self.directory, network=self.network, clock=self.clock)
        self.c = FakeNode(C, directory=self.directory, network=self.network, clock=self.clock)
        self.uaid = uuid.uuid4().hex

    def route(self, router: Router | None = None) -> RouteOutcome:
        d = Deferred.fromCoroutine((router or self.a.router).route(self.uaid, "chan", 7, "payload"))
        self.network.flush()
        outcome: RouteOutcome = self.successResultOf(d)
        return outcome

    def hold(self, node: FakeNode, connected_at: int = 1000, **kwargs: Any) -> FakeSession:
        """Connect a session for the UAID on ``node`` and write its directory entry."""
        session = FakeSession(connected_at, **kwargs)
        node.connect(self.uaid, session)
        self.successResultOf(self.directory.set_node(self.uaid, node.url, connected_at))
        return session

    def entry(self) -> NodeEntry | None:
        entry: NodeEntry | None = self.successResultOf(self.directory.get_node(self.uaid))
        return entry


class RouteTests(RouterTestCase):
    """``Router.route`` follows the decision table."""

    def test_local(self) -> None:
        """Step 1: a session here takes the update: LOCAL, no directory read."""
        session = self.hold(self.a)
        self.assertIs(self.route(), RouteOutcome.LOCAL)
        self.assertEqual(session.delivered, [("chan", 7, "payload")])
        self.assertEqual(self.directory.gets, 0)
        self.assertEqual(self.a.metrics.count("route_outcomes", outcome="local"), 1)

    def test_local_refuses_then_remote(self) -> None:
        """A local session that is closing does not stop the directory lookup."""
        self.a.connect(self.uaid, FakeSession(accept=False))
        remote = self.hold(self.b)
        self.assertIs(self.route(), RouteOutcome.REMOTE)
        self.assertEqual(remote.delivered, [("chan", 7, "payload")])

    def test_local_explodes(self) -> None:
        """A local session that raises is logged, and routing goes on."""
        session = FakeSession()
        session.explode = True
        self.a.connect(self.uaid, session)
        self.assertIs(self.route(), RouteOutcome.NOT_CONNECTED)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_deliver_is_bool(self) -> None:
        """``deliver`` fires True exactly for LOCAL and REMOTE."""
        self.hold(self.a)

        def deliver(uaid: str) -> bool:
            d = Deferred.fromCoroutine(self.a.router.deliver(uaid, "c", 1, None))
            return self.successResultOf(d)

        self.assertTrue(deliver(self.uaid))
        self.assertFalse(deliver(uuid.uuid4().hex))

    def test_not_connected(self) -> None:
        """Step 4b: no entry before or after the re-read: NOT_CONNECTED, nothing sent."""
        self.assertIs(self.route(), RouteOutcome.NOT_CONNECTED)
        self.assertEqual(self.directory.gets, 2)
        self.assertEqual(self.network.sent, [])

    def test_directory_failure(self) -> None:
        """Step 2: the directory read fails: DIRECTORY_FAILED (the update is stored)."""
        self.directory.fail_get = 1
        self.assertIs(self.route(), RouteOutcome.DIRECTORY_FAILED)
        self.assertEqual(self.a.metrics.count("directory_errors", operation="get"), 1)

    def test_directory_failure_on_reread(self) -> None:
        """A failed re-read is DIRECTORY_FAILED too."""
        self.directory.before_get = [lambda: None, lambda: setattr(self.directory, "fail_get", 1)]
        self.assertIs(self.route(), RouteOutcome.DIRECTORY_FAILED)

    def test_remote(self) -> None:
        """Step 3a: B holds the UAID and takes the update over a signed PUT: REMOTE."""
        session = self.hold(self.b)
        self.assertIs(self.route(), RouteOutcome.REMOTE)
        self.assertEqual(session.delivered, [("chan", 7, "payload")])
        self.assertEqual(self.network.sent, [("PUT", f"{B}/push/{self.uaid}")])
        self.assertEqual(self.a.metrics.count("router_requests", kind="push", result="ok"), 1)
        self.assertEqual(self.b.metrics.count("router_received", kind="push", status="200"), 1)

    def test_remote_without_data(self) -> None:
        """An update without data arrives without data."""
        session = self.hold(self.b)
        d = Deferred.fromCoroutine(self.a.router.route(self.uaid, "chan", 8, None))
        self.network.flush()
        self.assertIs(self.successResultOf(d), RouteOutcome.REMOTE)
        self.assertEqual(session.delivered, [("chan", 8, None)])

    def test_remote_not_here(self) -> None:
        """Step 3b: B answers 404 and nothing changed: NODE_FAILED, the entry is kept."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.assertIs(self.route(), RouteOutcome.NODE_FAILED)
        self.assertEqual(self.entry(), NodeEntry(node_url=B, connected_at=1000))
        self.assertEqual(
            self.a.metrics.count("router_requests", kind="push", result="not_found"), 1
        )

    def test_remote_moved(self) -> None:
        """Steps 3b + 4a: B says 404 because the device moved to C: C checks storage."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        moved = FakeSession(2000)
        self.c.connect(self.uaid, moved)

        def device_moves() -> None:
            self.directory.set_node(self.uaid, C, 2000)

        # The device's hello on C lands between A's first read and the re-read.
        self.directory.before_get = [lambda: None, device_moves]
        self.assertIs(self.route(), RouteOutcome.NOTIFIED)
        self.assertEqual(moved.checks, 1)
        self.assertEqual(moved.delivered, [])
        self.assertEqual(
            self.network.sent, [("PUT", f"{B}/push/{self.uaid}"), ("PUT", f"{C}/notif/{self.uaid}")]
        )

    def test_appeared_after_first_read(self) -> None:
        """Step 4a: no entry at first, a node on the re-read: it is told to check storage."""
        session = FakeSession(2000)
        self.b.connect(self.uaid, session)
        self.directory.before_get = [
            lambda: None,
            lambda: self.directory.set_node(self.uaid, B, 2000),
        ]
        self.assertIs(self.route(), RouteOutcome.NOTIFIED)
        self.assertEqual(session.checks, 1)

    def test_appeared_here(self) -> None:
        """Step 4a on this node: the local session is told to check storage directly."""
        session = FakeSession(2000)

        def hello_here() -> None:
            self.a.connect(self.uaid, session)
            self.directory.set_node(self.uaid, A, 2000)

        self.directory.before_get = [lambda: None, hello_here]
        self.assertIs(self.route(), RouteOutcome.NOTIFIED)
        self.assertEqual(session.checks, 1)
        self.assertEqual(self.network.sent, [])

    def test_appeared_here_check_fails(self) -> None:
        """A local ``check_storage`` that fails is logged; the update stays stored."""
        session = FakeSession(2000)
        session.check_result = fail(StorageUnavailable("down"))

        def hello_here() -> None:
            self.a.connect(self.uaid, session)
            self.directory.set_node(self.uaid, A, 2000)

        self.directory.before_get = [lambda: None, hello_here]
        self.assertIs(self.route(), RouteOutcome.NOTIFIED)
        self.assertEqual(len(self.flushLoggedErrors(StorageUnavailable)), 1)

    def test_own_entry_without_session(self) -> None:
        """This node's entry but no session (a hello in progress here): nothing is sent."""
        self.successResultOf(self.directory.set_node(self.uaid, A, 1000))
        self.assertIs(self.route(), RouteOutcome.NOT_CONNECTED)
        self.assertEqual(self.network.sent, [])

    def test_own_entry_appears_without_session(self) -> None:
        """This node's entry appears on the re-read before its session is ready: no-op."""
        self.directory.before_get = [lambda: None, lambda: self.directory.set_node(self.uaid, A, 5)]
        self.assertIs(self.route(), RouteOutcome.NOTIFIED)
        self.assertEqual(self.network.sent, [])

    def test_dead_node_entry_cleared(self) -> None:
        """Step 3c: B refuses connections: its unchanged entry is cleared; 202."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.refusing.add("10.0.0.2:3000")
        self.assertIs(self.route(), RouteOutcome.NODE_FAILED)
        self.assertIsNone(self.entry())
        self.assertEqual(
            self.a.metrics.count("router_requests", kind="push", result="unreachable"), 1
        )

    def test_dead_node_entry_replaced_meanwhile(self) -> None:
        """Step 3c + 4a: the device reconnected to C before the clear: C is kept and told."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        session = FakeSession(3000)
        self.c.connect(self.uaid, session)
        self.network.refusing.add("10.0.0.2:3000")
        original = self.network.request

        def request(method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            if url.startswith(B):
                # The device says hello on C while A's forward to B fails.
                self.directory.set_node(self.uaid, C, 3000)
            return original(method, url, **kwargs)

        self.network.request = request  # type: ignore[method-assign]
        self.assertIs(self.route(), RouteOutcome.NOTIFIED)
        self.assertEqual(self.entry(), NodeEntry(node_url=C, connected_at=3000))
        self.assertEqual(session.checks, 1)

    def test_dead_node_clear_fails(self) -> None:
        """A failing clear is logged; the answer is still 202."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.refusing.add("10.0.0.2:3000")
        self.directory.fail_clear = True
        self.assertIs(self.route(), RouteOutcome.NODE_FAILED)
        self.assertEqual(self.a.metrics.count("directory_errors", operation="clear"), 1)

    def test_builtin_refused_counts_as_unreachable(self) -> None:
        """Python's own ``ConnectionRefusedError`` is unreachable too."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.failure = lambda: ConnectionRefusedError(111, "refused")
        self.assertIs(self.route(), RouteOutcome.NODE_FAILED)
        self.assertIsNone(self.entry())

    def test_other_error_keeps_entry(self) -> None:
        """Step 3d: a request that fails otherwise (connection lost) keeps the entry."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.failure = lambda: ResponseNeverReceived([])
        self.assertIs(self.route(), RouteOutcome.NODE_FAILED)
        self.assertEqual(self.entry(), NodeEntry(node_url=B, connected_at=1000))
        self.assertEqual(self.a.metrics.count("router_requests", kind="push", result="error"), 1)

    def test_unexpected_status(self) -> None:
        """Step 3d: a status other than 200/404 is an error; the entry is kept."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        # B has another secret: it answers 401.
        other = RequestSigner("another-secret", clock=self.clock)
        self.network.add(B, InternalResource(self.b.registry, other, self.b.metrics, self.clock))
        self.assertIs(self.route(), RouteOutcome.NODE_FAILED)
        self.assertEqual(self.entry(), NodeEntry(node_url=B, connected_at=1000))
        self.assertEqual(self.a.metrics.count("router_requests", kind="push", result="error"), 1)

    def test_hung_node(self) -> None:
        """Step 3d: B never answers: after ``timeout`` the answer is 202, entry kept."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        hung = HungResource()
        self.network.add(B, hung)
        d = Deferred.fromCoroutine(self.a.router.route(self.uaid, "chan", 7, None))
        self.network.flush()
        self.assertNoResult(d)
        self.assertEqual(len(hung.requests), 1)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertIs(self.successResultOf(d), RouteOutcome.NODE_FAILED)
        self.assertEqual(self.entry(), NodeEntry(node_url=B, connected_at=1000))
        self.assertEqual(self.a.metrics.count("router_requests", kind="push", result="timeout"), 1)

    def test_hung_node_on_notify(self) -> None:
        """A hung node told to check storage does not hold the answer past the timeout."""
        self.network.add(B, HungResource())
        self.directory.before_get = [lambda: None, lambda: self.directory.set_node(self.uaid, B, 9)]
        d = Deferred.fromCoroutine(self.a.router.route(self.uaid, "chan", 7, None))
        self.network.flush()
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.assertIs(self.successResultOf(d), RouteOutcome.NOTIFIED)

    def test_latency_observed(self) -> None:
        """Each node request records its latency by kind."""
        self.hold(self.b)
        self.route()
        observed = [e for e in self.a.metrics.events if e[1] == "router_latency_seconds"]
        self.assertEqual(len(observed), 1)
        self.assertEqual(observed[0][3], {"kind": "push"})

    def test_bad_timeout(self) -> None:
        """A non-positive timeout is a ``ValueError``."""
        with self.assertRaises(ValueError):
            Router(
                node_url=A,
                directory=self.directory,
                registry=self.a.registry,
                http=self.network,
                signer=self.a.signer,
                clock=self.clock,
                timeout=0,
                metrics=self.a.metrics,
            )


class HelloTests(RouterTestCase):
    """``on_hello`` writes the directory and kicks the previous node's socket."""

    def test_first_hello(self) -> None:
        """A first hello writes this node's entry and sends nothing."""
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.assertEqual(self.entry(), NodeEntry(node_url=A, connected_at=5000))
        self.assertEqual(self.network.sent, [])

    def test_takeover_kicks_previous_node(self) -> None:
        """A hello here while B holds the UAID makes B close its (older) socket."""
        old = self.hold(self.b, connected_at=1000)
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.network.flush()
        self.assertEqual(self.entry(), NodeEntry(node_url=A, connected_at=5000))
        self.assertEqual(self.network.sent, [("DELETE", f"{B}/notif/{self.uaid}/1000")])
        self.assertEqual(old.replaced_count, 1)
        self.assertEqual(self.a.metrics.count("router_requests", kind="kick", result="ok"), 1)

    def test_kick_spares_newer_socket(self) -> None:
        """A kick naming an older connection leaves B's newer socket for the UAID open."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        newer = FakeSession(4000)  # reconnected to B after B's entry was read
        self.b.connect(self.uaid, newer)
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.network.flush()
        self.assertEqual(newer.replaced_count, 0)
        self.assertEqual(
            self.a.metrics.count("router_requests", kind="kick", result="not_found"), 1
        )

    def test_same_node_no_kick(self) -> None:
        """A previous entry of this node sends nothing (the registry closes the old one)."""
        self.successResultOf(self.directory.set_node(self.uaid, A, 1000))
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.assertEqual(self.network.sent, [])

    def test_kick_to_dead_node(self) -> None:
        """A kick that cannot reach the dead previous node does not fail the hello."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.refusing.add("10.0.0.2:3000")
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.assertEqual(self.entry(), NodeEntry(node_url=A, connected_at=5000))

    def test_kick_hung_node_does_not_delay_hello(self) -> None:
        """The kick runs in the background: the hello does not wait for a hung node."""
        self.successResultOf(self.directory.set_node(self.uaid, B, 1000))
        self.network.add(B, HungResource())
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.network.flush()
        self.clock.advance(2.0)
        self.assertEqual(self.a.metrics.count("router_requests", kind="kick", result="timeout"), 1)

    def test_directory_failure(self) -> None:
        """A failed directory write fails the hello (the session answers 503)."""
        self.directory.fail_set = True
        self.failureResultOf(self.a.router.on_hello(self.uaid, 5000), StorageUnavailable)


class ClaimTests(RouterTestCase):
    """``claim``: the hello's directory write for ``Storage.open_user``."""

    def test_run_is_on_hello(self) -> None:
        """``run`` writes this node's entry and kicks the previous node, as ``on_hello``."""
        old = self.hold(self.b, connected_at=1000)
        self.successResultOf(self.a.router.claim(5000).run(self.uaid))
        self.network.flush()
        self.assertEqual(self.entry(), NodeEntry(node_url=A, connected_at=5000))
        self.assertEqual(old.replaced_count, 1)

    def test_no_steps_from_a_memory_directory(self) -> None:
        """A directory without memcached steps gives none: the storage runs ``run``."""
        self.assertIsNone(self.a.router.claim(5000).steps(self.uaid))

    def test_landed_kicks_the_replaced_entry(self) -> None:
        """``landed`` with the entry the steps replaced kicks that node's socket, and
        only when it is another node's."""
        old = self.hold(self.b, connected_at=1000)
        claim = self.a.router.claim(5000)
        claim.landed(self.uaid, NodeEntry(node_url=A, connected_at=900))
        claim.landed(self.uaid, None)
        self.assertEqual(self.network.sent, [])
        claim.landed(self.uaid, NodeEntry(node_url=B, connected_at=1000))
        self.network.flush()
        self.assertEqual(self.network.sent, [("DELETE", f"{B}/notif/{self.uaid}/1000")])
        self.assertEqual(old.replaced_count, 1)


class DisconnectTests(RouterTestCase):
    """``on_disconnect`` clears this node's entry only while it is still its own."""

    def test_clears_own_entry(self) -> None:
        """The closing connection's own entry is cleared."""
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.assertTrue(self.successResultOf(self.a.router.on_disconnect(self.uaid, 5000)))
        self.assertIsNone(self.entry())

    def test_keeps_newer_entry(self) -> None:
        """An entry rewritten by a newer hello (here or elsewhere) is kept."""
        self.successResultOf(self.a.router.on_hello(self.uaid, 5000))
        self.successResultOf(self.directory.set_node(self.uaid, B, 6000))
        self.assertFalse(self.successResultOf(self.a.router.on_disconnect(self.uaid, 5000)))
        self.assertEqual(self.entry(), NodeEntry(node_url=B, connected_at=6000))
        self.successResultOf(self.a.router.on_hello(self.uaid, 7000))
        self.assertFalse(self.successResultOf(self.a.router.on_disconnect(self.uaid, 5000)))
        self.assertEqual(self.entry(), NodeEntry(node_url=A, connected_at=7000))

    def test_directory_failure_is_logged(self) -> None:
        """A failing clear fires False and is counted, never errbacks."""
        self.directory.fail_clear = True
        self.assertFalse(self.successResultOf(self.a.router.on_disconnect(self.uaid, 5000)))
        self.assertEqual(self.a.metrics.count("directory_errors", operation="clear"), 1)


def _message(ttl: int = 60, **changes: Any) -> StoredMessage:
    fields: dict[str, Any] = {
        "chid": "fedcba9876543210fedcba9876543210",
        "channel_id": "FEDCBA98-7654-3210-FEDC-BA9876543210",
        "seq": (1 << 63) | 5 if ttl == 0 else 1_700_000_000_000_001,
        "ttl": ttl,
        "stored_at": NOW,
        "topic": "t1",
        "data": "c2VjcmV0",
        "headers": {"encoding": "aesgcm", "encryption": "salt=abc", "crypto_key": "dh=xyz"},
    }
    fields.update(changes)
    return StoredMessage(**fields)


class MessageRouteTests(RouterTestCase):
    """``Router.route_message``: WebPush messages follow the same decision table."""

    def route_message(self, message: StoredMessage) -> RouteOutcome:
        d = Deferred.fromCoroutine(self.a.router.route_message(self.uaid, message))
        self.network.flush()
        outcome: RouteOutcome = self.successResultOf(d)
        return outcome

    def test_local(self) -> None:
        """Step 1: a session here takes the message: LOCAL, no directory read."""
        session = self.hold(self.a)
        message = _message()
        self.assertIs(self.route_message(message), RouteOutcome.LOCAL)
        self.assertEqual(session.messages, [message])
        self.assertEqual(self.directory.gets, 0)

    def test_remote(self) -> None:
        """Step 3a: B holds the UAID; the message crosses in a signed PUT, field for field."""
        session = self.hold(self.b)
        for message in (_message(), _message(ttl=0), _message(topic=None, data=None, headers={})):
            session.messages.clear()
            self.assertIs(self.route_message(message), RouteOutcome.REMOTE)
            self.assertEqual(session.messages, [message])
            self.assertEqual(session.delivered, [])
        self.assertEqual(self.b.metrics.count("router_received", kind="push", status="200"), 3)

    def test_deliver_message_is_bool(self) -> None:
        """``deliver_message`` fires True exactly when a live socket took it."""
        self.hold(self.b)
        d = Deferred.fromCoroutine(self.a.router.deliver_message(self.uaid, _message()))
        self.network.flush()
        self.assertTrue(self.successResultOf(d))
        d = Deferred.fromCoroutine(self.a.router.deliver_message(uuid.uuid4().hex, _message()))
        self.assertFalse(self.successResultOf(d))

    def test_remote_window_full(self) -> None:
        """B's session refuses (window full): NODE_FAILED; the stored message waits."""
        self.hold(self.b, accept=False)
        self.assertIs(self.route_message(_message()), RouteOutcome.NODE_FAILED)

    def test_not_connected(self) -> None:
        """No node holds the UAID: NOT_CONNECTED, nothing sent."""
        self.assertIs(self.route_message(_message(ttl=0)), RouteOutcome.NOT_CONNECTED)
        self.assertEqual(self.network.sent, [])

    def test_stored_message_appeared_elsewhere(self) -> None:
        """Step 4a, TTL > 0: the node that appeared is told to check storage."""
        session = FakeSession(2000)
        self.c.connect(self.uaid, session)
        self.directory.before_get = [
            lambda: None,
            lambda: self.directory.set_node(self.uaid, C, 2000),
        ]
        self.assertIs(self.route_message(_message()), RouteOutcome.NOTIFIED)
        self.assertEqual((session.checks, session.messages), (1, []))

    def test_ttl0_appeared_elsewhere(self) -> None:
        """Step 4a, TTL 0 (not in storage): the message itself goes to the node that appeared."""
        session = FakeSession(2000)
        self.c.connect(self.uaid, session)
        self.directory.before_get = [
            lambda: None,
            lambda: self.directory.set_node(self.uaid, C, 2000),
        ]
        message = _message(ttl=0)
        self.assertIs(self.route_message(message), RouteOutcome.REMOTE)
        self.assertEqual((session.checks, session.messages), (0, [message]))
        self.assertEqual(self.network.sent, [("PUT", f"{C}/push/{self.uaid}")])

    def test_ttl0_moved_and_refused(self) -> None:
        """Step 4a, TTL 0: the node that appeared does not take it: NODE_FAILED (dropped)."""
        self.directory.before_get = [
            lambda: None,
            lambda: self.directory.set_node(self.uaid, C, 2000),
        ]
        self.assertIs(self.route_message(_message(ttl=0)), RouteOutcome.NODE_FAILED)

    def test_ttl0_appeared_here(self) -> None:
        """Step 4a, TTL 0, this node: its session gets the message (LOCAL)."""
        session = FakeSession(2000)

        def hello_here() -> None:
            self.a.connect(self.uaid, session)
            self.directory.set_node(self.uaid, A, 2000)

        self.directory.before_get = [lambda: None, hello_here]
        message = _message(ttl=0)
        self.assertIs(self.route_message(message), RouteOutcome.LOCAL)
        self.assertEqual((session.checks, session.messages), (0, [message]))

    def test_ttl0_own_entry_without_session(self) -> None:
        """Step 4a, TTL 0, this node but no session yet: NOT_CONNECTED (dropped)."""
        self.directory.before_get = [lambda: None, lambda: self.directory.set_node(self.uaid, A, 5)]
        self.assertIs(self.route_message(_message(ttl=0)), RouteOutcome.NOT_CONNECTED)
        self.assertEqual(self.network.sent, [])
