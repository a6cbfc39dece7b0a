"""The session's side of the cluster: directory write at hello, clear at close."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageUnavailable
from pushtwisted.session import Session, State
from pushtwisted.testing import FakeRouter, RecordingSender, make_node

UAID = "0123456789abcdef0123456789abcdef"
CHID = "fedcba98-7654-3210-fedc-ba9876543210"


class SessionRouterTests(SynchronousTestCase):
    """With a router configured, hello records the node before storage is read."""

    def setUp(self) -> None:
        self.router = FakeRouter()
        clock = Clock()
        clock.advance(12.345)
        self.node = make_node(clock=clock, router=self.router)
        self.sender = RecordingSender()
        self.session = Session(self.sender, self.node)
        self.session.opened()

    def hello(self, **fields: Any) -> None:
        message = {"messageType": "hello", "uaid": "", "channelIDs": []}
        message.update(fields)
        self.session.receive(json.dumps(message))

    def test_hello_writes_directory_with_connected_at(self) -> None:
        """A successful hello calls ``on_hello`` with the UAID and its time in ms."""
        self.hello(uaid=UAID)
        self.assertEqual(self.router.hellos, [(UAID, 12345)])
        self.assertEqual(self.router.fresh_hellos, [False])
        self.assertEqual(self.session.connected_at, 12345)
        self.assertEqual(self.sender.replies[0]["status"], 200)

    def test_new_uaid_is_claimed_as_fresh(self) -> None:
        """A hello without a UAID claims the one it makes as ``fresh`` (nothing to read)."""
        self.hello()
        reply = self.sender.replies[0]
        self.assertEqual(reply["status"], 200)
        self.assertEqual(self.router.hellos, [(reply["uaid"], 12345)])
        self.assertEqual(self.router.fresh_hellos, [True])

    def test_directory_written_before_storage_is_read(self) -> None:
        """Until the directory write fires, no hello reply is sent and nothing is fetched."""
        self.router.hello_answer = Deferred()
        fetched: list[str] = []
        storage = self.node.storage
        original = storage.fetch_pending

        def fetch(uaid: str) -> Any:
            fetched.append(uaid)
            return original(uaid)

        storage.fetch_pending = fetch  # type: ignore[method-assign]
        self.hello(uaid=UAID)
        self.assertEqual((self.sender.texts, fetched), ([], []))
        self.router.hello_answer.callback(None)
        self.assertEqual(fetched, [UAID])
        self.assertIs(self.session.state, State.READY)

    def test_directory_failure_is_503_and_keeps_uaid(self) -> None:
        """A directory error answers 503, stays open awaiting hello, and resets nothing."""
        self.router.hello_answer = fail(StorageUnavailable("down"))
        self.hello(uaid=UAID)
        reply = self.sender.replies[0]
        self.assertEqual((reply["status"], reply["uaid"]), (503, UAID))
        self.assertIs(self.session.state, State.AWAIT_HELLO)
        self.assertEqual(self.sender.closes, [])

    def test_close_clears_own_entry(self) -> None:
        """When the connection is lost its own directory entry is cleared."""
        self.hello(uaid=UAID)
        self.session.connection_lost()
        self.assertEqual(self.router.disconnects, [(UAID, 12345)])

    def test_close_during_directory_write_clears_it(self) -> None:
        """A socket that closes while the entry is being written clears it afterwards."""
        self.router.hello_answer = Deferred()
        self.hello(uaid=UAID)
        self.session.connection_lost()
        self.router.hello_answer.callback(None)
        self.assertEqual(self.router.disconnects, [(UAID, 12345)])
        self.assertEqual(self.sender.texts, [])

    def test_no_clear_without_hello(self) -> None:
        """A connection that never said hello touches no directory entry."""
        self.session.connection_lost()
        self.assertEqual((self.router.hellos, self.router.disconnects), ([], []))

    def test_check_storage_sends_pending(self) -> None:
        """``check_storage`` sends what storage holds and the connection has not seen."""
        self.hello(uaid=UAID)
        self.session.receive(json.dumps({"messageType": "register", "channelID": CHID}))
        self.successResultOf(self.node.storage.update(UAID, CHID.replace("-", ""), 9, None))
        self.sender.clear()
        self.successResultOf(self.session.check_storage())
        self.assertEqual(
            self.sender.replies,
            [{"messageType": "notification", "updates": [{"channelID": CHID, "version": 9}]}],
        )
        self.successResultOf(self.session.check_storage())
        self.assertEqual(len(self.sender.replies), 1)

    def test_check_storage_before_hello_does_nothing(self) -> None:
        """``check_storage`` on a connection without hello sends nothing."""
        self.successResultOf(self.session.check_storage())
        self.assertEqual(self.sender.texts, [])


class SameNodeTakeoverTests(SynchronousTestCase):
    """A newer session for the UAID on the same node keeps the directory entry."""

    def test_replaced_session_does_not_clear_newer_entry(self) -> None:
        """Two hellos in the same millisecond: the replaced one clears nothing."""
        router = FakeRouter()
        node = make_node(router=router)
        first, second = RecordingSender(), RecordingSender()
        old, new = Session(first, node), Session(second, node)
        for session in (old, new):
            session.opened()
            session.receive(json.dumps({"messageType": "hello", "uaid": UAID, "channelIDs": []}))
        self.assertEqual(first.closes, [(1000, "Replaced by a newer connection")])
        self.assertEqual(router.disconnects, [])
        new.connection_lost()
        self.assertEqual(router.disconnects, [(UAID, 0)])
