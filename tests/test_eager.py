"""Tests for ``pushtwisted.eager.run_eagerly``."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.eager import run_eagerly


class RunEagerlyTests(SynchronousTestCase):
    """A coroutine runs at once; only one that waits gets a Deferred."""

    def test_finished_at_once(self) -> None:
        """A coroutine that never waits on an unfired Deferred runs now; None is returned."""
        steps: list[object] = []

        async def work() -> None:
            steps.append(await succeed("fired"))

        self.assertIsNone(run_eagerly(work()))
        self.assertEqual(steps, ["fired"])

    def test_error_at_once_propagates(self) -> None:
        """An exception raised before any wait reaches the caller."""

        async def work() -> None:
            raise ValueError("bad")

        self.assertRaises(ValueError, run_eagerly, work())

    def test_waiting_gets_a_deferred(self) -> None:
        """A coroutine that waits continues under Twisted; the Deferred fires at its end."""
        gate: Deferred[str] = Deferred()
        steps: list[str] = []

        async def work() -> None:
            steps.append("before")
            steps.append(await gate)

        rest = run_eagerly(work())
        assert rest is not None
        self.assertEqual(steps, ["before"])
        self.assertNoResult(rest)
        gate.callback("after")
        self.assertIsNone(self.successResultOf(rest))
        self.assertEqual(steps, ["before", "after"])

    def test_failure_after_wait(self) -> None:
        """A failure of the awaited Deferred is thrown into the coroutine; uncaught, it
        fails the returned Deferred."""
        gate: Deferred[str] = Deferred()
        caught: list[str] = []

        async def work() -> None:
            try:
                await gate
            except KeyError:
                caught.append("caught")
                raise ValueError("then failed") from None

        rest = run_eagerly(work())
        assert rest is not None
        gate.errback(KeyError("x"))
        self.failureResultOf(rest, ValueError)
        self.assertEqual(caught, ["caught"])
