"""The bench's scenario registry (pure: no server is started)."""

from __future__ import annotations

import argparse
import unittest

from bench.__main__ import build_parser
from bench.registry import (
    SCENARIOS,
    scenario_names,
    scenario_params,
)
from bench.results import HEADLINES, SCENARIO_METRICS


class RegistryTests(unittest.TestCase):
    def _args(self, *extra: str) -> argparse.Namespace:
        return build_parser().parse_args(["run", *extra])

    def test_all_and_unknown(self) -> None:
        self.assertEqual(scenario_names("all"), ["connect", "notify", "notify-rate", "churn"])
        self.assertEqual(scenario_names("churn,connect,churn"), ["churn", "connect"])
        with self.assertRaises(SystemExit):
            scenario_names("webpush")

    def test_every_spec_is_complete(self) -> None:
        for spec in SCENARIOS.values():
            self.assertIn(spec.kind, HEADLINES, spec.name)
            self.assertIn(spec.kind, SCENARIO_METRICS, spec.name)
            self.assertEqual(set(spec.sizes), {"tiny", "moderate", "full"}, spec.name)
            for dest in spec.options.values():
                self.assertTrue(hasattr(self._args(), dest), f"{spec.name}: --{dest}")

    def test_rate_keeps_its_own_inflight(self) -> None:
        p = scenario_params(self._args("--inflight", "7"), "notify-rate")
        self.assertEqual(p["inflight"], 64)  # --inflight is the saturated run's
        self.assertEqual(scenario_params(self._args("--inflight", "7"), "notify")["inflight"], 7)


if __name__ == "__main__":
    unittest.main()
