"""``PrometheusMetrics``: the ``Metrics`` of a running node, on ``prometheus_client``.

Domain code (session, endpoint, router, storage pool) reports events by name
through an injected ``pushtwisted.metrics.Metrics``; ``PrometheusMetrics``
maps each name to a declared Prometheus metric on a private registry,
rendered by ``GET /metrics``.  Calls
never block and never raise: an unknown name, a wrong label set or a call
that does not fit the metric's type is logged once and otherwise ignored.

Names and the Prometheus metric each one feeds (every metric has the
``pushtwisted_`` prefix; counters end in ``_total``, latencies are
histograms in seconds):

- ``connections`` (``gauge``) -> ``pushtwisted_connections`` gauge: clients
  past hello (the UAIDs connected to this node)
- ``open_sockets`` (``gauge``, label ``listener`` = websocket or endpoint) ->
  ``pushtwisted_open_sockets{listener}``: open connections of each listener,
  before hello too
- ``handshakes`` -> ``pushtwisted_handshakes_total``: WebSocket opening
  handshakes accepted
- ``connections_refused`` (label ``listener`` = websocket or endpoint) ->
  ``pushtwisted_connections_refused_total{listener}``: connections closed at
  once because the listener had ``max_connections`` open
- ``connections_dropped`` (label ``reason`` = output_buffer, control_frames,
  fragments, handshake_head or ping_timeout) ->
  ``pushtwisted_connections_dropped_total{reason}``: WebSocket connections
  the server closed for passing a bound (``pushtwisted._autobahn_bounds``)
- ``hellos`` -> ``pushtwisted_hellos_total``
- ``registers`` -> ``pushtwisted_registers_total``
- ``unregisters`` -> ``pushtwisted_unregisters_total``
- ``acks`` -> ``pushtwisted_acks_total``
- ``pings`` -> ``pushtwisted_pings_total``
- ``too_many_pings`` -> ``pushtwisted_too_many_pings_total``
- ``protocol_errors`` (label ``reason``) -> ``pushtwisted_protocol_errors_total{reason}``
- ``notifications_received`` -> ``pushtwisted_notifications_received_total``
- ``notifications_delivered`` -> ``pushtwisted_notifications_delivered_total``
- ``notifications_stored`` -> ``pushtwisted_notifications_stored_total``
- ``notifications_rejected`` (label ``reason``) ->
  ``pushtwisted_notifications_rejected_total{reason}``
- ``notifications_resent`` -> ``pushtwisted_notifications_resent_total``
- ``notifications_body_ignored`` -> ``pushtwisted_notifications_body_ignored_total``:
  PUTs whose body was not a form (not parsed; the version is the current time)
- ``endpoint_requests`` (label ``status``) -> ``pushtwisted_endpoint_requests_total{status}``
- ``endpoint_latency_seconds`` (``observe``, label ``status``) ->
  ``pushtwisted_endpoint_request_duration_seconds{status}`` histogram
- ``storage_latency_seconds`` (``observe``, label ``operation``) ->
  ``pushtwisted_storage_latency_seconds{operation}`` histogram
- ``storage_queue_depth`` (``gauge``) -> ``pushtwisted_storage_queue_depth`` gauge

WebPush (the ``/wpush/`` and ``/m/`` routes, ``pushtwisted.web.webpush``, and
WebPush sessions):

- ``webpush_messages`` (label ``outcome`` = received: a POST that passed
  every check; stored; delivered: written to a socket, once per message per
  connection; dropped: TTL 0 and no session took it; resent: sent again by
  the retry timer or a re-fetch; expired: sent, and its TTL ran out before
  its ack) -> ``pushtwisted_webpush_messages_total{outcome}``
- ``webpush_rejected`` (label ``errno``; ``none`` for a 405) ->
  ``pushtwisted_webpush_rejected_total{errno}``: every 4xx and 5xx answer of
  the WebPush routes
- ``vapid_failures`` (label ``reason``, ``pushtwisted.webpush.vapid.REASONS``)
  -> ``pushtwisted_vapid_failures_total{reason}``
- ``webpush_acks`` (label ``code`` = 100, 101, 102 or other) ->
  ``pushtwisted_webpush_acks_total{code}``
- ``webpush_nacks`` (label ``code``) -> ``pushtwisted_webpush_nacks_total{code}``

Cluster (``pushtwisted.cluster.router`` and the router listener,
``pushtwisted.web.internal``; only with ``[router] listen`` set):

- ``router_requests`` (labels ``kind`` = push, notif or kick; ``result`` =
  ok, not_found, unreachable, timeout or error) ->
  ``pushtwisted_router_requests_total{kind,result}``: requests sent to other nodes
- ``router_latency_seconds`` (``observe``, label ``kind``) ->
  ``pushtwisted_router_latency_seconds{kind}`` histogram
- ``router_received`` (labels ``kind`` = push, notif, kick, unauthorized or
  unknown; ``status``) -> ``pushtwisted_router_received_total{kind,status}``:
  requests the router listener answered
- ``route_outcomes`` (label ``outcome`` = local, remote, not_connected,
  node_failed, notified or directory_failed) ->
  ``pushtwisted_route_outcomes_total{outcome}``: what became of each stored update
- ``directory_errors`` (label ``operation`` = get, clear) ->
  ``pushtwisted_directory_errors_total{operation}``

``increment`` also works on a gauge (``increment("connections", -1)``).
A declared label missing from a call is exported as ``"unknown"``; labels
that are not declared are dropped (with the one-time warning).

Each distinct call (call, name and label values) is resolved once: its
labelled child's ``inc``/``set``/``observe`` is kept, so a repeated call
costs one dictionary lookup before ``prometheus_client`` does its part.
The label values of this code base come from small fixed sets (statuses,
reasons, operations), so the cache stays small; past ``_MAX_CACHED``
entries new calls are still applied, just not remembered.

**Counters and histograms without a lock per call.**  ``prometheus_client``
takes a lock for every ``inc`` and ``observe``.  An ``increment`` of a
counter or an ``observe`` made on the thread that built the
``PrometheusMetrics`` (the reactor's) only adds to plain numbers kept for
its labelled child (``pushtwisted._prom_tally``); they are added to the
children when the registry is collected (``render``, ``registry.collect()``,
``get_sample_value``) on that thread, by a collector registered before the
metrics.  A gauge set on that thread keeps only its last value, set on
the gauge at the same collection (the storage pool's queue depth and the
connection counts change several times per connection).  Calls from other
threads (the storage pool) go to ``prometheus_client`` at once; so does a
gauge's ``increment``, after the value it was last set to.  A new counter
(or histogram) needs nothing for this: one ``_counter(...)`` line in
``_SPECS`` (and its entry in the list above) is all there is to it::

    "webpush_messages": _counter("webpush_messages", "WebPush messages, by outcome.", "outcome"),

The registry also carries ``pushtwisted_build_info{version}`` and, unless
disabled, the standard ``process_*`` (CPU, memory, open files, start time;
Linux only), ``python_info`` and ``python_gc_*`` collectors.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

import pushtwisted
from pushtwisted._prom_tally import Folded, Folder, Latest, Observations, Tally
from pushtwisted.logs import logger

__all__ = ["PrometheusMetrics", "METRIC_NAMES"]


class _Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


#: Which ``Metrics`` calls each kind of metric accepts.
_CALLS: Mapping[_Kind, frozenset[str]] = {
    _Kind.COUNTER: frozenset({"increment"}),
    _Kind.GAUGE: frozenset({"increment", "gauge"}),
    _Kind.HISTOGRAM: frozenset({"observe"}),
}

#: Request latencies: 1 ms to 10 s.
_ENDPOINT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Storage calls: 0.25 ms to 5 s.
_STORAGE_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: _Kind
    prometheus_name: str
    documentation: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


def _counter(name: str, doc: str, *labels: str) -> _Spec:
    return _Spec(_Kind.COUNTER, f"pushtwisted_{name}_total", doc, labels)


_SPECS: Mapping[str, _Spec] = {
    "connections": _Spec(
        _Kind.GAUGE,
        "pushtwisted_connections",
        "Clients past hello: the UAIDs connected to this node.",
    ),
    "open_sockets": _Spec(
        _Kind.GAUGE,
        "pushtwisted_open_sockets",
        "Open connections of each listener (WebSocket: before and after hello).",
        ("listener",),
    ),
    "handshakes": _counter("handshakes", "WebSocket opening handshakes accepted."),
    "connections_refused": _counter(
        "connections_refused",
        "Connections closed at once because the listener was full, by listener.",
        "listener",
    ),
    "connections_dropped": _counter(
        "connections_dropped",
        "WebSocket connections closed for passing a bound, by reason.",
        "reason",
    ),
    "hellos": _counter("hellos", "Successful hello messages."),
    "registers": _counter("registers", "Successful register messages."),
    "unregisters": _counter("unregisters", "Unregister messages handled."),
    "acks": _counter("acks", "Ack messages handled."),
    "pings": _counter("pings", "Client pings answered."),
    "too_many_pings": _counter("too_many_pings", "Clients closed for pinging too often."),
    "protocol_errors": _counter("protocol_errors", "Client protocol errors.", "reason"),
    "notifications_received": _counter(
        "notifications_received", "Notifications accepted from app servers."
    ),
    "notifications_delivered": _counter(
        "notifications_delivered", "Notifications handed to a connected client."
    ),
    "notifications_stored": _counter(
        "notifications_stored", "Notifications stored for an offline client."
    ),
    "notifications_rejected": _counter(
        "notifications_rejected", "Notifications refused, by reason.", "reason"
    ),
    "notifications_resent": _counter(
        "notifications_resent", "Unacknowledged notifications sent again."
    ),
    "notifications_body_ignored": _counter(
        "notifications_body_ignored",
        "PUTs whose body was not a form: not parsed, the version is the current time.",
    ),
    "endpoint_requests": _counter(
        "endpoint_requests", "Endpoint (app server) requests, by HTTP status.", "status"
    ),
    "endpoint_latency_seconds": _Spec(
        _Kind.HISTOGRAM,
        "pushtwisted_endpoint_request_duration_seconds",
        "Time to answer an endpoint request, by HTTP status.",
        ("status",),
        _ENDPOINT_BUCKETS,
    ),
    "storage_latency_seconds": _Spec(
        _Kind.HISTOGRAM,
        "pushtwisted_storage_latency_seconds",
        "Duration of storage calls, by operation.",
        ("operation",),
        _STORAGE_BUCKETS,
    ),
    "storage_queue_depth": _Spec(
        _Kind.GAUGE,
        "pushtwisted_storage_queue_depth",
        "Storage calls waiting for a thread of the storage pool.",
    ),
    "webpush_messages": _counter(
        "webpush_messages",
        "WebPush messages by outcome: received, stored, delivered, dropped, resent, expired.",
        "outcome",
    ),
    "webpush_rejected": _counter(
        "webpush_rejected",
        "Error answers of the WebPush routes, by errno (none for 405).",
        "errno",
    ),
    "vapid_failures": _counter(
        "vapid_failures",
        "WebPush requests refused for their VAPID authorization, by reason.",
        "reason",
    ),
    "webpush_acks": _counter("webpush_acks", "WebPush acks, by code.", "code"),
    "webpush_nacks": _counter("webpush_nacks", "WebPush nacks, by code.", "code"),
    "router_requests": _counter(
        "router_requests", "Requests sent to other nodes, by kind and result.", "kind", "result"
    ),
    "router_latency_seconds": _Spec(
        _Kind.HISTOGRAM,
        "pushtwisted_router_latency_seconds",
        "Duration of requests sent to other nodes, by kind.",
        ("kind",),
        _ENDPOINT_BUCKETS,
    ),
    "router_received": _counter(
        "router_received",
        "Requests answered by the router listener, by kind and status.",
        "kind",
        "status",
    ),
    "route_outcomes": _counter(
        "route_outcomes", "What became of each stored update, by outcome.", "outcome"
    ),
    "directory_errors": _counter(
        "directory_errors", "Failed reads and writes of the cluster directory.", "operation"
    ),
}

#: The names ``PrometheusMetrics`` knows, mapped to their Prometheus names.
METRIC_NAMES: Mapping[str, str] = {name: spec.prometheus_name for name, spec in _SPECS.items()}

_UNKNOWN_LABEL = "unknown"
#: Most resolved calls kept by one ``PrometheusMetrics``.
_MAX_CACHED = 4096
#: Gauge values kept as they are until the next collection (anything else,
#: a string say, goes to ``prometheus_client`` at once, for its own error).
_PLAIN_NUMBERS = (int, float)
#: The classic Prometheus text format, which ``generate_latest`` writes.
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_Metric = Counter | Gauge | Histogram


class PrometheusMetrics:
    """A ``pushtwisted.metrics.Metrics`` backed by ``prometheus_client`` on a private registry.

    :param registry: where to declare the metrics; a fresh
        ``CollectorRegistry`` by default (never the process-global one).
    :param process_collectors: also register the ``process_*``,
        ``python_info`` and ``python_gc_*`` collectors.
    """

    log = logger()

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process_collectors: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        #: The thread whose counter increments are tallied (see the module docstring).
        self._owner = threading.get_ident()
        #: (name, label items) of a counter -> its tally.
        self._tallies: dict[object, Tally] = {}
        #: (name, label items) of a histogram -> its observations not yet added.
        self._observations: dict[object, Observations] = {}
        #: (name, label items) of a gauge -> its last value not yet set.
        self._latest: dict[object, Latest] = {}
        self._folded: list[Folded] = []
        self.registry.register(Folder(self._owner, self._folded))
        self._metrics: dict[str, _Metric] = {
            name: self._declare(spec) for name, spec in _SPECS.items()
        }
        self._warned: set[tuple[str, ...]] = set()
        #: (call, name, label items) -> the child's bound method, or None (ignored).
        self._actions: dict[tuple[object, ...], Callable[[float], object] | None] = {}
        build = Info("pushtwisted_build", "Version of pushtwisted.", registry=self.registry)
        build.info({"version": pushtwisted.__version__})
        if process_collectors:
            self._add_process_collectors()

    def _declare(self, spec: _Spec) -> _Metric:
        labels = list(spec.labels)
        if spec.kind is _Kind.COUNTER:
            return Counter(spec.prometheus_name, spec.documentation, labels, registry=self.registry)
        if spec.kind is _Kind.GAUGE:
            return Gauge(spec.prometheus_name, spec.documentation, labels, registry=self.registry)
        return Histogram(
            spec.prometheus_name,
            spec.documentation,
            labels,
            registry=self.registry,
            buckets=spec.buckets,
        )

    def _add_process_collectors(self) -> None:
        # A registry passed in may already have some of them: registering
        # one twice raises ValueError on the duplicate names; keep the first.
        for make in (
            lambda: ProcessCollector(registry=self.registry),
            lambda: PlatformCollector(registry=self.registry),
            lambda: GCCollector(registry=self.registry),
        ):
            try:
                make()
            except ValueError:
                pass

    def _warn_once(self, key: tuple[str, ...], text: str, **fields: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.log.warn(text, **fields)

    def _child(self, call: str, name: str, labels: Mapping[str, object]) -> _Metric | None:
        """Return the labelled metric ``call`` should act on, or None (warned)."""
        spec = _SPECS.get(name)
        if spec is None:
            self._warn_once(("unknown", name), "ignoring unknown metric {metric}", metric=name)
            return None
        if call not in _CALLS[spec.kind]:
            self._warn_once(
                ("call", name, call),
                "ignoring {call}() on {kind} metric {metric}",
                metric=name,
                call=call,
                kind=spec.kind.value,
            )
            return None
        extra = sorted(set(labels) - set(spec.labels))
        if extra:
            self._warn_once(
                ("labels", name, *extra),
                "dropping undeclared labels {labels} of metric {metric}",
                metric=name,
                labels=extra,
            )
        metric = self._metrics[name]
        if not spec.labels:
            return metric
        values = {label: str(labels.get(label, _UNKNOWN_LABEL)) for label in spec.labels}
        return metric.labels(**values)

    def _action(
        self, call: str, name: str, labels: Mapping[str, object]
    ) -> Callable[[float], object] | None:
        """Return the bound method ``call`` runs on its labelled child, or None (warned)."""
        metric = self._child(call, name, labels)
        if metric is None:
            return None
        if call == "observe":
            assert isinstance(metric, Histogram)
            return metric.observe
        if call == "gauge":
            assert isinstance(metric, Gauge)
            return metric.set
        assert isinstance(metric, Counter | Gauge)
        return metric.inc

    def _apply(self, call: str, name: str, value: float, labels: Mapping[str, object]) -> None:
        try:
            key = (call, name, *labels.items())
            try:
                action = self._actions[key]
            except KeyError:
                action = self._action(call, name, labels)
                if len(self._actions) < _MAX_CACHED:
                    self._actions[key] = action
            if action is not None:
                action(value)
        except Exception as e:  # metrics must never break a request
            self._warn_once(
                ("error", name, call, type(e).__name__),
                "metric {metric} {call}() failed: {error}",
                metric=name,
                call=call,
                error=repr(e),
            )

    def increment(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to the counter (or gauge) ``name``."""
        key = (name, *labels.items()) if labels else name
        tally = self._tallies.get(key)
        if tally is not None and value >= 0 and threading.get_ident() == self._owner:
            tally.value += value
            return
        latest = self._latest.get(key)
        if latest is not None:
            latest.fold()  # a gauge: the increment goes after its last set
        self._apply("increment", name, value, labels)
        if tally is None and len(self._tallies) < _MAX_CACHED:
            self._tally(key, name, labels)

    def _tally(self, key: object, name: str, labels: Mapping[str, object]) -> None:
        """Start tallying the increments of a counter's labelled child."""
        spec = _SPECS.get(name)
        if spec is None or spec.kind is not _Kind.COUNTER:
            return
        action = self._actions.get(("increment", name, *labels.items()))
        if action is not None:
            tally = Tally(action)
            self._tallies[key] = tally
            self._folded.append(tally)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Set the gauge ``name`` to ``value``."""
        key = (name, *labels.items()) if labels else name
        latest = self._latest.get(key)
        if latest is not None:
            if type(value) in _PLAIN_NUMBERS and threading.get_ident() == self._owner:
                latest.value = value
                return
            latest.value = None  # this later value replaces it
        self._apply("gauge", name, value, labels)
        if latest is None and len(self._latest) < _MAX_CACHED:
            self._keep_latest(key, name, labels)

    def _keep_latest(self, key: object, name: str, labels: Mapping[str, object]) -> None:
        """Start keeping the last value set on a gauge's labelled child."""
        action = self._actions.get(("gauge", name, *labels.items()))
        if action is not None:
            latest = Latest(action)
            self._latest[key] = latest
            self._folded.append(latest)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in the histogram ``name``."""
        key = (name, *labels.items()) if labels else name
        pending = self._observations.get(key)
        if pending is not None and threading.get_ident() == self._owner:
            pending.add(value)
            return
        self._apply("observe", name, value, labels)
        if pending is None and len(self._observations) < _MAX_CACHED:
            self._observe_later(key, name, labels)

    def _observe_later(self, key: object, name: str, labels: Mapping[str, object]) -> None:
        """Start keeping the observations of a histogram's labelled child."""
        if self._actions.get(("observe", name, *labels.items())) is None:
            return  # unknown, or not a histogram: warned, never applied
        child = self._child("observe", name, labels)
        if not isinstance(child, Histogram):
            return
        try:
            pending = Observations(child)
        except TypeError:
            return
        self._observations[key] = pending
        self._folded.append(pending)

    def render(self) -> tuple[bytes, str]:
        """Return the text exposition of every metric and its content type."""
        return generate_latest(self.registry), _CONTENT_TYPE
