"""The load generator's pure parts: frames, HTTP parsing, percentiles, result schema.

No server is started here (the end-to-end ``python -m bench run --tiny`` is a
separate CI step).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import random
import struct
import unittest
from typing import Any

from bench import SCHEMA
from bench.__main__ import PRESETS, build_parser, check_nodes, scenario_params
from bench.client import Device
from bench.results import (
    check_targets,
    histogram,
    markdown_table,
    summary_rows,
    validate_result,
)
from bench.scenarios import Target, _gc_pause, _ServerMeter, split
from bench.server import ClusterHandle, cluster_node_config, node_cpus, render_config
from bench.stats import median, merge_counts, percentile, summarize
from bench.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    FrameError,
    HttpError,
    HttpResponseParser,
    encode_close,
    encode_frame,
    make_ws_key,
    mask_payload,
    parse_upgrade_response,
    post_request,
    put_request,
    upgrade_request,
    ws_accept,
)
from bench.worker import Worker, message_body, message_seq


def _unmask_client_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """Decode one masked client frame the way a server would (independent of FrameDecoder)."""
    b0, b1 = frame[0], frame[1]
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        n = struct.unpack("!H", frame[2:4])[0]
        pos = 4
    elif n == 127:
        n = struct.unpack("!Q", frame[2:10])[0]
        pos = 10
    key = frame[pos : pos + 4]
    data = frame[pos + 4 : pos + 4 + n]
    assert len(data) == n
    return b0 & 0x0F, bool(b0 & 0x80), bytes(b ^ key[i % 4] for i, b in enumerate(data))


class FrameTests(unittest.TestCase):
    def test_mask_is_involution_and_matches_bytewise_xor(self) -> None:
        rng = random.Random(1)
        for n in (0, 1, 3, 4, 5, 125, 126, 1000, 70000):
            data = bytes(rng.getrandbits(8) for _ in range(n))
            key = bytes(rng.getrandbits(8) for _ in range(4))
            masked = mask_payload(key, data)
            self.assertEqual(masked, bytes(b ^ key[i % 4] for i, b in enumerate(data)))
            self.assertEqual(mask_payload(key, masked), data)

    def test_client_frames_decode_like_a_server_would(self) -> None:
        for n in (0, 10, 125, 126, 65535, 65536, 100000):
            payload = (b"x" * n)[:n]
            op, fin, data = _unmask_client_frame(encode_frame(OP_TEXT, payload))
            self.assertEqual((op, fin, data), (OP_TEXT, True, payload))

    def test_length_encodings(self) -> None:
        self.assertEqual(len(encode_frame(OP_TEXT, b"a" * 125, mask=False)), 2 + 125)
        self.assertEqual(len(encode_frame(OP_TEXT, b"a" * 126, mask=False)), 4 + 126)
        self.assertEqual(len(encode_frame(OP_TEXT, b"a" * 65536, mask=False)), 10 + 65536)
        self.assertEqual(len(encode_frame(OP_TEXT, b"a" * 10)), 2 + 4 + 10)

    def test_round_trip_any_split(self) -> None:
        msgs = [
            (OP_TEXT, b'{"messageType":"hello","uaid":"x","status":200}'),
            (OP_PING, b"p"),
            (OP_TEXT, "é".encode() * 200),
            (OP_BINARY, bytes(range(256)) * 300),
            (OP_CLOSE, struct.pack("!H", 1000)),
        ]
        for masked in (False, True):
            stream = b"".join(encode_frame(op, p, mask=masked) for op, p in msgs)
            for step in (1, 2, 3, 7, 64, 1000, len(stream)):
                dec = FrameDecoder()
                got = []
                for i in range(0, len(stream), step):
                    got.extend(dec.feed(stream[i : i + step]))
                self.assertEqual(got, msgs, f"masked={masked} step={step}")

    def test_fragmented_message_with_interleaved_ping(self) -> None:
        stream = (
            encode_frame(OP_TEXT, b"hel", mask=False, fin=False)
            + encode_frame(OP_PING, b"", mask=False)
            + encode_frame(OP_CONT, b"lo", mask=False, fin=False)
            + encode_frame(OP_CONT, b"!", mask=False)
        )
        self.assertEqual(FrameDecoder().feed(stream), [(OP_PING, b""), (OP_TEXT, b"hello!")])

    def test_protocol_errors(self) -> None:
        with self.assertRaises(FrameError):
            FrameDecoder().feed(encode_frame(OP_CONT, b"x", mask=False))
        with self.assertRaises(FrameError):
            FrameDecoder().feed(bytes([0x80 | 0x40 | OP_TEXT, 0]))  # RSV1
        with self.assertRaises(FrameError):
            FrameDecoder().feed(encode_frame(OP_PING, b"x", mask=False, fin=False))

    def test_close_frame(self) -> None:
        op, _fin, data = _unmask_client_frame(encode_close(1001, "bye"))
        self.assertEqual(op, OP_CLOSE)
        self.assertEqual(struct.unpack("!H", data[:2])[0], 1001)
        self.assertEqual(data[2:], b"bye")


class HandshakeTests(unittest.TestCase):
    def test_rfc6455_example(self) -> None:
        self.assertEqual(ws_accept(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_upgrade_request_and_response(self) -> None:
        key = make_ws_key()
        req = upgrade_request("127.0.0.1:8080", "/", key, "push-notification")
        self.assertTrue(req.startswith(b"GET / HTTP/1.1\r\n"))
        self.assertIn(b"Sec-WebSocket-Key: " + key, req)
        self.assertIn(b"Sec-WebSocket-Protocol: push-notification", req)
        self.assertTrue(req.endswith(b"\r\n\r\n"))
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key)
        )
        self.assertEqual(parse_upgrade_response(head, key), (101, None))
        self.assertEqual(
            parse_upgrade_response(head.replace(ws_accept(key), b"nope"), key),
            (101, "ws_bad_accept"),
        )
        self.assertEqual(
            parse_upgrade_response(b"HTTP/1.1 503 Busy\r\nContent-Length: 0", key),
            (503, "ws_status_503"),
        )
        self.assertEqual(parse_upgrade_response(b"garbage", key), (0, "ws_bad_response"))


class HttpTests(unittest.TestCase):
    def test_put_request(self) -> None:
        req = put_request("127.0.0.1:9", "/update/abc", b"version=7")
        head, body = req.split(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"PUT /update/abc HTTP/1.1\r\n"))
        self.assertIn(b"Content-Length: 9", head)
        self.assertEqual(body, b"version=7")

    def test_post_request(self) -> None:
        """A WebPush POST: TTL, Content-Encoding and the exact body length."""
        req = post_request("127.0.0.1:8081", "/wpush/v1/tok", b"\x00" * 3072)
        head, _, body = req.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"POST /wpush/v1/tok HTTP/1.1\r\n"))
        self.assertIn(b"\r\nTTL: 60", head)
        self.assertIn(b"\r\nContent-Encoding: aes128gcm", head)
        self.assertIn(b"\r\nContent-Length: 3072", head)
        self.assertEqual(body, b"\x00" * 3072)

    def test_keep_alive_stream_any_split(self) -> None:
        stream = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        want = [(200, b"{}", True), (202, b"abcde", True), (204, b"", True), (503, b"", False)]
        for step in (1, 5, 17, len(stream)):
            p = HttpResponseParser()
            got = []
            for i in range(0, len(stream), step):
                got.extend(p.feed(stream[i : i + step]))
            self.assertEqual(got, want, f"step={step}")

    def test_body_until_close(self) -> None:
        p = HttpResponseParser()
        self.assertEqual(p.feed(b"HTTP/1.0 410 Gone\r\n\r\ngone"), [])
        self.assertEqual(p.eof(), (410, b"gone", False))

    def test_bad_status_line(self) -> None:
        with self.assertRaises(HttpError):
            HttpResponseParser().feed(b"SSH-2.0-x\r\n\r\n")


class StatsTests(unittest.TestCase):
    def test_percentile_matches_numpy_linear(self) -> None:
        vals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
        self.assertEqual(percentile(vals, 0), 1.0)
        self.assertEqual(percentile(vals, 100), 10.0)
        self.assertAlmostEqual(percentile(vals, 50), 5.5)
        self.assertAlmostEqual(percentile(vals, 90), 9.1)
        self.assertAlmostEqual(percentile(vals, 99), 9.91)
        self.assertEqual(percentile([3.0], 99), 3.0)
        self.assertIsNone(percentile([], 50))
        with self.assertRaises(ValueError):
            percentile(vals, 101)

    def test_percentile_is_monotonic(self) -> None:
        rng = random.Random(5)
        vals = sorted(rng.expovariate(1.0) for _ in range(1001))
        ps = [percentile(vals, p) for p in range(0, 101)]
        self.assertEqual(ps, sorted(ps))
        self.assertAlmostEqual(percentile(vals, 50), vals[500])

    def test_summarize_in_ms(self) -> None:
        s = summarize([0.001, 0.002, 0.003, 0.004])
        self.assertEqual(s["n"], 4)
        self.assertEqual(s["min"], 1.0)
        self.assertEqual(s["max"], 4.0)
        self.assertEqual(s["p50"], 2.5)
        self.assertEqual(s["mean"], 2.5)
        empty = summarize([])
        self.assertEqual(empty["n"], 0)
        self.assertIsNone(empty["p99"])

    def test_median_and_counts(self) -> None:
        self.assertEqual(median([3, 1, 2]), 2)
        self.assertEqual(median([4, 1, 2, 3]), 2.5)
        self.assertEqual(median([None, 7]), 7)
        self.assertIsNone(median([]))
        self.assertEqual(merge_counts({"a": 1}, {"a": 2, "b": 1}), {"a": 3, "b": 1})

    def test_gc_probe_field(self) -> None:
        self.assertEqual(_gc_pause({"max_pause_ms": 12}), 12.0)
        self.assertEqual(_gc_pause({"status": "OK", "gc": {"max_pause_ms": 3.5}}), 3.5)
        self.assertIsNone(_gc_pause({"status": "OK"}))
        self.assertIsNone(_gc_pause(None))

    def test_split(self) -> None:
        self.assertEqual(split(10, 3), [4, 3, 3])
        self.assertEqual(sum(split(19500, 2)), 19500)

    def test_histogram(self) -> None:
        h = histogram([0.001, 0.001, 0.010, 0.5])
        self.assertEqual(sum(h["counts"]), 4)
        self.assertEqual(len(h["counts"]), len(h["lower_edges_ms"]))


def sample_result(**over: object) -> dict[str, object]:
    lat = summarize([0.001, 0.002, 0.004])
    r: dict[str, object] = {
        "schema": SCHEMA,
        "scenario": "notify",
        "backend": "memory",
        "run_id": "20260101T000000",
        "repeat_index": 0,
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 3.5,
        "command": ["python", "-m", "bench", "run", "--tiny"],
        "params": {
            "devices": 10000,
            "puts": 50000,
            "inflight": 64,
            "rate": 0.0,
            "mode": "saturated",
        },
        "machine": {"cpu_model": "x", "cores": 2},
        "server": {"pid": 1, "cpus": [0]},
        "generator": {"procs": 1, "cpus": [1]},
        "metrics": {
            "devices": 10000,
            "sent": 50000,
            "received": 50000,
            "lost": 0,
            "duplicates": 0,
            "throughput": 6000.0,
            "latency": lat,
            "statuses": {"200": 50000},
            "http_errors": 0,
        },
        "failures": {},
        "targets": [],
        "ok": True,
    }
    r.update(over)
    return r


class ResultTests(unittest.TestCase):
    def test_schema_valid(self) -> None:
        r = sample_result()
        r["targets"] = check_targets(r)
        self.assertEqual(validate_result(r), [])
        json.dumps(r, allow_nan=False)

    def test_schema_problems(self) -> None:
        r = sample_result()
        del r["metrics"]["lost"]  # type: ignore[attr-defined]
        r["failures"] = {"tcp_refused": "3"}
        del r["machine"]
        problems = validate_result(r)
        self.assertIn("missing machine", problems)
        self.assertIn("metrics.lost missing", problems)
        self.assertTrue(any("tcp_refused" in p for p in problems))
        self.assertIn("unknown scenario 'x'", validate_result(sample_result(scenario="x")))

    def test_targets(self) -> None:
        t = {x["name"]: x for x in check_targets(sample_result())}
        self.assertTrue(t["notifications/s saturated"]["met"])
        self.assertTrue(t["notifications/s saturated"]["at_target_size"])
        self.assertTrue(t["lost notifications"]["met"])
        small = sample_result(params={"devices": 50, "puts": 200, "mode": "saturated"})
        t2 = {x["name"]: x for x in check_targets(small)}
        self.assertFalse(t2["notifications/s saturated"]["at_target_size"])

    def test_medians_of_runs(self) -> None:
        runs = []
        for i, tput in enumerate((4000.0, 6000.0, 5500.0)):
            r = sample_result(repeat_index=i)
            r["metrics"] = copy.deepcopy(r["metrics"])
            r["metrics"]["throughput"] = tput  # type: ignore[index]
            r["targets"] = check_targets(r)
            runs.append(r)
        rows = summary_rows(runs)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["runs"], 3)
        self.assertEqual(rows[0]["values"]["notif/s"], 5500.0)
        md = markdown_table(runs)
        self.assertIn("| memory | 1 | saturated | - | 3 |", md)
        self.assertIn("5,500", md)

    def test_nodes_grouped_and_shown(self) -> None:
        """Runs with different ``nodes`` are separate rows; old results count as 1 node."""
        runs = []
        for nodes, tput in ((None, 3000.0), (2, 4000.0), (4, 4500.0), (4, 4700.0)):
            r = sample_result(backend="memcached")
            if nodes is not None:
                r["nodes"] = nodes
            r["metrics"] = copy.deepcopy(r["metrics"])
            r["metrics"]["throughput"] = tput  # type: ignore[index]
            runs.append(r)
        rows = {row["nodes"]: row for row in summary_rows(runs)}
        self.assertEqual(sorted(rows), [1, 2, 4])
        self.assertEqual(rows[4]["runs"], 2)
        self.assertEqual(rows[4]["values"]["notif/s"], 4600.0)
        md = markdown_table(runs)
        self.assertIn("| backend | nodes | mode |", md)
        self.assertIn("| memcached | 4 | saturated | - | 2 |", md)


class AccountingTests(unittest.TestCase):
    """The worker's bookkeeping of PUTs and notifications (no sockets involved)."""

    def _worker(self) -> tuple[Worker, Device]:
        w = Worker(None, 0)  # type: ignore[arg-type]
        dev = Device(w, 0, "127.0.0.2")
        dev.chid = "c1"
        return w, dev

    def test_received_duplicate_superseded_lost(self) -> None:
        w, dev = self._worker()
        w.pending = {"c1": {1: 0.0, 2: 0.0, 3: 0.0}, "c2": {1: 0.0}}
        w.on_updates(dev, [{"channelID": "c1", "version": 2}])
        self.assertEqual((w.received, w.superseded), (1, 1))  # version 1 superseded by 2
        w.on_updates(dev, [{"channelID": "c1", "version": 2}])
        self.assertEqual(w.duplicates, 1)
        w.on_updates(dev, [{"channelID": "c1", "version": 1}])  # older, after 2: out of order
        self.assertEqual((w.stale, w.duplicates), (1, 1))
        w.on_updates(dev, [{"channelID": "c1", "version": 3}, {"channelID": "zz", "version": 9}])
        self.assertEqual((w.received, w.unexpected), (2, 1))
        self.assertEqual(w.lost_count(), 1)  # c2 version 1 never arrived
        self.assertEqual(len(w.latencies), 2)
        w.on_updates(dev, [{"channelID": "c1"}, "junk"])
        self.assertEqual(w.counters["bad_update"], 2)

    def test_webpush_message(self) -> None:
        """A WebPush notification is tracked by the sequence number at the start of its
        data, and acked by its id with code 100."""
        w, dev = self._worker()
        sent: list[str] = []

        class _Proto:
            transport = object()

            def send_text(self, text: str) -> None:
                sent.append(text)

        dev.proto = _Proto()  # type: ignore[assignment]
        w.pending = {"c1": {7: 0.0}}
        body = message_body(7, b"\xff" * 3063)
        self.assertEqual(len(body), 3072)
        data = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        self.assertEqual(message_seq(data), 7)
        msg = {"messageType": "notification", "channelID": "c1", "version": "id-7", "data": data}
        dev.on_text(json.dumps(msg).encode())
        self.assertEqual((w.received, w.lost_count()), (1, 0))
        self.assertEqual(
            [json.loads(t) for t in sent],
            [
                {
                    "messageType": "ack",
                    "updates": [{"channelID": "c1", "version": "id-7", "code": 100}],
                }
            ],
        )
        dev.on_text(b'{"messageType":"notification","channelID":"c1","version":"x"}')
        dev.on_text(b'{"messageType":"notification","channelID":"c1","data":"abc"}')
        self.assertEqual(w.counters["bad_notification"], 2)

    def test_text_dispatch(self) -> None:
        w, dev = self._worker()
        w.pending = {"c1": {5: 0.0}}
        dev.on_text(b'{"messageType":"notification","updates":[{"channelID":"c1","version":5}]}')
        self.assertEqual(w.received, 1)
        dev.on_text(b"not json")
        dev.on_text(b'{"messageType":"register","status":200}')  # nobody waiting
        self.assertEqual(w.counters, {"bad_json": 1, "unexpected_register": 1})


