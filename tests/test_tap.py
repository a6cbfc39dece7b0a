"""Tests for ``pushtwisted.tap``: options, wiring and listeners, on a fake reactor."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface import implementer

import pushtwisted
from pushtwisted import _autobahn_patches, tap
from pushtwisted.config import (
    Config,
    EndpointConfig,
    ServerConfig,
    StorageConfig,
    WebSocketConfig,
)
from pushtwisted.errors import ConfigError
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.storage.memcached import MemcachedStorage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.storage.service import StorageService
from pushtwisted.storage.sqlite import SqliteStorage
from pushtwisted.testing import FailingStorage, FakeSession, ListeningReactor, make_node
from pushtwisted.threadpool import ThreadPoolService
from pushtwisted.tokens import KEY_FILE, EndpointCrypto, generate_key
from pushtwisted.websocket import PushServerFactory
from tests.test_threadpool import ManualPool

UAID = "0123456789abcdef0123456789abcdef"


@implementer(IReactorFromThreads)
class _ThreadedMemoryReactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` that also accepts calls from threads (run inline)."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


CHID = "fedcba9876543210fedcba9876543210"


class BuildServiceTests(SynchronousTestCase):
    """``build_service`` wires a node and its listeners from a ``Config``."""

    def config(self, **sections: Any) -> Config:
        """Return a ``Config`` with a fresh state dir and the given sections."""
        sections.setdefault("storage", StorageConfig(path=self.mktemp(), backend="memory"))
        return dataclasses.replace(Config(), **sections)

    def start(self, config: Config) -> tuple[MemoryReactorClock, tap.PushService]:
        """Build and start the service on a fake reactor; stop it at cleanup."""
        reactor = MemoryReactorClock()
        service = tap.build_service(config, reactor)
        assert isinstance(service, tap.PushService)
        service.startService()
        self.addCleanup(self.stop, service)
        return reactor, service

    def stop(self, service: tap.PushService) -> None:
        """Stop ``service`` if it still runs, checking that stopping completes."""
        if service.running:
            self.successResultOf(service.stopService())

    def test_default_listeners(self) -> None:
        """With the defaults it listens on 127.0.0.1:8080 (WebSocket) and :8081 (endpoint)."""
        reactor, _ = self.start(self.config())
        self.assertEqual(
            [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers],
            [(8080, 1024, "127.0.0.1"), (8081, 1024, "127.0.0.1")],
        )

    def test_listener_factories(self) -> None:
        """The WebSocket port gets a ``PushServerFactory``, the endpoint port a web ``Site``."""
        reactor, _ = self.start(self.config())
        ws_factory, endpoint_factory = (entry[1] for entry in reactor.tcpServers)
        self.assertIsInstance(ws_factory, PushServerFactory)
        self.assertIsInstance(endpoint_factory, Site)

    def test_autobahn_tuning_applied_by_build_service(self) -> None:
        """``build_service`` applies the Autobahn tuning; building a factory alone does not."""
        for module, name, original, _ in _autobahn_patches._TARGETS:
            setattr(module, name, original)
        self.addCleanup(_autobahn_patches.apply)
        PushServerFactory(make_node())
        for module, name, original, _ in _autobahn_patches._TARGETS:
            self.assertIs(getattr(module, name), original, name)
        tap.build_service(self.config(), MemoryReactorClock())
        for module, name, _, stand_in in _autobahn_patches._TARGETS:
            self.assertIs(getattr(module, name), stand_in, name)

    def test_listen_and_backlog_from_config(self) -> None:
        """Ports, interfaces and backlogs come from ``listen`` and ``backlog``."""
        reactor, _ = self.start(
            self.config(
                websocket=WebSocketConfig(listen=r"tcp:9001:interface=\:\:1", backlog=17),
                endpoint=EndpointConfig(listen="tcp:9002", backlog=33),
            )
        )
        self.assertEqual(
            [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers],
            [(9001, 17, "::1"), (9002, 33, "")],
        )

    def test_backlog_in_description_wins(self) -> None:
        """A ``backlog=`` written in the description is kept over the configured one."""
        reactor, _ = self.start(
            self.config(websocket=WebSocketConfig(listen="tcp:9001:backlog=5", backlog=17))
        )
        self.assertEqual(reactor.tcpServers[0][2], 5)

    def test_unix_listener_gets_backlog(self) -> None:
        """A ``unix:`` description listens on that path with the configured backlog."""
        path = self.mktemp()
        reactor, _ = self.start(
            self.config(endpoint=EndpointConfig(listen=f"unix:{path}", backlog=12))
        )
        [(address, factory, backlog, _, _)] = reactor.unixServers
        self.assertEqual((address, backlog), (path, 12))
        self.assertIsInstance(factory, Site)

    def test_unix_path_with_escaped_colon(self) -> None:
        """An escaped colon stays part of a ``unix:`` path, which still gets the backlog."""
        path = self.mktemp() + ":sock"
        escaped = path.replace(":", "\\:")
        reactor, _ = self.start(
            self.config(endpoint=EndpointConfig(listen=f"unix:{escaped}", backlog=12))
        )
        [(address, _, backlog, _, _)] = reactor.unixServers
        self.assertEqual((address, backlog), (path, 12))

    def test_tcp6_listener(self) -> None:
        """A ``tcp6:`` description listens on IPv6 with the configured backlog."""
        reactor, _ = self.start(self.config(endpoint=EndpointConfig(listen="tcp6:9003", backlog=8)))
        self.assertEqual(reactor.tcpServers[1][0::2], (9003, 8))
        self.assertEqual(reactor.tcpServers[1][3], "::")

    def test_invalid_listen_is_config_error(self) -> None:
        """An unusable endpoint description is a ``ConfigError`` naming the key."""
        config = self.config(websocket=WebSocketConfig(listen="carrierpigeon:8080"))
        error = self.assertRaises(ConfigError, tap.build_service, config, MemoryReactorClock())
        self.assertIn("websocket.listen", str(error))

    def test_missing_tls_key_is_config_error(self) -> None:
        """An ``ssl:`` description naming a missing key file is a ``ConfigError``."""
        missing = Path(self.mktemp()).resolve() / "key.pem"
        config = self.config(endpoint=EndpointConfig(listen=f"ssl:8443:privateKey={missing}"))
        error = self.assertRaises(ConfigError, tap.build_service, config, MemoryReactorClock())
        self.assertIn("endpoint.listen", str(error))

    def test_node_holds_config_and_memory_storage(self) -> None:
        """The node carries the given config and, by default, a ``MemoryStorage``."""
        config = self.config()
        _, service = self.start(config)
        self.assertIs(service.node.config, config)
        self.assertIsInstance(service.node.storage, MemoryStorage)

    def test_sqlite_backend_is_wired_with_its_pool(self) -> None:
        """``backend = "sqlite"`` builds a SqliteStorage whose calls go to a pool child."""
        config = self.config(storage=StorageConfig(path=self.mktemp(), backend="sqlite"))
        service = tap.build_service(config, _ThreadedMemoryReactor())
        self.assertIsInstance(service.node.storage, SqliteStorage)
        self.assertIsInstance(service.pool, ThreadPoolService)
        self.assertIs(list(service)[0], service.pool)

    def test_memcached_backend_is_wired_with_its_pool(self) -> None:
        """``backend = "memcached"`` builds a MemcachedStorage with the pool (no I/O yet)."""
        config = self.config(storage=StorageConfig(path=self.mktemp(), backend="memcached"))
        service = tap.build_service(config, _ThreadedMemoryReactor())
        self.assertIsInstance(service.node.storage, MemcachedStorage)
        self.assertIs(list(service)[0], service.pool)

    def test_default_backend_is_sqlite(self) -> None:
        """With no configuration the durable sqlite backend is chosen."""
        self.assertEqual(Config().storage.backend, "sqlite")

    def test_endpoint_serves_status_health_and_metrics(self) -> None:
        """The endpoint listener's root has ``status``, ``health`` and ``metrics`` children."""
        reactor, service = self.start(self.config())
        site = reactor.tcpServers[1][1]
        for name in (b"status", b"health", b"metrics", b"update"):
            self.assertIn(name, site.resource.children)
        self.assertIsInstance(service.node.metrics, PrometheusMetrics)

    def test_stop_service_stops_listening(self) -> None:
        """Stopping the root service stops every listener."""
        reactor = MemoryReactorClock()
        service = tap.build_service(self.config(), reactor)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertFalse(any(child.running for child in service))

    def logged(self) -> list[dict[str, Any]]:
        """Record what ``PushService`` logs from now on."""
        events: list[dict[str, Any]] = []
        self.patch(tap.PushService, "log", Logger(observer=events.append))
        return events

    def test_summary_and_warnings_logged_at_start(self) -> None:
        """Once the listeners are bound, one info line sums the node up (the bound
        addresses, the key file's absolute path); the warnings follow."""
        shared = Path(self.mktemp())
        shared.mkdir()
        shared.chmod(0o755)
        (shared / "other.txt").write_text("x", encoding="ascii")
        config = self.config(storage=StorageConfig(path=str(shared), backend="memory"))
        events = self.logged()
        service = tap.build_service(config, ListeningReactor())
        self.assertEqual(events, [])
        service.startService()
        self.addCleanup(self.stop, service)
        lines = [(e["log_level"], formatEvent(e)) for e in events]
        self.assertEqual([level for level, _ in lines], [LogLevel.info] + [LogLevel.warn] * 2)
        directory = shared.resolve()
        self.assertEqual(
            lines[0][1],
            f"pushtwisted {pushtwisted.__version__} started: memory storage (volatile);"
            " websocket on 127.0.0.1:8080, endpoint on"
            f" 127.0.0.1:8081; public_url http://127.0.0.1:8081; endpoint key generated in"
            f" {directory / 'endpoint.key'}",
        )
        self.assertIn("a new endpoint key was generated", lines[1][1])
        self.assertIn("is open to other users (mode 0755)", lines[2][1])
        self.assertEqual(events[0]["backend"], "memory")

    def test_exposed_listeners_warned_at_start(self) -> None:
        """Listeners on every interface with the default public_url: a warning."""
        config = self.config(
            websocket=WebSocketConfig(listen="tcp:8080:interface=0.0.0.0"),
            endpoint=EndpointConfig(listen="tcp:8081"),
            crypto=dataclasses.replace(Config().crypto, keys=[generate_key()]),
        )
        events = self.logged()
        service = tap.build_service(config, ListeningReactor())
        service.startService()
        self.addCleanup(self.stop, service)
        warned = [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warned), 1, warned)
        self.assertTrue(
            warned[0].startswith("websocket and endpoint listen on every interface"), warned
        )

    def test_quiet_factories(self) -> None:
        """Listener factories do not log "Starting factory <... at 0x...>" lines."""
        reactor, _ = self.start(self.config())
        for _, factory, _, _ in reactor.tcpServers:
            self.assertFalse(factory.noisy, factory)

    def test_bad_state_directory_is_config_error(self) -> None:
        """A state directory that cannot be created is a ``ConfigError`` naming storage.path."""
        config = self.config(storage=StorageConfig(path="/proc/nope", backend="memory"))
        error = self.assertRaises(ConfigError, tap.build_service, config, MemoryReactorClock())
        self.assertIn("storage.path: cannot create the state directory /proc/nope", str(error))

    def test_generated_key_is_persisted(self) -> None:
        """Without configured keys a key is generated and written to the state dir."""
        config = self.config()
        _, service = self.start(config)
        key = (Path(config.storage.path) / KEY_FILE).read_text(encoding="ascii").strip()
        token = EndpointCrypto([key]).make_token(UAID, CHID)
        self.assertEqual(service.node.crypto.parse(token), (UAID, CHID))

    def test_generated_key_is_reused(self) -> None:
        """A second build on the same state dir parses the endpoints of the first."""
        config = self.config()
        _, first = self.start(config)
        token = first.node.crypto.make_token(UAID, CHID)
        second = tap.build_service(config, MemoryReactorClock())
        assert isinstance(second, tap.PushService)
        self.assertEqual(second.node.crypto.parse(token), (UAID, CHID))

    def test_configured_keys_are_used(self) -> None:
        """Configured keys issue (first) and parse (all) tokens; no key file is written."""
        new, old = generate_key(), generate_key()
        config = self.config(crypto=dataclasses.replace(Config().crypto, keys=[new, old]))
        _, service = self.start(config)
        issued = service.node.crypto.make_token(UAID, CHID)
        self.assertEqual(EndpointCrypto([new]).parse(issued), (UAID, CHID))
        legacy = EndpointCrypto([old]).make_token(UAID, CHID)
        self.assertEqual(service.node.crypto.parse(legacy), (UAID, CHID))
        self.assertFalse((Path(config.storage.path) / KEY_FILE).exists())

    def test_bad_configured_key(self) -> None:
        """A malformed configured key is a ``ConfigError`` naming ``crypto.keys``."""
        config = self.config(crypto=dataclasses.replace(Config().crypto, keys=["short"]))
        error = self.assertRaises(ConfigError, tap.build_service, config, MemoryReactorClock())
        self.assertIn("crypto.keys", str(error))


