"""Tests for WebPush delivery on a session: the sliding window, the retry timer, TTL 0."""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.ids import normalize_id
from pushtwisted.storage.interface import StoredMessage
from pushtwisted.testing import FailingStorage, HoldingStorage, RecordingMetrics, RecordingSender
from pushtwisted.tokens import EndpointCrypto, generate_key
from pushtwisted.wpsession import MessageWindow
from tests.test_wpsession import CHID, CHID2, CHID_N, UAID, WebPushCase, webpush_config


def transient(clock: Clock, chid: str = CHID, data: str | None = "dHRsMA") -> StoredMessage:
    """Return a TTL-0 message as the endpoint builds it (never stored; a transient seq)."""
    return StoredMessage(
        chid=normalize_id(chid),
        channel_id=chid,
        seq=(1 << 63) | secrets.randbits(63),
        ttl=0,
        stored_at=clock.seconds(),
        data=data,
        headers={"encoding": "aes128gcm"} if data else {},
    )


class WindowTests(WebPushCase):
    """At most webpush_batch messages sent and unacknowledged; each ack lets the next go."""

    config = webpush_config(webpush_batch=3)

    def test_first_batch_then_one_per_ack(self) -> None:
        """Five stored: three go at hello; each ack lets one more go, in storage's order."""
        stored = [self.store(UAID) for _ in range(5)]
        ids = [self.message_id(m) for m in stored]
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.versions(), ids[:3])
        self.sender.clear()
        self.ack(ids[1])
        self.assertEqual(self.versions(), [ids[3]])
        self.ack(ids[0], ids[2])
        self.assertEqual(self.versions(), ids[3:])
        self.ack(ids[3], ids[4])
        self.assertEqual(self.versions(), ids[3:])
        self.assertEqual(self.stored_seqs(), [])
        self.assertEqual(self.metrics.count("webpush_messages", outcome="delivered"), 5)

    def test_live_message_into_window(self) -> None:
        """deliver_message sends into the window; the same message again is not re-sent."""
        self.ready()
        message = self.store(UAID)
        self.assertTrue(self.session.deliver_message(message))
        self.assertTrue(self.session.deliver_message(message))
        self.assertEqual(self.versions(), [self.message_id(message)])

    def test_live_message_when_full_waits_in_storage(self) -> None:
        """When the window is full, deliver_message is False; an ack fetches the message."""
        first = [self.store(UAID) for _ in range(3)]
        self.hello(UAID)
        live = self.store(UAID)
        self.assertFalse(self.session.deliver_message(live))
        self.assertEqual(self.versions(), [])
        self.ack(self.message_id(first[0]))
        self.assertEqual(self.versions(), [self.message_id(live)])

    def test_no_fetch_while_storage_has_no_more(self) -> None:
        """An ack fetches again only when storage may hold more than was sent."""
        calls = FailingStorage(self.memory)
        self.build(storage=calls)
        message = self.store(UAID)
        self.hello(UAID)
        self.ack(self.message_id(message))
        self.assertEqual(calls.calls.count("fetch_messages"), 1)

    def test_live_message_during_fetch(self) -> None:
        """A live message sent while a fetch runs is not sent twice."""
        holding = HoldingStorage(self.memory, ["fetch_messages"])
        self.build(storage=holding)
        self.register_channel(UAID)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        holding.next().release()  # the hello's read: nothing stored
        self.sender.clear()
        older = self.store(UAID)
        self.session.check_storage()
        live = self.store(UAID)
        self.assertTrue(self.session.deliver_message(live))
        holding.next().release()
        self.assertEqual(self.versions(), [self.message_id(live), self.message_id(older)])
        self.assertEqual(self.metrics.count("webpush_messages", outcome="delivered"), 2)

    def test_message_routed_during_hello_read_sent_once(self) -> None:
        """A message routed while the hello reads storage (no session takes it) is
        fetched again after the reply, and each stored message is sent once."""
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.register_channel(UAID)
        older = self.store(UAID)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        live = self.store(UAID)
        self.assertFalse(self.successResultOf(self.node.router.deliver_message(UAID, live)))
        holding.next().release()
        self.assertEqual(holding.calls, ["user_mode", "fetch_messages", "fetch_messages"])
        self.assertEqual(self.versions(), [self.message_id(older), self.message_id(live)])

    def test_refused_during_fetch_fetched_later(self) -> None:
        """A message refused (window full) while a fetch runs is fetched once there is room."""
        self.build(
            webpush_config(webpush_batch=1), storage=HoldingStorage(self.memory, ["fetch_messages"])
        )
        holding = self.node.storage
        assert isinstance(holding, HoldingStorage)
        self.register_channel(UAID)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        holding.next().release()  # the hello's read: nothing stored
        self.sender.clear()
        self.session.check_storage()
        first, second = self.store(UAID), self.store(UAID)
        self.assertTrue(self.session.deliver_message(first))
        self.assertFalse(self.session.deliver_message(second))
        holding.next().release()
        self.assertEqual(self.versions(), [self.message_id(first)])
        self.ack(self.message_id(first))
        holding.next().release()
        self.assertEqual(self.versions(), [self.message_id(first), self.message_id(second)])

    def test_fetch_failure_after_ack_retried(self) -> None:
        """When the fetch an ack starts fails, it is retried on the clock."""
        failing = FailingStorage(self.memory)
        self.build(webpush_config(webpush_batch=1), storage=failing)
        first, second = self.store(UAID), self.store(UAID)
        self.hello(UAID)
        failing.failing.add("fetch_messages")
        self.ack(self.message_id(first))
        self.assertEqual(self.sender.texts, [])
        failing.failing.clear()
        self.clock.advance(1)
        self.assertEqual(self.versions(), [self.message_id(second)])

    def test_check_storage(self) -> None:
        """check_storage (from another node) fetches and sends what is new."""
        self.ready()
        message = self.store(UAID)
        self.successResultOf(self.session.check_storage())
        self.assertEqual(self.versions(), [self.message_id(message)])

    def test_not_ready(self) -> None:
        """Before hello, after close, or on a closing connection deliver_message is False."""
        message = self.store(UAID)
        self.assertFalse(self.session.deliver_message(message))
        self.hello(UAID)
        self.sender.clear()
        self.sender.is_open = False
        self.assertFalse(self.session.deliver_message(self.store(UAID)))
        self.session.connection_lost()
        self.assertFalse(self.session.deliver_message(message))
        self.assertEqual(self.sender.events, [])