class CliTests(unittest.TestCase):
    def test_tiny_preset_is_small(self) -> None:
        args = build_parser().parse_args(["run", "--tiny", "--scenario", "all"])
        self.assertEqual(args.preset, "tiny")
        self.assertLessEqual(scenario_params(args, "connect")["devices"], 100)
        self.assertEqual(scenario_params(args, "notify")["mode"], "saturated")
        self.assertEqual(scenario_params(args, "notify-rate")["mode"], "rate")
        self.assertLessEqual(scenario_params(args, "churn")["cycles"], 50)
        self.assertEqual(PRESETS["full"]["connect"]["devices"], 19500)

    def test_overrides(self) -> None:
        args = build_parser().parse_args(
            ["run", "--devices", "123", "--rate", "50", "--cycles", "7", "--puts", "9"]
        )
        self.assertEqual(scenario_params(args, "connect")["devices"], 123)
        self.assertEqual(scenario_params(args, "notify-rate")["rate"], 50.0)
        self.assertEqual(scenario_params(args, "notify")["puts"], 9)
        self.assertEqual(scenario_params(args, "churn")["cycles"], 7)

    def test_render_config(self) -> None:
        import tomllib

        text = render_config(
            {
                "websocket": {"listen": "tcp:1:interface=127.0.0.1", "backlog": 4096},
                "client": {"min_ping_interval": 0, "x": True},
                "storage": {"servers": ["127.0.0.1:11211"], "path": 'a"b'},
            }
        )
        parsed = tomllib.loads(text)
        self.assertEqual(parsed["websocket"]["backlog"], 4096)
        self.assertEqual(parsed["storage"]["servers"], ["127.0.0.1:11211"])
        self.assertEqual(parsed["storage"]["path"], 'a"b')
        self.assertIs(parsed["client"]["x"], True)


