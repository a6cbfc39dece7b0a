"""Tests for ``pushtwisted.web.status``: /status, /health and /metrics over StubTreq."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

import pushtwisted
from pushtwisted.errors import StorageUnavailable
from pushtwisted.metrics import NullMetrics
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import FailingStorage, FakeSession, HoldingStorage, make_node
from pushtwisted.web.status import (
    HealthResource,
    MetricsResource,
    StatusResource,
    add_status_children,
)

BASE = "http://node.example"


class StatusTestCase(SynchronousTestCase):
    """A node with controllable storage, its status children, and a StubTreq."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.failing = FailingStorage(MemoryStorage())
        self.storage = HoldingStorage(self.failing)
        self.registry: ClientRegistry[Any] = ClientRegistry()
        self.node = make_node(
            storage=self.storage, registry=self.registry, clock=self.clock, metrics=NullMetrics()
        )
        self.metrics = PrometheusMetrics()
        self.root = Resource()
        add_status_children(self.root, self.node, self.metrics)
        self.treq = StubTreq(self.root)

    def storage_mode(self, mode: str) -> None:
        """Make ``check()`` succeed (ok), fail, raise or hang (never answer)."""
        self.failing.failing = {"check"} if mode in ("fail", "raise") else set()
        self.failing.synchronous = mode == "raise"
        if mode == "fail":
            self.failing.error = StorageUnavailable("memcached at 10.0.0.5:11211 refused")
        else:
            self.failing.error = RuntimeError("bug in check")
        self.storage.held = {"check"} if mode == "hang" else set()

    def request(self, method: str, path: str) -> Any:
        """Make one request and return the response (it must be answered already)."""
        return self.successResultOf(self.treq.request(method, BASE + path))

    def json(self, response: Any) -> Any:
        """Return the JSON body of ``response``."""
        return self.successResultOf(response.json())

    def header(self, response: Any, name: bytes) -> bytes | None:
        """Return the single value of header ``name``."""
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None


