"""Tests for ``pushtwisted.ids``: ``connected_at`` values."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.ids import connected_at_ms


class ConnectedAtTests(SynchronousTestCase):
    """``connected_at_ms`` turns a clock reading into ``connected_at``."""

    def test_connected_at_ms(self) -> None:
        """``connected_at_ms`` turns clock seconds into integer milliseconds."""
        self.assertEqual(connected_at_ms(1.2345), 1234)
        self.assertEqual(connected_at_ms(1_700_000_000.0), 1_700_000_000 * 1000)
