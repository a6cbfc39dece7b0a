"""Tests for ``pushtwisted.prometheus.PrometheusMetrics``."""

from __future__ import annotations

import math
import threading

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from twisted.logger import LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted.metrics import Metrics, NullMetrics
from pushtwisted.prometheus import METRIC_NAMES, PrometheusMetrics


def _samples(metrics: PrometheusMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse ``render()`` into ``{(sample name, labels): value}``."""
    body, _ = metrics.render()
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(metrics: PrometheusMetrics, name: str, **labels: str) -> float | None:
    """Return the value of one sample of ``render()``'s output, or None."""
    return _samples(metrics).get((name, frozenset(labels.items())))


class PrometheusMetricsTests(SynchronousTestCase):
    """``PrometheusMetrics`` maps our names to Prometheus metrics and never raises."""

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        self.metrics = PrometheusMetrics()
        self.metrics.log = Logger(observer=self.events.append)  # type: ignore[misc]

    def test_is_a_metrics(self) -> None:
        """Both implementations satisfy the ``Metrics`` protocol."""
        implementations: list[Metrics] = [self.metrics, NullMetrics()]
        for m in implementations:
            m.increment("hellos")
            m.gauge("connections", 1)
            m.observe("storage_latency_seconds", 0.1, operation="ack")

    def test_counter(self) -> None:
        """``increment`` adds to the ``_total`` counter, by 1 or by ``value``."""
        self.assertEqual(_value(self.metrics, "pushtwisted_hellos_total"), 0.0)
        self.metrics.increment("hellos")
        self.metrics.increment("hellos", 3)
        self.assertEqual(_value(self.metrics, "pushtwisted_hellos_total"), 4.0)

    def test_labelled_counter(self) -> None:
        """Labels select the series of a labelled counter."""
        self.metrics.increment("notifications_rejected", reason="gone")
        self.metrics.increment("notifications_rejected", reason="gone")
        self.metrics.increment("notifications_rejected", reason="too_big")
        self.metrics.increment("endpoint_requests", status="202")
        name = "pushtwisted_notifications_rejected_total"
        self.assertEqual(_value(self.metrics, name, reason="gone"), 2.0)
        self.assertEqual(_value(self.metrics, name, reason="too_big"), 1.0)
        self.assertEqual(
            _value(self.metrics, "pushtwisted_endpoint_requests_total", status="202"), 1.0
        )

    def test_missing_label(self) -> None:
        """A declared label left out of a call is exported as ``unknown``."""
        self.metrics.increment("protocol_errors")
        self.assertEqual(
            _value(self.metrics, "pushtwisted_protocol_errors_total", reason="unknown"), 1.0
        )

    def test_gauge(self) -> None:
        """``gauge`` sets a gauge and ``increment`` moves it either way."""
        self.metrics.gauge("connections", 7)
        self.metrics.increment("connections", -2)
        self.metrics.gauge("storage_queue_depth", 3)
        self.assertEqual(_value(self.metrics, "pushtwisted_connections"), 5.0)
        self.assertEqual(_value(self.metrics, "pushtwisted_storage_queue_depth"), 3.0)

    def test_storage_histogram(self) -> None:
        """``observe`` feeds the storage latency histogram per operation."""
        self.metrics.observe("storage_latency_seconds", 0.002, operation="update")
        self.metrics.observe("storage_latency_seconds", 0.2, operation="update")
        self.metrics.observe("storage_latency_seconds", 3.0, operation="check")
        name = "pushtwisted_storage_latency_seconds"
        self.assertEqual(_value(self.metrics, f"{name}_count", operation="update"), 2.0)
        self.assertAlmostEqual(_value(self.metrics, f"{name}_sum", operation="update"), 0.202)
        self.assertEqual(
            _value(self.metrics, f"{name}_bucket", operation="update", le="0.0025"), 1.0
        )
        self.assertEqual(_value(self.metrics, f"{name}_bucket", operation="update", le="0.25"), 2.0)
        self.assertEqual(_value(self.metrics, f"{name}_bucket", operation="check", le="+Inf"), 1.0)

    def test_endpoint_histogram(self) -> None:
        """``endpoint_latency_seconds`` is exported as the request duration histogram."""
        self.metrics.observe("endpoint_latency_seconds", 0.04, status="200")
        name = "pushtwisted_endpoint_request_duration_seconds"
        self.assertEqual(_value(self.metrics, f"{name}_count", status="200"), 1.0)
        self.assertEqual(_value(self.metrics, f"{name}_bucket", status="200", le="0.05"), 1.0)
        self.assertEqual(_value(self.metrics, f"{name}_bucket", status="200", le="0.025"), 0.0)

    def test_unknown_name(self) -> None:
        """An unknown name is ignored with one warning, however often it is used."""
        before = _samples(self.metrics)
        for _ in range(3):
            self.metrics.increment("no_such_metric")
            self.metrics.gauge("no_such_metric", 1)
            self.metrics.observe("no_such_metric", 1)
        self.assertEqual(
            {k for k in _samples(self.metrics) if "no_such" in k[0]},
            set(),
        )
        self.assertEqual(len(_samples(self.metrics)), len(before))
        warnings = [e for e in self.events if e.get("metric") == "no_such_metric"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"].name, "warn")

    def test_wrong_call(self) -> None:
        """A call that does not fit the metric's type is ignored and warned once."""
        self.metrics.observe("hellos", 1.0)
        self.metrics.observe("hellos", 1.0)
        self.metrics.gauge("hellos", 10)
        self.metrics.increment("storage_latency_seconds", operation="x")
        self.assertEqual(_value(self.metrics, "pushtwisted_hellos_total"), 0.0)
        self.assertEqual(len(self.events), 3)

    def test_negative_counter(self) -> None:
        """A negative increment of a counter is refused without raising."""
        self.metrics.increment("acks", -1)
        self.metrics.increment("acks", -1)
        self.assertEqual(_value(self.metrics, "pushtwisted_acks_total"), 0.0)
        self.assertEqual(len(self.events), 1)
        self.assertIn("ValueError", self.events[0]["error"])

    def test_undeclared_label(self) -> None:
        """Undeclared labels are dropped (warned once); the value still counts."""
        self.metrics.increment("hellos", node="a")
        self.metrics.increment("hellos", node="b")
        self.assertEqual(_value(self.metrics, "pushtwisted_hellos_total"), 2.0)
        self.assertEqual(len(self.events), 1)

    def test_repeated_calls_keep_their_series(self) -> None:
        """Repeated calls (resolved once, then remembered) still land on their own series,
        also past the number of calls remembered."""
        for _ in range(3):
            self.metrics.increment("endpoint_requests", status="200")
            self.metrics.observe("endpoint_latency_seconds", 0.002, status="200")
            self.metrics.gauge("storage_queue_depth", 4)
        self.metrics.increment("endpoint_requests", status="404")
        for n in range(5000):
            self.metrics.increment("protocol_errors", reason=f"r{n}")
        self.metrics.increment("protocol_errors", reason="r4999")
        requests = "pushtwisted_endpoint_requests_total"
        self.assertEqual(_value(self.metrics, requests, status="200"), 3.0)
        self.assertEqual(_value(self.metrics, requests, status="404"), 1.0)
        duration = "pushtwisted_endpoint_request_duration_seconds_count"
        self.assertEqual(_value(self.metrics, duration, status="200"), 3.0)
        self.assertEqual(_value(self.metrics, "pushtwisted_storage_queue_depth"), 4.0)
        errors = "pushtwisted_protocol_errors_total"
        self.assertEqual(_value(self.metrics, errors, reason="r0"), 1.0)
        self.assertEqual(_value(self.metrics, errors, reason="r4999"), 2.0)
        self.assertEqual(self.events, [])

    def test_counter_tallies(self) -> None:
        """Increments on the building thread are tallied and show at every collection
        (render, ``get_sample_value``); other threads' go straight to the counter."""
        metrics = PrometheusMetrics(process_collectors=False)
        for _ in range(1000):
            metrics.increment("endpoint_requests", status="202")
            metrics.increment("hellos")
        self.assertEqual(len(metrics._tallies), 2)  # noqa: SLF001
        self.assertEqual(_value(metrics, "pushtwisted_hellos_total"), 1000.0)
        metrics.increment("hellos", 2.5)
        self.assertEqual(metrics.registry.get_sample_value("pushtwisted_hellos_total"), 1002.5)
        thread = threading.Thread(target=metrics.increment, args=("hellos", 10))
        thread.start()
        thread.join()
        self.assertEqual(metrics.registry.get_sample_value("pushtwisted_hellos_total"), 1012.5)
        self.assertEqual(
            _value(metrics, "pushtwisted_endpoint_requests_total", status="202"), 1000.0
        )

    def test_collected_elsewhere_folds_nothing(self) -> None:
        """A collection on another thread leaves the tallies to the building thread."""
        metrics = PrometheusMetrics(process_collectors=False)
        metrics.increment("hellos")
        metrics.increment("hellos")
        seen: list[float | None] = []
        thread = threading.Thread(
            target=lambda: seen.append(
                metrics.registry.get_sample_value("pushtwisted_hellos_total")
            )
        )
        thread.start()
        thread.join()
        self.assertEqual(seen, [1.0])
        self.assertEqual(metrics.registry.get_sample_value("pushtwisted_hellos_total"), 2.0)

    def test_histogram_observations_are_kept_then_folded(self) -> None:
        """Observations on the building thread give, at each collection, the buckets,
        count and sum ``prometheus_client``'s own ``observe`` gives for the same values."""
        metrics = PrometheusMetrics(process_collectors=False)
        reference = Histogram(
            "pushtwisted_endpoint_request_duration_seconds",
            "reference",
            ["status"],
            registry=CollectorRegistry(),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ).labels(status="202")
        values = [0.0004, 0.001, 0.0010001, 0.0025, 0.3, 10.0, 11.0, 1e9, -1.0, 0.0]
        for round_ in range(2):
            for value in values * 50:
                metrics.observe("endpoint_latency_seconds", value, status="202")
                reference.observe(value)
            self.assertEqual(len(metrics._observations), 1)  # noqa: SLF001
            expected = {
                (s.name, frozenset(s.labels.items())): s.value
                for s in reference.collect()[0].samples
                if not s.name.endswith("_created")
            }
            for key, want in expected.items():
                name, labels = key
                got = _value(metrics, name, status="202", **dict(labels))
                if name.endswith("_sum"):  # added in another order
                    self.assertTrue(got is not None and math.isclose(got, want, rel_tol=1e-12))
                else:
                    self.assertEqual(got, want, (round_, name, dict(labels)))

    def test_histogram_elsewhere_and_nan(self) -> None:
        """Other threads' observations go straight to the histogram, a collection on
        another thread folds nothing, infinity is in ``+Inf`` only, and NaN is the
        library's to count."""
        metrics = PrometheusMetrics(process_collectors=False)
        name = "pushtwisted_storage_latency_seconds"
        for _ in range(3):
            metrics.observe("storage_latency_seconds", 0.002, operation="update")
        seen: list[float | None] = []

        def elsewhere() -> None:
            metrics.observe("storage_latency_seconds", 0.002, operation="update")
            seen.append(metrics.registry.get_sample_value(f"{name}_count", {"operation": "update"}))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        self.assertEqual(seen, [2.0])  # the first call and the other thread's
        self.assertEqual(_value(metrics, f"{name}_count", operation="update"), 4.0)
        self.assertEqual(_value(metrics, f"{name}_bucket", operation="update", le="0.001"), 0.0)
        self.assertEqual(_value(metrics, f"{name}_bucket", operation="update", le="0.0025"), 4.0)
        metrics.observe("storage_latency_seconds", math.inf, operation="update")
        self.assertEqual(_value(metrics, f"{name}_bucket", operation="update", le="5.0"), 4.0)
        self.assertEqual(_value(metrics, f"{name}_bucket", operation="update", le="+Inf"), 5.0)
        metrics.observe("storage_latency_seconds", math.nan, operation="update")
        total = _value(metrics, f"{name}_sum", operation="update")
        self.assertTrue(total is not None and math.isnan(total))
        self.assertEqual(_value(metrics, f"{name}_count", operation="update"), 5.0)

    def test_gauge_increments_are_not_tallied(self) -> None:
        """A gauge's increments and sets keep their order (no tally)."""
        self.metrics.increment("connections", 5)
        self.metrics.increment("connections", 5)
        self.metrics.gauge("connections", 1)
        self.assertEqual(_value(self.metrics, "pushtwisted_connections"), 1.0)

    def test_gauge_keeps_its_last_value_until_collected(self) -> None:
        """Sets on the building thread keep only the last value, set at each collection;
        an increment goes after the last set, and another thread's set after both."""
        metrics = PrometheusMetrics(process_collectors=False)
        for value in range(1000):
            metrics.gauge("open_sockets", value, listener="websocket")
            metrics.gauge("connections", 1000 - value)
        self.assertEqual(len(metrics._latest), 2)  # noqa: SLF001
        sockets = "pushtwisted_open_sockets"
        self.assertEqual(_value(metrics, sockets, listener="websocket"), 999.0)
        self.assertEqual(_value(metrics, "pushtwisted_connections"), 1.0)
        metrics.gauge("connections", 7)
        metrics.increment("connections", 2)
        self.assertEqual(_value(metrics, "pushtwisted_connections"), 9.0)
        metrics.gauge("connections", 4)
        thread = threading.Thread(target=metrics.gauge, args=("connections", 11))
        thread.start()
        thread.join()
        self.assertEqual(_value(metrics, "pushtwisted_connections"), 11.0)
        metrics.gauge("connections", 0.5)
        self.assertEqual(_value(metrics, "pushtwisted_connections"), 0.5)

    def test_gauge_set_to_a_non_number_is_ignored_with_a_warning(self) -> None:
        """A value ``prometheus_client`` refuses is never kept: the warning comes at
        the call, the gauge keeps its value, and the exposition still renders."""
        self.metrics.gauge("connections", 3)
        self.metrics.gauge("connections", "many")  # type: ignore[arg-type]
        self.metrics.gauge("connections", "more")  # type: ignore[arg-type]
        body, _ = self.metrics.render()
        self.assertIn(b"\npushtwisted_connections 3.0\n", body)
        self.assertEqual(
            [(e["metric"], e["call"]) for e in self.events], [("connections", "gauge")]
        )
        self.assertIn("ValueError", self.events[0]["error"])

    def test_render(self) -> None:
        """``render`` returns the text exposition and its content type."""
        body, content_type = self.metrics.render()
        self.assertIsInstance(body, bytes)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"))
        self.assertIn(b"# TYPE pushtwisted_hellos_total counter", body)
        self.assertIn(b"# HELP pushtwisted_connections ", body)

    def test_build_info(self) -> None:
        """The version is exported as ``pushtwisted_build_info``."""
        self.assertEqual(
            _value(self.metrics, "pushtwisted_build_info", version=pushtwisted.__version__), 1.0
        )

    def test_process_metrics(self) -> None:
        """Process, platform and GC collectors are on the registry unless disabled."""
        names = {name for name, _ in _samples(self.metrics)}
        self.assertIn("python_info", names)
        self.assertIn("python_gc_objects_collected_total", names)
        self.assertIn("process_cpu_seconds_total", names)  # Linux /proc
        bare = PrometheusMetrics(process_collectors=False)
        bare_names = {name for name, _ in _samples(bare)}
        self.assertNotIn("python_info", bare_names)
        self.assertIn("pushtwisted_hellos_total", bare_names)

    def test_private_registry(self) -> None:
        """Nothing lands on the global registry, so instances do not collide."""
        other = PrometheusMetrics()
        other.increment("hellos")
        self.assertIsNot(other.registry, REGISTRY)
        self.assertIsNone(REGISTRY.get_sample_value("pushtwisted_hellos_total"))
        self.assertEqual(_value(self.metrics, "pushtwisted_hellos_total"), 0.0)

    def test_given_registry(self) -> None:
        """A registry passed in is used, even one that already has process collectors."""
        registry = CollectorRegistry()
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        metrics = PrometheusMetrics(registry)
        metrics.increment("pings")
        self.assertIs(metrics.registry, registry)
        self.assertEqual(registry.get_sample_value("pushtwisted_pings_total"), 1.0)
        self.assertIsNotNone(registry.get_sample_value("process_cpu_seconds_total"))

    def test_names(self) -> None:
        """Every name maps to a ``pushtwisted_`` metric; counters end in ``_total``."""
        for ours, theirs in METRIC_NAMES.items():
            self.assertTrue(theirs.startswith("pushtwisted_"), theirs)
            if ours not in (
                "connections",
                "open_sockets",
                "storage_queue_depth",
                "endpoint_latency_seconds",
                "storage_latency_seconds",
                "router_latency_seconds",
            ):
                self.assertTrue(theirs.endswith("_total"), theirs)
        self.assertEqual(
            METRIC_NAMES["endpoint_latency_seconds"],
            "pushtwisted_endpoint_request_duration_seconds",
        )

    def test_cluster_names(self) -> None:
        """The names the cluster router and the router listener emit are declared, with
        their labels, so none of them is dropped with a warning."""
        self.metrics.increment("router_requests", kind="push", result="ok")
        self.metrics.observe("router_latency_seconds", 0.003, kind="push")
        self.metrics.increment("router_received", kind="push", status="200")
        self.metrics.increment("route_outcomes", outcome="remote")
        self.metrics.increment("directory_errors", operation="get")
        self.assertEqual(self.events, [])
        self.assertEqual(
            _value(self.metrics, "pushtwisted_router_requests_total", kind="push", result="ok"),
            1.0,
        )
        self.assertEqual(
            _value(self.metrics, "pushtwisted_router_latency_seconds_count", kind="push"), 1.0
        )
        self.assertEqual(
            _value(self.metrics, "pushtwisted_router_received_total", kind="push", status="200"),
            1.0,
        )
        self.assertEqual(
            _value(self.metrics, "pushtwisted_route_outcomes_total", outcome="remote"), 1.0
        )
        self.assertEqual(
            _value(self.metrics, "pushtwisted_directory_errors_total", operation="get"), 1.0
        )