class OptionsTests(SynchronousTestCase):
    """``tap.Options`` parses the ``simplepush`` command line."""

    def test_default_has_no_config(self) -> None:
        """Without arguments no config file is named."""
        options = tap.Options()
        options.parseOptions([])
        self.assertIsNone(options["config"])

    def test_long_config(self) -> None:
        """``--config FILE`` names the file."""
        options = tap.Options()
        options.parseOptions(["--config", "push.toml"])
        self.assertEqual(options["config"], "push.toml")

    def test_short_config(self) -> None:
        """``-c FILE`` names the file."""
        options = tap.Options()
        options.parseOptions(["-c", "push.toml"])
        self.assertEqual(options["config"], "push.toml")

    def test_unknown_option(self) -> None:
        """An unknown option is a usage error."""
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--port", "1"])

    def test_extra_argument(self) -> None:
        """A positional argument is a usage error."""
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["push.toml"])

    def test_help_text(self) -> None:
        """The help names --config, the sample file and the environment override rule."""
        text = str(tap.Options())
        for fragment in ("--config", "config.sample.toml", "SIMPLEPUSH_<SECTION>_<KEY>"):
            self.assertIn(fragment, text)


class MakeServiceTests(SynchronousTestCase):
    """``makeService`` turns a bad configuration into a one-line error and status 1."""

    def make(self, config_text: str | None) -> SystemExit:
        # makeService installs its error hook (cli.report_config_errors): not for good here.
        self.patch(sys, "excepthook", sys.excepthook)
        options = tap.Options()
        path = self.mktemp()
        if config_text is not None:
            Path(path).write_text(config_text, encoding="utf-8")
        options.parseOptions(["--config", path])
        return self.assertRaises(SystemExit, tap.makeService, options)

    def test_bad_value(self) -> None:
        """A bad value exits with ``error: <key>: ...`` (Python prints it and exits 1)."""
        error = self.make("[websocket]\nbacklog = 0\n")
        self.assertEqual(error.code, "error: websocket.backlog: must be > 0, got 0")

    def test_missing_file(self) -> None:
        """A missing file exits with an ``error:`` message naming the problem."""
        error = self.make(None)
        assert isinstance(error.code, str)
        self.assertTrue(error.code.startswith("error: cannot read config file "))

    def test_invalid_toml(self) -> None:
        """A file that is not TOML exits with an ``error:`` message, not a traceback."""
        error = self.make("[websocket\n")
        assert isinstance(error.code, str)
        self.assertTrue(error.code.startswith("error: "))
        self.assertIn("invalid TOML", error.code)


