"""The bench's measuring tools: memcached stats, the run layout, the scenario registry,
the summary columns, cluster shared ports and the profile digest.

Pure parts only: no server, memcached or py-spy is started (``bench.mcstats``
takes its snapshots through an injected function here).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import tomllib
import unittest
from typing import Any

from bench.__main__ import build_parser
from bench.layout import (
    DEFAULT_SOURCE_IPS,
    GEN_RESERVE_FDS,
    MAX_SOURCE_IPS,
    PORT_MARGIN,
    PORT_SPREAD,
    LayoutError,
    node_share,
    plan_layout,
    port_range_size,
)
from bench.mcstats import (
    McSnapshot,
    MemcachedMeter,
    command_deltas,
    parse_stats,
    per_unit,
    proc_reads,
    summarize_deltas,
)
from bench.profiler import (
    Profiler,
    parse_collapsed,
    speedscope,
    thread_group,
    top_frames,
    top_markdown,
)
from bench.registry import (
    PRESETS,
    SCENARIOS,
    http_connections,
    scenario_names,
    scenario_params,
)
from bench.results import HEADLINES, SCENARIO_METRICS, markdown_table, summary_rows
from bench.runner import _strict_problems, check_nodes
from bench.server import cluster_node_config, render_config
from bench.targets import check_targets
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


class LayoutTests(unittest.TestCase):
    LIMITS: dict[str, Any] = {"gen_fd_limit": 20000, "server_fd_limit": 20000}

    def plan(self, devices: int, **kw: Any) -> Any:
        return plan_layout(devices, ports_per_ip=28232, **{**self.LIMITS, **kw})

    def test_small_run_keeps_the_old_defaults(self) -> None:
        lay = self.plan(50, http_conns=8)
        self.assertEqual((lay.procs, lay.source_ips), (1, DEFAULT_SOURCE_IPS))
        self.assertEqual(self.plan(19500).procs, 2)  # 15,000 devices per process at most

    def test_cluster_target_layout(self) -> None:
        """200,000 devices on 12 nodes sharing the ports: every budget holds."""
        lay = self.plan(200000, nodes=12, shared_ports=True, http_conns=128)
        self.assertEqual(lay.procs, 14)
        self.assertLessEqual(lay.fds_per_proc, 20000)
        self.assertEqual(lay.source_ips % lay.procs, 0)  # one slice of addresses per worker
        # A quarter of the port range per address: the kernel's port search stays cheap.
        self.assertLessEqual(lay.sockets_per_ip, int(28232 * PORT_SPREAD))
        self.assertGreaterEqual(lay.source_ips * lay.sockets_per_ip, 200000 + 128)
        self.assertGreater(lay.sockets_per_node, 200000 // 12)
        self.assertLessEqual(lay.sockets_per_node, 20000)

    def test_given_source_addresses_are_held_to_the_margin_only(self) -> None:
        """--source-ips 14 for 200,000 devices: ~14,300 per address, under 75 %, kept."""
        lay = self.plan(200000, nodes=12, shared_ports=True, http_conns=128, source_ips=14)
        self.assertEqual(lay.source_ips, 14)
        self.assertGreater(lay.sockets_per_ip, int(28232 * PORT_SPREAD))
        self.assertLessEqual(lay.sockets_per_ip, int(28232 * PORT_MARGIN))

    def test_picked_addresses_never_exceed_the_bench_range(self) -> None:
        # 1,000,000 sockets want 142 addresses at a quarter of the range each, rounded
        # up to a multiple of the 67 processes: 201, within the bench's 250.
        lay = self.plan(1000000, gen_fd_limit=60000, check_server=False)
        self.assertLessEqual(lay.source_ips, MAX_SOURCE_IPS)
        self.assertEqual(lay.source_ips % lay.procs, 0)

    def test_refusals_name_the_budget(self) -> None:
        cases = [
            ({"nodes": 1}, "open files per server process", "--nodes 11"),
            ({"nodes": 12, "procs": 2}, "open files per generator process", "--procs 11"),
            ({"nodes": 12, "source_ips": 2}, "ephemeral ports", "--source-ips 14"),
        ]
        for kw, cause, fix in cases:
            with self.assertRaises(LayoutError) as cm:
                self.plan(200000, shared_ports=True, http_conns=128, **kw)
            self.assertIn(cause, str(cm.exception), kw)
            self.assertIn(fix, str(cm.exception), kw)

    def test_server_limit_ignored_for_a_foreign_target(self) -> None:
        lay = self.plan(30000, check_server=False)
        self.assertEqual(lay.procs, 2)

    def test_generator_room_shrinks_with_http_connections(self) -> None:
        # churn: one HTTP connection per device, so a process holds half the devices.
        lay = self.plan(12000, http_conns=12000, check_server=False)
        self.assertEqual(lay.procs, 2)  # 12,000 devices alone would fit one process
        self.assertLessEqual(lay.fds_per_proc, 20000)
        with self.assertRaises(LayoutError):
            self.plan(100, gen_fd_limit=GEN_RESERVE_FDS)

    def test_node_share(self) -> None:
        self.assertEqual(node_share(3000, 3, hashed=False), 1000)
        hashed = node_share(3000, 3, hashed=True)
        self.assertGreater(hashed, 1000)
        self.assertLess(hashed, 1200)
        self.assertEqual(node_share(500, 1, hashed=True), 500)

    def test_port_range_size(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".range", delete=False) as f:
            f.write("32768\t60999\n")
        try:
            self.assertEqual(port_range_size(f.name), 28232)
        finally:
            os.unlink(f.name)
        self.assertEqual(port_range_size("/nonexistent/range"), 28232)


class RegistryTests(unittest.TestCase):
    def _args(self, *extra: str) -> argparse.Namespace:
        return build_parser().parse_args(["run", *extra])

    def test_all_leaves_out_the_cluster_scenario(self) -> None:
        self.assertEqual(
            scenario_names("all"), ["connect", "notify", "notify-rate", "webpush-notify", "churn"]
        )
        self.assertEqual(scenario_names("churn,connect-verify,churn"), ["churn", "connect-verify"])
        with self.assertRaises(SystemExit):
            scenario_names("webpush")

    def test_every_spec_is_complete(self) -> None:
        for spec in SCENARIOS.values():
            self.assertIn(spec.kind, HEADLINES, spec.name)
            self.assertIn(spec.kind, SCENARIO_METRICS, spec.name)
            self.assertEqual(set(spec.sizes), {"tiny", "moderate", "full"}, spec.name)
            for dest in spec.options.values():
                self.assertTrue(hasattr(self._args(), dest), f"{spec.name}: --{dest}")

    def test_connect_verify_params(self) -> None:
        p = scenario_params(self._args("--tiny", "--devices", "300"), "connect-verify")
        self.assertEqual((p["devices"], p["mode"], p["verify_puts"]), (300, "verify", True))
        self.assertEqual(PRESETS["full"]["connect-verify"]["devices"], 200000)
        self.assertNotIn("mode", scenario_params(self._args(), "connect"))

    def test_rate_keeps_its_own_inflight(self) -> None:
        p = scenario_params(self._args("--inflight", "7"), "notify-rate")
        self.assertEqual(p["inflight"], 64)  # --inflight is the saturated run's
        self.assertEqual(scenario_params(self._args("--inflight", "7"), "notify")["inflight"], 7)

    def test_http_connections(self) -> None:
        p = {"devices": 100, "inflight": 32, "mode": "saturated"}
        self.assertEqual(http_connections("notify", p, 1, False), 32)
        self.assertEqual(http_connections("notify", p, 4, False), 128)  # one per slot and node
        self.assertEqual(http_connections("notify", p, 4, True), 32)
        self.assertEqual(http_connections("churn", {"devices": 100}, 1, False), 100)
        self.assertEqual(http_connections("connect", {"devices": 100}, 1, False), 0)


class SharedPortsTests(unittest.TestCase):
    def _args(self, *extra: str) -> argparse.Namespace:
        return build_parser().parse_args(["run", *extra])

    def test_checks(self) -> None:
        check_nodes(self._args("--backend", "memcached", "--nodes", "3", "--shared-ports"))
        with self.assertRaises(SystemExit) as cm:
            check_nodes(self._args("--backend", "memcached", "--shared-ports"))
        self.assertIn("--nodes", str(cm.exception.code))
        with self.assertRaises(SystemExit) as cm:
            check_nodes(self._args("--backend", "memcached", "--memcached", "127.0.0.1:1"))
        self.assertIn("--target", str(cm.exception.code))

    def test_shared_config_passes_the_server_checks(self) -> None:
        from pushtwisted.config import parse_config
        from pushtwisted.tokens import generate_key

        cfg = cluster_node_config(4001, "s" * 32, generate_key(), "bench-x:", shared_ports=True)
        base = {
            "websocket": {"listen": "tcp:1:interface=127.0.0.1"},
            "endpoint": {"listen": "tcp:2:interface=127.0.0.1", "public_url": "http://x:2"},
            "storage": {"backend": "memcached", "servers": ["127.0.0.1:3"]},
        }
        for name, table in base.items():
            cfg[name] = {**table, **cfg.get(name, {})}
        conf = parse_config(tomllib.loads(render_config(cfg)), environ={})
        self.assertTrue(conf.websocket.reuse_port)
        self.assertTrue(conf.endpoint.reuse_port)
        plain = cluster_node_config(4001, "s" * 32, "k", "p:")
        self.assertNotIn("websocket", plain)


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

    def test_shared_ports_rows_apart(self) -> None:
        plain = sample_result(backend="memcached", nodes=3)
        shared = sample_result(backend="memcached", nodes=3)
        shared["params"] = {**shared["params"], "nodes": 3, "shared_ports": True}
        rows = summary_rows([plain, shared])
        self.assertEqual(sorted(r["shared_ports"] for r in rows), [False, True])
        self.assertIn("| memcached | 3 shared | saturated |", markdown_table([plain, shared]))


class TargetTests(unittest.TestCase):
    def _connect(self, mode: str | None, **params: Any) -> dict[str, Any]:
        p = {"devices": 200000, "hold": 10.0, "nodes": 12, **params}
        if mode:
            p["mode"] = mode
        return sample_result(
            scenario="connect",
            backend="memcached",
            params=p,
            metrics={"connected": 200000, "connect_rate": 2100.0, "not_answering": 0},
        )

    def test_cluster_target_needs_its_size(self) -> None:
        t = {x["name"]: x for x in check_targets(self._connect("verify", shared_ports=True))}
        cluster = t["cluster connections/s (12 nodes, shared ports)"]
        self.assertTrue(cluster["met"])
        self.assertTrue(cluster["at_target_size"])
        self.assertNotIn("connection rate (/s)", t)  # the single-server target is connect's
        t2 = {x["name"]: x for x in check_targets(self._connect("verify"))}
        self.assertFalse(t2["cluster connections/s (12 nodes, shared ports)"]["at_target_size"])
        plain = {x["name"] for x in check_targets(self._connect(None))}
        self.assertIn("connection rate (/s)", plain)
        self.assertNotIn("cluster connections/s (12 nodes, shared ports)", plain)

    def test_strict_flags_silent_devices(self) -> None:
        r = self._connect("verify")
        r["metrics"] = {"not_answering": 3, "verify": {"undelivered": 2}}
        problems = _strict_problems(r)
        self.assertTrue(any("3 devices not answering" in p for p in problems))
        self.assertTrue(any("2 verify PUTs" in p for p in problems))
        not_met = [t for t in check_targets(r) if not t["met"]]
        self.assertEqual(
            {t["name"] for t in not_met},
            {"devices not answering after the ramp", "verify PUTs not delivered"},
        )


RAW = [
    "thread (0x1): MainThread;run (twisted/internet/base.py:1318);"
    "doIteration (epollreactor.py:212);render (pushtwisted/web/endpoint.py:80) 30",
    "thread (0x1): MainThread;run (twisted/internet/base.py:1318);"
    "doIteration (epollreactor.py:215) 10",
    "thread (0x2): PoolThread-storage-1;work (threadpool.py:9);gets (pymemcache/base.py:5) 6",
    "thread (0x3): PoolThread-storage-2;work (threadpool.py:9);cas (pymemcache/base.py:7) 3",
    "thread (0x2);work (threadpool.py:9);gets (pymemcache/base.py:5) 1",
    "garbage line without a count",
]


class ProfileTests(unittest.TestCase):
    def test_parse_collapsed(self) -> None:
        stacks = parse_collapsed(RAW)
        self.assertEqual(len(stacks), 5)
        self.assertEqual(sum(s.count for s in stacks), 50)
        self.assertEqual(stacks[0].thread_name, "MainThread")
        self.assertEqual(stacks[0].frames[-1], "render (pushtwisted/web/endpoint.py:80)")
        self.assertEqual(stacks[4].thread_name, "PoolThread-storage-1")  # torn: name borrowed

    def test_thread_group(self) -> None:
        self.assertEqual(thread_group("PoolThread-storage-10", "0x9"), "PoolThread-storage-*")
        self.assertEqual(thread_group("MainThread", "0x1"), "MainThread")
        self.assertEqual(thread_group("", "0x9"), "thread 0x9")

    def test_top_frames(self) -> None:
        top = top_frames(parse_collapsed(RAW))
        self.assertEqual(top["samples"], 50)
        main, pool = top["groups"]
        self.assertEqual((main["group"], main["samples"], main["threads"]), ("MainThread", 40, 1))
        self.assertEqual(pool["threads"], 2)
        # lines of one function are one entry; self: the leaf, total: anywhere in the stack
        self.assertEqual(main["self"][0][:2], ("render (pushtwisted/web/endpoint.py)", 30))
        self.assertIn(("doIteration (epollreactor.py)", 40, 0.8), main["total"])
        self.assertEqual(pool["self"][0][:2], ("gets (pymemcache/base.py)", 7))
        md = top_markdown(top, "t")
        self.assertIn("| PoolThread-storage-* | 2 | 10 | 20.0% |", md)

    def test_speedscope(self) -> None:
        doc = speedscope(parse_collapsed(RAW), "x")
        self.assertIn("$schema", doc)
        frames = doc["shared"]["frames"]
        names = [f["name"] for f in frames]
        self.assertEqual(len(names), len(set(map(str, frames))))  # each frame once
        self.assertEqual(sum(sum(p["weights"]) for p in doc["profiles"]), 50)
        main = doc["profiles"][0]
        self.assertEqual(main["endValue"], 40)
        self.assertEqual(frames[main["samples"][0][-1]]["line"], 80)
        self.assertEqual(len(main["samples"]), len(main["weights"]))

    def test_command_flags(self) -> None:
        from pathlib import Path

        cmd = Profiler("py-spy", Path("/tmp/x")).command(7, Path("/tmp/x/p.txt"))
        self.assertEqual(cmd[:3], ["py-spy", "record", "-p"])
        self.assertIn("--gil", cmd)
        self.assertIn("--threads", cmd)
        self.assertNotIn("--nonblocking", cmd)
        other = Profiler("py-spy", Path("/tmp/x"), gil=False, nonblocking=True, idle=True)
        cmd2 = other.command(7, Path("/tmp/x/p.txt"))
        self.assertNotIn("--gil", cmd2)
        self.assertIn("--nonblocking", cmd2)
        self.assertIn("--idle", cmd2)

    def test_profile_takes_the_run_options(self) -> None:
        args = build_parser().parse_args(
            ["profile", "--backend", "memcached", "--scenario", "notify", "--all-threads"]
        )
        self.assertTrue(args.all_threads)
        self.assertEqual(args.sample_rate, 100)
        self.assertEqual(scenario_params(args, "notify")["mode"], "saturated")


if __name__ == "__main__":
    unittest.main()