class RetryTests(WebPushCase):
    """Unacknowledged messages are re-sent on the retry timer with the same id."""

    def test_resent_same_id_until_acked(self) -> None:
        """An unacked message is re-sent each interval, identical; after its ack, never."""
        self.ready()
        message = self.store(UAID)
        self.session.deliver_message(message)
        first = self.sender.texts[0]
        self.clock.advance(59)
        self.assertEqual(len(self.sender.texts), 1)
        self.clock.advance(1)
        self.clock.advance(60)
        self.assertEqual(self.sender.texts, [first] * 3)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="resent"), 2)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="delivered"), 1)
        self.ack(self.message_id(message))
        self.clock.advance(120)
        self.assertEqual(len(self.sender.texts), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_expired_not_resent_and_room_refilled(self) -> None:
        """An expired unacked message is not re-sent; its slot goes to the next stored one."""
        self.build(webpush_config(webpush_batch=1))
        short = self.store(UAID, ttl=30)
        long = self.store(UAID)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.versions(), [self.message_id(short)])
        self.sender.clear()
        self.clock.advance(60)
        self.assertEqual(self.versions(), [self.message_id(long)])
        self.assertEqual(self.metrics.count("webpush_messages", outcome="resent"), 0)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="expired"), 1)

    def test_off(self) -> None:
        """retry_interval 0: nothing is re-sent and no timer is held."""
        self.build(webpush_config(retry_interval=0))
        self.ready()
        self.session.deliver_message(self.store(UAID))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BackpressureTests(WebPushCase):
    """A connection whose output does not drain refuses messages; they go out once it drains."""

    def test_refused_live_message_sent_after_drain(self) -> None:
        """A live message refused by a full output buffer is fetched when the output drains."""
        self.ready()
        message = self.store(UAID)
        self.sender.is_open = False
        self.assertFalse(self.session.deliver_message(message))
        self.sender.is_open = True
        self.successResultOf(self.session.check_storage())
        self.assertEqual(self.versions(), [self.message_id(message)])

    def test_retry_timer_restarts_after_drain(self) -> None:
        """A re-send the output refused stops the timer; the drain starts it again."""
        self.ready()
        message = self.store(UAID)
        self.session.deliver_message(message)
        self.sender.is_open = False
        self.clock.advance(60)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.sender.is_open = True
        self.successResultOf(self.session.check_storage())
        self.assertEqual(len(self.sender.texts), 1)
        self.clock.advance(60)
        self.assertEqual(self.versions(), [self.message_id(message)] * 2)