class GracefulShutdownTests(SynchronousTestCase):
    """Stopping ``PushService`` stops accepting, closes clients, drains, then closes storage."""

    def start(self, timeout: float = 10.0) -> tuple[MemoryReactorClock, tap.PushService]:
        reactor = MemoryReactorClock()
        config = dataclasses.replace(
            Config(),
            storage=StorageConfig(path=self.mktemp(), backend="memory"),
            server=ServerConfig(shutdown_timeout=timeout),
        )
        service = tap.build_service(config, reactor)
        self.storage = FailingStorage(MemoryStorage())
        storage_service = service.getServiceNamed("storage")
        assert isinstance(storage_service, StorageService)
        storage_service.storage = self.storage
        service.startService()
        return reactor, service

    def test_clients_are_told_and_stop_waits_for_them(self) -> None:
        """Each connected client gets ``shutdown()``; the stop waits until they are gone."""
        reactor, service = self.start()
        session = FakeSession()
        service.node.registry.add(UAID, session)
        d = service.stopService()
        self.assertEqual(session.shutdowns, 1)
        self.assertFalse(any(listener.running for listener in service.listeners))
        reactor.advance(1)
        self.assertNoResult(d)
        self.assertEqual(self.storage.calls.count("close"), 0)
        service.node.registry.remove(UAID, session)
        self.successResultOf(d)
        self.assertEqual(self.storage.calls.count("close"), 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stop_is_bounded_by_shutdown_timeout(self) -> None:
        """A client that never goes does not hold the process past ``shutdown_timeout``."""
        reactor, service = self.start(timeout=3.0)
        service.node.registry.add(UAID, FakeSession())
        d = service.stopService()
        reactor.advance(2.9)
        self.assertNoResult(d)
        reactor.advance(0.2)
        self.successResultOf(d)
        self.assertEqual(self.storage.calls.count("close"), 1)
        self.assertFalse(any(child.running for child in service))

    def test_stop_waits_for_storage_calls(self) -> None:
        """With no client left, the stop still waits for the storage calls in flight
        before it closes the storage, then stops the pool."""
        config = dataclasses.replace(
            Config(), storage=StorageConfig(path=self.mktemp(), backend="sqlite")
        )
        reactor = _ThreadedMemoryReactor()
        service = tap.build_service(config, reactor)
        assert service.pool is not None
        jobs = service.pool.pool = ManualPool()  # type: ignore[assignment]
        storage_service = service.getServiceNamed("storage")
        assert isinstance(storage_service, StorageService)
        storage_service.storage = storage = FailingStorage(MemoryStorage())
        service.startService()  # the sqlite open is now in flight
        self.assertEqual(service.pool.depth, 1)
        d = service.stopService()
        self.assertNoResult(d)
        self.assertEqual(storage.calls.count("close"), 0)
        reactor.advance(0)  # the end of the turn: the open goes to the pool
        jobs.run_next()
        self.successResultOf(d)
        self.assertEqual(storage.calls.count("close"), 1)
        self.assertTrue(jobs.stopped)


class SignalTests(SynchronousTestCase):
    """SIGTERM and SIGINT stop the server cleanly from the moment the service is made."""

    def setUp(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, number, signal.getsignal(number))

    def test_taken_at_once_and_again_after_the_reactors_own(self) -> None:
        """The handlers are installed before the reactor runs (the listeners are bound
        by then), and again during startup, after the reactor installed its own."""
        reactor = MemoryReactorClock()
        tap._take_signals(reactor)  # type: ignore[arg-type]
        for number in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(number)
            assert callable(handler)
            self.assertIn("_exit_cleanly_on_signals", handler.__qualname__)
        [(call, args, _)] = reactor.triggers["during"]["startup"]
        self.assertIs(call, tap._exit_cleanly_on_signals)
        self.assertEqual(args, (reactor,))

    def test_signal_taken_by_twisted_still_exits_cleanly(self) -> None:
        """A SIGTERM or SIGINT that Twisted's own handler took (just after it installed
        it at startup) is forgotten after shutdown, so twistd exits with status 0; any
        other signal Twisted noted is left alone."""
        cases = [(signal.SIGTERM, None), (signal.SIGINT, None), (signal.SIGHUP, signal.SIGHUP)]
        for number, left in cases:
            reactor = MemoryReactorClock()
            tap._take_signals(reactor)  # type: ignore[arg-type]
            [(call, args, _)] = reactor.triggers["after"]["shutdown"]
            reactor._exitSignal = number  # type: ignore[attr-defined]
            call(*args)
            self.assertEqual(reactor._exitSignal, left, number)  # type: ignore[attr-defined]

    def test_signal_stops_the_reactor(self) -> None:
        """The handler asks the reactor to stop, from the signal context."""
        stopped: list[object] = []

        class Reactor(MemoryReactorClock):
            def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
                stopped.append(f)

        reactor = Reactor()
        tap._exit_cleanly_on_signals(reactor)  # type: ignore[arg-type]
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        self.assertEqual(stopped, [reactor.stop])
