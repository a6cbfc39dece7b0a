"""Tests for ``pushtwisted._bucket_timer``: batched timeouts on a ``Clock``."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted._bucket_timer import BucketTimer


def _record_time(times: list[float], clock: Clock) -> None:
    times.append(clock.seconds())


class BucketTimerTests(SynchronousTestCase):
    """The per-factory timer Autobahn's timeouts run on."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100.5)
        self.timer = BucketTimer(self.clock, chunk_size=2, spread=0.2)
        self.calls: list[object] = []

    def test_whole_second(self) -> None:
        """When a call is due in 5 s, it runs at the end of that second, with its arguments."""
        self.timer.call_later(5, self.calls.append, "a")
        self.clock.advance(5.4)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_never_early(self) -> None:
        """Whatever the time and delay, a call never runs before its delay, nor 1 s after it."""
        starts = (0.0, 0.25, 0.5, 0.75, 0.9375, 100.5, 101.0, 2.0**20 + 0.125)
        delays = (0.0, 0.0625, 0.25, 0.5, 1.0, 1.0625, 4.5, 5.0, 30.0, 300.0)
        for start in starts:
            for delay in delays:
                clock = Clock()
                clock.advance(start)
                timer = BucketTimer(clock)
                ran: list[float] = []
                timer.call_later(delay, _record_time, ran, clock)
                while not ran:
                    clock.advance(0.0625)  # exact in binary: no rounding noise
                elapsed = ran[0] - start
                self.assertGreaterEqual(elapsed, delay, (start, delay))
                self.assertLessEqual(elapsed, delay + 1.0 + 0.0625, (start, delay))

    def test_one_second_not_shortened(self) -> None:
        """When a 1 s timeout starts at 0.9 past a whole second, it has not run 0.1 s later."""
        self.clock.advance(0.4)  # 100.9
        self.timer.call_later(1, self.calls.append, "timeout")
        self.clock.advance(0.1)
        self.clock.advance(0.85)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.2)
        self.assertEqual(self.calls, ["timeout"])

    def test_one_reactor_call_per_bucket(self) -> None:
        """When many calls fall in the same second, one reactor timer serves them, in order."""
        for i in range(5):
            self.timer.call_later(3, self.calls.append, i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3.5)
        self.assertEqual(self.calls, [0, 1])  # first chunk of 2
        self.clock.advance(0.1)
        self.assertEqual(self.calls, [0, 1, 2, 3])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, [0, 1, 2, 3, 4])

    def test_cancel(self) -> None:
        """When calls are cancelled, they never run; cancelling them all drops the reactor timer."""
        a = self.timer.call_later(3, self.calls.append, "a")
        b = self.timer.call_later(3, self.calls.append, "b")
        a.cancel()
        a.cancel()
        self.clock.advance(3.5)
        self.assertEqual(self.calls, ["b"])
        b.cancel()  # after it ran: no error
        c = self.timer.call_later(3, self.calls.append, "c")
        c.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_while_bucket_runs(self) -> None:
        """When a call is cancelled after its bucket started, it does not run."""
        calls = [self.timer.call_later(1, self.calls.append, i) for i in range(4)]
        self.clock.advance(1.5)
        calls[3].cancel()
        self.clock.advance(1)
        self.assertEqual(self.calls, [0, 1, 2])

    def test_bound_method(self) -> None:
        """When the call is a bound method, it runs on its instance."""
        self.timer.call_later(1, self.calls.clear)
        self.calls.append("x")
        self.clock.advance(1.5)
        self.assertEqual(self.calls, [])

    def test_failure_logged(self) -> None:
        """When a call raises, it is logged and the others still run."""

        def boom() -> None:
            raise ValueError("boom")

        self.timer.call_later(1, boom)
        self.timer.call_later(1, self.calls.append, "after")
        self.clock.advance(1.5)
        self.assertEqual(self.calls, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