class TtlZeroTests(WebPushCase):
    """TTL-0 messages: never stored, so never deleted; forgotten at close."""

    def test_acked_without_storage(self) -> None:
        """A TTL-0 message is delivered; its ack deletes nothing in storage."""
        calls = FailingStorage(self.memory)
        self.build(storage=calls)
        self.ready()
        message = transient(self.clock)
        self.assertTrue(self.session.deliver_message(message))
        self.assertEqual(self.sender.replies[0]["data"], "dHRsMA")
        self.ack(self.message_id(message))
        self.assertNotIn("delete_message", calls.calls)
        self.clock.advance(60)
        self.assertEqual(len(self.sender.texts), 1)

    def test_resent_while_unacked(self) -> None:
        """An unacked TTL-0 message is re-sent by the retry timer (it does not expire here)."""
        self.ready()
        self.session.deliver_message(transient(self.clock))
        self.clock.advance(60)
        self.assertEqual(len(self.sender.texts), 2)

    def test_forgotten_at_close(self) -> None:
        """At close a TTL-0 message is dropped: no timer stays, the next hello gets nothing."""
        self.ready()
        self.session.deliver_message(transient(self.clock))
        self.session.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.sender, self.session = self.new_session()
        self.hello(UAID)
        self.assertEqual(self.sender.texts, [])

    def test_full_window_drops_it(self) -> None:
        """With the window full a TTL-0 message is refused and never fetched."""
        calls = FailingStorage(self.memory)
        self.build(webpush_config(webpush_batch=1), storage=calls)
        first = self.store(UAID)
        self.hello(UAID)
        self.assertFalse(self.session.deliver_message(transient(self.clock)))
        self.ack(self.message_id(first))
        self.assertEqual(calls.calls.count("fetch_messages"), 1)
        self.assertEqual(self.sender.texts, [])


class PendingAtUnregisterTests(WebPushCase):
    """Unregister with a pending message: nothing comes back."""

    def test_nothing_comes_back(self) -> None:
        """A channel unregistered with an unacked message: no re-send, nothing at the next hello."""
        self.store(UAID)
        self.hello(UAID)
        self.send({"messageType": "unregister", "channelID": CHID, "code": 201})
        self.sender.clear()
        self.clock.advance(60)
        self.assertEqual(self.sender.texts, [])
        self.session.connection_lost()
        self.sender, self.session = self.new_session()
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(len(self.sender.texts), 1)


class MessageWindowTests(SynchronousTestCase):
    """``MessageWindow`` on its own."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sender = RecordingSender()
        self.metrics = RecordingMetrics()
        self.rooms: list[None] = []
        self.window = MessageWindow(
            self.sender,
            self.metrics,
            self.clock,
            60.0,
            ids=EndpointCrypto([generate_key()]).message_ids,
            uaid=UAID,
            size=2,
            on_room=lambda: self.rooms.append(None),
        )

    def message(self, seq: int, chid: str = CHID, **kwargs: Any) -> StoredMessage:
        fields: dict[str, Any] = {"ttl": 60, "stored_at": self.clock.seconds()}
        fields.update(kwargs)
        return StoredMessage(chid=normalize_id(chid), channel_id=chid, seq=seq, **fields)

    def test_full(self) -> None:
        """The window is full at ``size`` unacknowledged messages."""
        self.assertTrue(self.window.send(self.message(1)))
        self.assertFalse(self.window.full)
        self.assertTrue(self.window.send(self.message(2)))
        self.assertTrue(self.window.full)
        self.window.discard(1)
        self.assertFalse(self.window.full)
        self.assertEqual(len(self.window), 1)

    def test_acked_during_fetch_skipped(self) -> None:
        """A message acknowledged while a fetch runs is skipped in that fetch's answer."""
        self.window.send(self.message(1))
        self.window.fetching = True
        self.window.fetch_started()
        self.window.discard(1)
        self.assertTrue(self.window.skip(1))
        self.window.fetch_started()
        self.assertFalse(self.window.skip(1))

    def test_forget_channel(self) -> None:
        """Forgetting a channel drops its messages only; True when there were any."""
        self.window.send(self.message(1))
        self.window.send(self.message(2, CHID2))
        self.assertTrue(self.window.forget_channel(CHID_N))
        self.assertFalse(self.window.forget_channel(CHID_N))
        self.assertNotIn(1, self.window)
        self.assertIn(2, self.window)

    def test_expiry_calls_on_room(self) -> None:
        """The retry timer drops expired messages and says there is room."""
        self.window.send(self.message(1, ttl=30))
        self.window.send(self.message(2, ttl=3600))
        self.clock.advance(60)
        self.assertEqual(self.rooms, [None])
        self.assertNotIn(1, self.window)
        self.assertEqual(len(self.sender.texts), 3)

    def test_close(self) -> None:
        """Closing forgets everything and cancels the timer."""
        self.window.send(self.message(1))
        self.window.close()
        self.assertEqual(len(self.window), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
