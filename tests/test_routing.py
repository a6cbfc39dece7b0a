"""Tests for ``pushtwisted.routing.LocalRouter``: one test per row of its decision table."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.registry import ClientRegistry
from pushtwisted.routing import LocalRouter, Router
from pushtwisted.storage.interface import StoredMessage
from pushtwisted.testing import FakeSession

UAID = "0123456789abcdef0123456789abcdef"


class LocalRouterTests(SynchronousTestCase):
    """A node alone delivers to its own sessions only."""

    def setUp(self) -> None:
        self.registry: ClientRegistry[Any] = ClientRegistry()
        self.router = LocalRouter(self.registry)

    def deliver(self, uaid: str = UAID) -> bool:
        d = Deferred.fromCoroutine(self.router.deliver(uaid, "chan", 7, "payload"))
        return self.successResultOf(d)

    def test_is_a_router(self) -> None:
        """``LocalRouter`` satisfies the ``Router`` protocol (checked by mypy)."""
        router: Router = self.router
        self.assertIs(router, self.router)

    def test_session_takes_it(self) -> None:
        """Step 1: the session holding the UAID takes the update: delivered."""
        session = FakeSession()
        self.registry.add(UAID, session)
        self.assertTrue(self.deliver())
        self.assertEqual(session.delivered, [("chan", 7, "payload")])

    def test_newest_connection_takes_it(self) -> None:
        """Of two sessions for one UAID, the newer one (the registry's holder) gets it."""
        old, new = FakeSession(1000), FakeSession(2000)
        self.registry.add(UAID, old)
        self.registry.add(UAID, new)
        self.assertTrue(self.deliver())
        self.assertEqual((old.delivered, new.delivered), ([], [("chan", 7, "payload")]))
        self.assertEqual(old.replaced_count, 1)

    def test_no_session(self) -> None:
        """Step 2: no session holds the UAID: not delivered (it waits in storage)."""
        self.assertFalse(self.deliver())

    def test_session_refuses(self) -> None:
        """Step 2: a session that is not ready or closing refuses: not delivered."""
        session = FakeSession(accept=False)
        self.registry.add(UAID, session)
        self.assertFalse(self.deliver())

    def test_session_raises(self) -> None:
        """Step 2: a session whose ``deliver`` raises is logged: not delivered."""
        session = FakeSession()
        session.explode = True
        self.registry.add(UAID, session)
        self.assertFalse(self.deliver())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_deliver_here_is_synchronous(self) -> None:
        """``deliver_here`` answers at once, as the cluster router's first step."""
        session = FakeSession()
        self.registry.add(UAID, session)
        self.assertTrue(self.router.deliver_here(UAID, "c", 1, None))
        self.assertFalse(self.router.deliver_here("f" * 32, "c", 1, None))

    def test_hello_and_disconnect_do_nothing(self) -> None:
        """``on_hello`` completes at its first step; ``on_disconnect`` returns None."""
        hello = self.router.on_hello(UAID, 1000)
        with self.assertRaises(StopIteration) as done:
            hello.send(None)
        self.assertIsNone(done.exception.value)
        self.assertIsNone(self.router.on_disconnect(UAID, 1000))
        self.assertEqual(len(self.registry), 0)


MESSAGE = StoredMessage(
    chid="fedcba9876543210fedcba9876543210",
    channel_id="fedcba98-7654-3210-fedc-ba9876543210",
    seq=42,
    ttl=60,
    stored_at=1000.0,
    data="ZGF0YQ",
    headers={"encoding": "aes128gcm"},
)


class LocalRouterMessageTests(SynchronousTestCase):
    """``LocalRouter.deliver_message``: the same table for WebPush messages."""

    def setUp(self) -> None:
        self.registry: ClientRegistry[Any] = ClientRegistry()
        self.router = LocalRouter(self.registry)

    def deliver(self, uaid: str = UAID) -> bool:
        d = Deferred.fromCoroutine(self.router.deliver_message(uaid, MESSAGE))
        return self.successResultOf(d)

    def test_session_takes_it(self) -> None:
        """Step 1: the session holding the UAID takes the message (not as an update)."""
        session = FakeSession()
        self.registry.add(UAID, session)
        self.assertTrue(self.deliver())
        self.assertEqual((session.messages, session.delivered), ([MESSAGE], []))

    def test_not_taken(self) -> None:
        """Step 2: no session, a refusing one, or one that raises (logged): False."""
        self.assertFalse(self.deliver())
        refusing = FakeSession(accept=False)
        self.registry.add(UAID, refusing)
        self.assertFalse(self.deliver())
        self.assertEqual(refusing.messages, [MESSAGE])
        exploding = FakeSession()
        exploding.explode = True
        self.registry.add(UAID, exploding)
        self.assertFalse(self.deliver())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_here_is_synchronous(self) -> None:
        """``deliver_message_here`` answers at once, as the cluster router's first step."""
        self.registry.add(UAID, FakeSession())
        self.assertTrue(self.router.deliver_message_here(UAID, MESSAGE))
        self.assertFalse(self.router.deliver_message_here("f" * 32, MESSAGE))