class NodesTests(unittest.TestCase):
    """``--nodes N``: argument checks and the cluster configuration (no server started)."""

    def _args(self, *extra: str) -> argparse.Namespace:
        return build_parser().parse_args(["run", *extra])

    def test_default_is_one_node(self) -> None:
        args = self._args("--tiny")
        self.assertEqual(args.nodes, 1)
        check_nodes(args)  # memory backend, 1 node: fine

    def test_memcached_only(self) -> None:
        check_nodes(self._args("--backend", "memcached", "--nodes", "4"))
        for backend in ("memory", "sqlite"):
            with self.assertRaises(SystemExit) as cm:
                check_nodes(self._args("--backend", backend, "--nodes", "2"))
            self.assertIn("memcached", str(cm.exception.code))

    def test_bad_combinations(self) -> None:
        with self.assertRaises(SystemExit):
            check_nodes(self._args("--backend", "memcached", "--nodes", "0"))
        with self.assertRaises(SystemExit) as cm:
            check_nodes(
                self._args(
                    "--backend", "memcached", "--nodes", "2", "--target", "ws://127.0.0.1:1/"
                )
            )
        self.assertIn("--target", str(cm.exception.code))

    def test_nodes_recorded_in_params(self) -> None:
        args = self._args("--backend", "memcached", "--nodes", "2", "--tiny")
        self.assertEqual(args.nodes, 2)
        self.assertEqual(scenario_params(args, "notify")["puts"], 200)

    def test_node_cpus(self) -> None:
        self.assertEqual(node_cpus(None, 3), [None, None, None])
        self.assertEqual(node_cpus([0], 4), [[0], [0], [0], [0]])  # --pin on 2 cores
        self.assertEqual(node_cpus([0, 2, 3], 4), [[0], [2], [3], [0]])

    def test_cluster_config_is_valid_for_the_server(self) -> None:
        """The generated per-node config passes pushtwisted's own cluster checks."""
        import tomllib

        from pushtwisted.config import parse_config
        from pushtwisted.tokens import generate_key

        key = generate_key()
        sections: dict[str, dict[str, Any]] = {
            "websocket": {"listen": "tcp:1:interface=127.0.0.1"},
            "endpoint": {
                "listen": "tcp:2:interface=127.0.0.1",
                "public_url": "http://127.0.0.1:2",
            },
            "storage": {"backend": "memcached", "servers": ["127.0.0.1:3"]},
        }
        made = []
        for router_port in (4001, 4002):
            cfg = cluster_node_config(router_port, "s" * 32, key, "bench-x:")
            for name, table in cfg.items():
                merged = dict(sections.get(name, {}))
                merged.update(table)
                cfg[name] = merged
            for name, table in sections.items():
                cfg.setdefault(name, table)
            doc = tomllib.loads(render_config(cfg))
            made.append(parse_config(doc, environ={}))
        a, b = made
        self.assertEqual(a.crypto.keys, b.crypto.keys)
        self.assertEqual(a.router.secret, b.router.secret)
        self.assertEqual(a.storage.key_prefix, "bench-x:")
        self.assertNotEqual(a.router.listen, b.router.listen)
        self.assertEqual(a.router.public_url, "http://127.0.0.1:4001")

    def test_accounting_sums_over_pids(self) -> None:
        import os

        t = Target("127.0.0.1", 1, 10, pids=[10, 11])
        self.assertEqual(t.all_pids(), [10, 11])
        self.assertEqual(Target("127.0.0.1", 1, 7).all_pids(), [7])
        self.assertEqual(Target("127.0.0.1", 1).all_pids(), [])
        me = os.getpid()
        single = _ServerMeter([me]).used()
        double = _ServerMeter([me, me])
        self.assertIsNotNone(single)
        self.assertIsNotNone(double.c0)
        self.assertIsNone(_ServerMeter([]).used())

    def test_cluster_handle_unpinned_cpus(self) -> None:
        h = ClusterHandle(nodes=[], memcached=None, memcached_port=1)
        self.assertIsNone(h.cpus)
        self.assertTrue(h.alive())  # vacuous: no node
        self.assertEqual(h.pids, [])


if __name__ == "__main__":
    unittest.main()