class StatusResourceTests(StatusTestCase):
    """``/status`` is a liveness check: always 200, version and client count."""

    def test_status(self) -> None:
        """GET /status and /status/ answer 200 with version and clients."""
        self.registry.add("a" * 32, FakeSession())
        self.registry.add("b" * 32, FakeSession())
        for path in ("/status", "/status/"):
            response = self.request("GET", path)
            self.assertEqual(response.code, 200)
            self.assertEqual(self.header(response, b"Content-Type"), b"application/json")
            self.assertEqual(self.header(response, b"Cache-Control"), b"no-store")
            self.assertEqual(
                self.json(response),
                {"status": "OK", "version": pushtwisted.__version__, "clients": 2},
            )

    def test_status_ignores_storage(self) -> None:
        """Liveness does not depend on storage."""
        self.storage_mode("fail")
        self.assertEqual(self.request("GET", "/status").code, 200)

    def test_head(self) -> None:
        """HEAD answers like GET, without a body."""
        response = self.request("HEAD", "/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.content()), b"")

    def test_other_methods(self) -> None:
        """PUT, POST and DELETE are answered 405 with ``Allow`` and the JSON error shape."""
        for path in ("/status", "/status/", "/health", "/metrics/"):
            for method in ("PUT", "POST", "DELETE"):
                response = self.request(method, path)
                self.assertEqual(response.code, 405, (method, path))
                self.assertEqual(self.header(response, b"Allow"), b"GET, HEAD")
                self.assertEqual(self.json(response)["code"], 405)

    def test_sub_path(self) -> None:
        """A path below a status resource is a 404."""
        self.assertEqual(self.request("GET", "/status/extra").code, 404)


class HealthResourceTests(StatusTestCase):
    """``/health`` is a readiness check: 200 when storage answers in time, else 503."""

    def test_healthy(self) -> None:
        """With working storage, /health and /health/ answer 200."""
        for path in ("/health", "/health/"):
            response = self.request("GET", path)
            self.assertEqual(response.code, 200)
            body = self.json(response)
            self.assertEqual(body["status"], "OK")
            self.assertEqual(body["storage"], "OK")
            self.assertEqual(body["version"], pushtwisted.__version__)

    def test_storage_unavailable(self) -> None:
        """A check that errbacks ``StorageUnavailable`` gives 503 naming storage."""
        self.storage_mode("fail")
        response = self.request("GET", "/health")
        self.assertEqual(response.code, 503)
        body = self.json(response)
        self.assertEqual(body["status"], "FAIL")
        self.assertEqual(body["storage"], "unavailable: memcached at 10.0.0.5:11211 refused")
        self.assertNotIn("Traceback", str(body))

    def test_check_raises(self) -> None:
        """A check that raises something else gives 503 without the detail."""
        self.storage_mode("raise")
        response = self.request("GET", "/health")
        self.assertEqual(response.code, 503)
        body = self.json(response)
        self.assertEqual(body["storage"], "unavailable: internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_storage_hangs(self) -> None:
        """A check that does not answer within the timeout gives 503 and is cancelled."""
        self.storage_mode("hang")
        pending = self.treq.get(BASE + "/health")
        self.assertNoResult(pending)
        self.clock.advance(1.9)
        self.treq.flush()
        self.assertNoResult(pending)
        self.clock.advance(0.1)
        self.treq.flush()
        response = self.successResultOf(pending)
        self.assertEqual(response.code, 503)
        body = self.json(response)
        self.assertEqual(body["status"], "FAIL")
        self.assertEqual(body["storage"], "unavailable: no answer within 2s")
        self.assertEqual([call.cancelled for call in self.storage.pending], [True])

    def test_recovers(self) -> None:
        """After a failure, /health answers 200 again once storage recovers."""
        self.storage_mode("fail")
        self.assertEqual(self.request("GET", "/health").code, 503)
        self.storage_mode("hang")
        pending = self.treq.get(BASE + "/health")
        self.clock.advance(2)
        self.treq.flush()
        self.assertEqual(self.successResultOf(pending).code, 503)
        self.storage_mode("ok")
        self.assertEqual(self.request("GET", "/health").code, 200)

    def test_custom_timeout(self) -> None:
        """The timeout is a parameter of ``HealthResource``."""
        self.storage_mode("hang")
        treq = StubTreq(HealthResource(self.node, timeout=0.5))
        pending = treq.get(BASE + "/")
        self.clock.advance(0.5)
        treq.flush()
        response = self.successResultOf(pending)
        self.assertEqual(response.code, 503)
        self.assertEqual(
            self.successResultOf(response.json())["storage"],
            "unavailable: no answer within 0.5s",
        )


class MetricsResourceTests(StatusTestCase):
    """``/metrics`` serves the Prometheus text exposition."""

    def test_metrics(self) -> None:
        """The body parses and carries a counter incremented before."""
        self.metrics.increment("notifications_delivered", 2)
        for path in ("/metrics", "/metrics/"):
            response = self.request("GET", path)
            self.assertEqual(response.code, 200)
            content_type = self.header(response, b"Content-Type")
            assert content_type is not None
            self.assertTrue(content_type.startswith(b"text/plain; version=0.0.4"))
            text = self.successResultOf(response.text("utf-8"))
            values = {
                sample.name: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            self.assertEqual(values["pushtwisted_notifications_delivered_total"], 2.0)

    def test_standalone(self) -> None:
        """``MetricsResource`` works on its own too."""
        treq = StubTreq(MetricsResource(self.metrics))
        response = self.successResultOf(treq.get(BASE + "/"))
        self.assertEqual(response.code, 200)

    def test_without_metrics(self) -> None:
        """``add_status_children`` without metrics leaves /metrics out."""
        root = Resource()
        add_status_children(root, self.node)
        treq = StubTreq(root)
        self.assertEqual(self.successResultOf(treq.get(BASE + "/metrics")).code, 404)
        self.assertEqual(self.successResultOf(treq.get(BASE + "/status")).code, 200)
        self.assertIsInstance(root.children[b"status"], StatusResource)
