"""Tests for ``pushtwisted.outbox.Outbox`` (sessions test it end to end too)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.outbox import Outbox
from pushtwisted.storage.interface import PendingUpdate
from pushtwisted.testing import RecordingMetrics, RecordingSender

CHID = "01234567-89ab-cdef-0123-456789abcdef"
CHID_N = CHID.replace("-", "")


class OutboxTests(SynchronousTestCase):
    """Sent updates are kept until acked and re-sent on the retry timer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sender = RecordingSender()
        self.metrics = RecordingMetrics()
        self.outbox = Outbox(self.sender, self.metrics, self.clock, 60.0)

    def updates(self) -> list[Any]:
        return [json.loads(t)["updates"] for t in self.sender.texts]

    def test_same_version_once(self) -> None:
        """A version already sent is not sent again; another version is."""
        self.assertTrue(self.outbox.deliver(CHID, 1, None))
        self.assertTrue(self.outbox.deliver(CHID, 1, None))
        self.assertTrue(self.outbox.deliver(CHID, 2, "d"))
        self.assertEqual(len(self.sender.texts), 2)
        self.assertEqual(self.metrics.total("notifications_delivered"), 2)

    def test_refused_is_false(self) -> None:
        """A closed connection refuses the notification: False, nothing kept."""
        self.sender.is_open = False
        self.assertFalse(self.outbox.deliver(CHID, 1, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_until_acked(self) -> None:
        """Unacked updates are re-sent every interval; an ack covering them stops it."""
        self.outbox.deliver(CHID, 3, None)
        self.clock.advance(60)
        self.assertEqual(self.updates()[-1], [{"channelID": CHID, "version": 3}])
        self.assertEqual(self.metrics.total("notifications_resent"), 1)
        self.outbox.acked(CHID_N, 2)  # older: still kept
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.outbox.acked(CHID_N, 3)
        self.clock.advance(60)
        self.assertEqual(len(self.sender.texts), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_forget_and_close(self) -> None:
        """Forgetting the last channel stops the timer at its next due time; closing at once."""
        self.outbox.deliver(CHID, 1, None)
        self.outbox.forget(CHID_N)
        self.clock.advance(60)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.outbox.deliver(CHID, 2, None)
        self.outbox.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(120)
        self.assertEqual(len(self.sender.texts), 2)

    def test_one_timer_for_many_notifications(self) -> None:
        """Notifications acked one by one keep one timer: no call scheduled or cancelled each."""
        scheduled: list[object] = []
        call_later = self.clock.callLater

        def counting(*args: Any, **kwargs: Any) -> Any:
            call = call_later(*args, **kwargs)
            scheduled.append(call)
            return call

        self.clock.callLater = counting  # type: ignore[method-assign]
        for version in range(1, 101):
            self.outbox.deliver(CHID, version, None)
            self.outbox.acked(CHID_N, version)
            self.clock.advance(0.1)
        self.assertEqual(len(scheduled), 1)
        self.assertEqual(self.metrics.total("notifications_delivered"), 100)
        self.clock.advance(60)
        self.assertEqual(self.metrics.total("notifications_resent"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_counts_from_first_send(self) -> None:
        """When an update follows an ack that emptied the outbox, its retry is an interval later.

        The timer set for the earlier update fires first, finds the new one
        too young and waits for the rest of its interval.
        """
        self.outbox.deliver(CHID, 1, None)
        self.outbox.acked(CHID_N, 1)
        self.clock.advance(50)
        self.outbox.deliver(CHID, 2, None)
        self.clock.advance(10)  # the first timer's due time
        self.assertEqual(len(self.sender.texts), 2)
        self.clock.advance(49)
        self.assertEqual(len(self.sender.texts), 2)
        self.clock.advance(1)  # 60 s after the second update was sent
        self.assertEqual(self.updates()[-1], [{"channelID": CHID, "version": 2}])
        self.assertEqual(self.metrics.total("notifications_resent"), 1)
        self.clock.advance(60)
        self.assertEqual(self.metrics.total("notifications_resent"), 2)

    def test_send_pending_skips_sent_unless_resend(self) -> None:
        """Pending updates already sent live are left out, except on a re-hello."""
        self.outbox.deliver(CHID, 4, None)
        pending = [
            PendingUpdate(channel_id=CHID, version=4),
            PendingUpdate(channel_id="x", version=1),
        ]
        self.outbox.send_pending(pending)
        self.assertEqual(self.updates()[-1], [{"channelID": "x", "version": 1}])
        self.outbox.send_pending(pending, resend=True)
        self.assertEqual(len(self.updates()[-1]), 2)
