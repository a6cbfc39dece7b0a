"""The bench's measuring tools: memcached stats, the scenario registry, the summary columns.

Pure parts only: no server or memcached is started (``bench.mcstats``
takes its snapshots through an injected function here).
"""

from __future__ import annotations

import argparse
import copy
import os
import unittest
from typing import Any

from bench.__main__ import build_parser
from bench.mcstats import (
    McSnapshot,
    MemcachedMeter,
    command_deltas,
    parse_stats,
    per_unit,
    proc_reads,
    summarize_deltas,
)
from bench.registry import (
    SCENARIOS,
    scenario_names,
    scenario_params,
)
from bench.results import HEADLINES, SCENARIO_METRICS, markdown_table, summary_rows
from bench.runner import check_nodes
from tests.test_bench import sample_result

STATS = (
    b"STAT pid 8559\r\nSTAT uptime 4\r\nSTAT version 1.6.18\r\n"
    b"STAT rusage_user 0.006384\r\nSTAT rusage_system 0.000000\r\n"
    b"STAT cmd_get 10\r\nSTAT cmd_set 7\r\nSTAT cmd_touch 0\r\nSTAT get_hits 6\r\n"
    b"STAT get_misses 4\r\nSTAT cas_hits 3\r\nSTAT cas_badval 1\r\nSTAT delete_hits 2\r\n"
    b"STAT incr_hits 0\r\nEND\r\n"
)


class McStatsTests(unittest.TestCase):
    def test_parse_stats(self) -> None:
        s = parse_stats(STATS)
        self.assertEqual(s["cmd_get"], 10)
        self.assertEqual(s["version"], "1.6.18")
        self.assertAlmostEqual(float(s["rusage_user"]), 0.006384)
        self.assertNotIn("END", s)

    def test_deltas_and_total_count_cas_once(self) -> None:
        before = parse_stats(STATS)
        after = dict(before)
        # 100 notifications: 200 gets (keys), 200 cas (in cmd_set), 5 of them conflicting.
        after.update(
            cmd_get=210, get_hits=206, cmd_set=207, cas_hits=198, cas_badval=6, delete_hits=2
        )
        ops = command_deltas(before, after)
        self.assertEqual(ops["cmd_get"], 200)
        self.assertEqual(ops["cmd_set"], 200)
        self.assertEqual(ops["cas_hits"], 195)
        self.assertEqual(ops["delete_hits"], 0)
        block = summarize_deltas(ops, 100, "notification", cpu_s=0.0125, reads=402, elapsed_s=2.5)
        self.assertEqual(block["total"], 400)  # cas is inside cmd_set: not counted twice
        self.assertEqual(block["total_per_unit"], 4.0)
        self.assertEqual(block["per_unit"]["cmd_get"], 2.0)
        self.assertNotIn("delete_hits", block["per_unit"])  # zero deltas left out
        self.assertEqual(block["reads_per_unit"], 4.02)
        self.assertEqual(block["cpu_us_per_unit"], 125.0)
        self.assertEqual(block["cpu_pct"], 0.5)

    def test_per_unit_without_units(self) -> None:
        self.assertIsNone(per_unit(5, 0))
        self.assertIsNone(per_unit(None, 10))
        self.assertIsNone(summarize_deltas({}, 0, "cycle")["total_per_unit"])

    def test_meter_with_injected_snapshots(self) -> None:
        snaps = [
            McSnapshot({"cmd_get": 5, "cmd_set": 1, "version": "x"}, 1.0, 100, 1.0),
            McSnapshot({"cmd_get": 45, "cmd_set": 21, "version": "x"}, 1.5, 160, 1.5),
        ]
        calls: list[tuple[str, int, int | None]] = []

        def take(host: str, port: int, pid: int | None) -> McSnapshot:
            calls.append((host, port, pid))
            return snaps.pop(0)

        m = MemcachedMeter("127.0.0.1", 11211, 42, take=take)
        out = m.finish(20, "cycle", elapsed_s=1.0)
        self.assertEqual(calls, [("127.0.0.1", 11211, 42)] * 2)
        self.assertEqual(out["ops"], {"cmd_get": 40, "cmd_set": 20})
        self.assertEqual(out["total_per_unit"], 3.0)
        self.assertEqual(out["reads"], 60)
        self.assertEqual(out["cpu_us_per_unit"], 25000.0)
        self.assertEqual(out["unit"], "cycle")
        self.assertEqual(out["address"], "127.0.0.1:11211")

    def test_meter_reports_errors_instead_of_raising(self) -> None:
        def down(host: str, port: int, pid: int | None) -> McSnapshot:
            raise ConnectionRefusedError("refused")

        out = MemcachedMeter("127.0.0.1", 1, take=down).finish(10, "notification")
        self.assertIn("stats before", out["error"])
        self.assertNotIn("total", out)

    def test_proc_reads(self) -> None:
        self.assertIsInstance(proc_reads(os.getpid()), int)
        self.assertIsNone(proc_reads(None))


class RegistryTests(unittest.TestCase):
    def _args(self, *extra: str) -> argparse.Namespace:
        return build_parser().parse_args(["run", *extra])

    def test_all_and_unknown(self) -> None:
        self.assertEqual(scenario_names("all"), ["connect", "notify", "notify-rate", "churn"])
        self.assertEqual(scenario_names("churn,connect,churn"), ["churn", "connect"])
        with self.assertRaises(SystemExit):
            scenario_names("webpush")

    def test_memcached_goes_with_target(self) -> None:
        check_nodes(self._args("--target", "ws://127.0.0.1:1/", "--memcached", "127.0.0.1:2"))
        with self.assertRaises(SystemExit) as cm:
            check_nodes(self._args("--backend", "memcached", "--memcached", "127.0.0.1:1"))
        self.assertIn("--target", str(cm.exception.code))

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


def _with(r: dict[str, Any], **metrics: Any) -> dict[str, Any]:
    r["metrics"] = {**copy.deepcopy(r["metrics"]), **metrics}
    return r


def _mc(total: float, units: int = 100) -> dict[str, Any]:
    ops = {"cmd_get": int(2 * units), "cmd_set": int((total - 2) * units), "cas_hits": 2 * units}
    return summarize_deltas(ops, units, "notification", cpu_s=0.01, reads=int(total * units))


class SummaryColumnTests(unittest.TestCase):
    def test_memcached_column_next_to_the_figure(self) -> None:
        runs = [
            _with(sample_result(backend="memcached", repeat_index=i), memcached=_mc(t))
            for i, t in enumerate((4.0, 5.0, 6.0))
        ]
        rows = summary_rows(runs)
        self.assertEqual(rows[0]["values"]["mc ops/notif"], 5.0)
        md = markdown_table(runs)
        header = next(line for line in md.splitlines() if "notif/s" in line)
        cols = [c.strip() for c in header.strip("|").split("|")]
        self.assertEqual(cols[cols.index("notif/s") + 1], "mc ops/notif")
        self.assertIn("### memcached per delivered unit", md)
        mrow = next(line for line in md.splitlines() if line.startswith("| notify | memcached"))
        cells = [c.strip() for c in mrow.strip("|").split("|")]
        # get (keys), get misses, set (without cas), cas: 2, 0, 1, 2 per notification (median)
        self.assertEqual(cells[7:11], ["2.00", "0.00", "1.00", "2.00"])

    def test_optional_columns_hidden_without_values(self) -> None:
        md = markdown_table([sample_result()])
        self.assertNotIn("mc ops/notif", md)
        self.assertNotIn("memcached per delivered unit", md)


if __name__ == "__main__":
    unittest.main()
