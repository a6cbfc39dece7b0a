"""Tests for ``pushtwisted.startup``: the start-up summary line and warnings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted.config import ClientConfig, Config, CryptoConfig, EndpointConfig, StorageConfig
from pushtwisted.startup import Listening, describe_address, startup_warnings, summary_line
from pushtwisted.statedir import State
from pushtwisted.tokens import KeyFile, generate_key

STATE = Path("/srv/push/state")
KEPT = State(
    directory=STATE,
    key=KeyFile(generate_key(), STATE / "endpoint.key", generated=False),
    database=STATE / "pushtwisted.sqlite3",
)
LOCAL: list[Listening] = [
    ("websocket", IPv4Address("TCP", "127.0.0.1", 8080), "tcp:8080:interface=127.0.0.1"),
    ("endpoint", IPv4Address("TCP", "127.0.0.1", 8081), "tcp:8081:interface=127.0.0.1"),
]
EVERYWHERE: list[Listening] = [
    ("websocket", IPv4Address("TCP", "0.0.0.0", 8080), "tcp:8080"),
    ("endpoint", IPv6Address("TCP", "::", 8081), "tcp6:8081"),
]


def config(**sections: Any) -> Config:
    return dataclasses.replace(Config(), **sections)


class SummaryTests(SynchronousTestCase):
    """``summary_line``: one line with everything an operator checks first."""

    def test_default_node(self) -> None:
        """Version, the sqlite file, the listeners, public_url and the kept key."""
        self.assertEqual(
            summary_line(Config(), KEPT, LOCAL),
            f"pushtwisted {pushtwisted.__version__} started: sqlite storage"
            " /srv/push/state/pushtwisted.sqlite3; websocket on 127.0.0.1:8080, endpoint on"
            " 127.0.0.1:8081; public_url http://127.0.0.1:8081; endpoint key kept in"
            " /srv/push/state/endpoint.key",
        )

    def test_memcached_configured_keys_every_interface(self) -> None:
        """memcached servers and prefix, configured keys, listeners on every interface."""
        line = summary_line(
            config(
                storage=StorageConfig(
                    backend="memcached",
                    servers=["10.0.0.5:11211", "10.0.0.6:11211"],
                    key_prefix="a:",
                ),
                crypto=CryptoConfig(keys=[generate_key(), generate_key()]),
            ),
            State(),
            EVERYWHERE,
        )
        self.assertIn(
            "started: memcached storage on 10.0.0.5:11211, 10.0.0.6:11211 (key prefix 'a:');"
            " websocket on 0.0.0.0:8080 (every interface), endpoint on [::]:8081 (every"
            " interface);",
            line,
        )
        self.assertTrue(line.endswith("; endpoint keys from crypto.keys (2)"), line)

    def test_generated_key_and_memory(self) -> None:
        """A generated key says so; the memory backend says it is volatile."""
        state = State(key=KeyFile(generate_key(), STATE / "endpoint.key", generated=True))
        line = summary_line(config(storage=StorageConfig(backend="memory")), state, LOCAL)
        self.assertIn("started: memory storage (volatile);", line)
        self.assertTrue(line.endswith("endpoint key generated in /srv/push/state/endpoint.key"))

    def test_addresses(self) -> None:
        """UNIX sockets by path; no address: the description."""
        self.assertEqual(
            describe_address(UNIXAddress(b"/run/push.sock"), "unix:/run/push.sock"),
            "unix:/run/push.sock",
        )
        self.assertEqual(
            describe_address(None, "systemd:domain=INET:index=0"), "systemd:domain=INET:index=0"
        )
        self.assertEqual(describe_address(IPv6Address("TCP", "::1", 80), "x"), "[::1]:80")


class WarningTests(SynchronousTestCase):
    """``startup_warnings``: only what needs the operator's attention."""

    def test_none_for_a_kept_key_and_local_listeners(self) -> None:
        """The defaults with a kept key warn about nothing."""
        self.assertEqual(startup_warnings(Config(), KEPT, LOCAL), [])

    def test_generated_key(self) -> None:
        """A key generated now: endpoints handed out before no longer work."""
        state = dataclasses.replace(
            KEPT, key=KeyFile(generate_key(), STATE / "endpoint.key", generated=True)
        )
        [warning] = startup_warnings(Config(), state, LOCAL)
        self.assertTrue(
            warning.startswith(
                "a new endpoint key was generated in /srv/push/state/endpoint.key:"
                " pushEndpoints handed out with an earlier key no longer work"
            ),
            warning,
        )

    def test_every_interface_with_a_loopback_public_url(self) -> None:
        """Listeners on every interface while public_url names this host only."""
        for url in ("http://127.0.0.1:8081", "http://localhost:8081", "https://[::1]/"):
            endpoint = EndpointConfig(public_url=url)
            [warning] = startup_warnings(config(endpoint=endpoint), KEPT, EVERYWHERE)
            self.assertTrue(
                warning.startswith(
                    "websocket and endpoint listen on every interface, but endpoint.public_url"
                    f" {url} points at this host only"
                ),
                warning,
            )
        only_ws = [EVERYWHERE[0], LOCAL[1]]
        [warning] = startup_warnings(Config(), KEPT, only_ws)
        self.assertTrue(warning.startswith("websocket listens on every interface"), warning)

    def test_every_interface_with_a_real_public_url(self) -> None:
        """A public_url that others reach, or loopback listeners, is not warned about."""
        public = config(endpoint=EndpointConfig(public_url="https://push.example.com"))
        self.assertEqual(startup_warnings(public, KEPT, EVERYWHERE), [])
        router_only: list[Listening] = [
            *LOCAL,
            ("router", IPv4Address("TCP", "0.0.0.0", 3000), "tcp:3000"),
        ]
        self.assertEqual(startup_warnings(Config(), KEPT, router_only), [])

    def test_small_burst(self) -> None:
        """A burst below 2 * max_channels + 1 is warned about, unless the limit is off."""
        small = config(client=ClientConfig(max_messages_burst=40))
        [warning] = startup_warnings(small, KEPT, LOCAL)
        self.assertEqual(
            warning,
            "client.max_messages_burst = 40 is below 2 * client.max_channels + 1 = 401: a"
            " client that registers and acks all its channels as fast as the replies come is"
            " closed (1008)",
        )
        off = config(client=ClientConfig(max_messages_burst=40, max_messages_per_second=0))
        self.assertEqual(startup_warnings(off, KEPT, LOCAL), [])
        enough = config(client=ClientConfig(max_messages_burst=21, max_channels=10))
        self.assertEqual(startup_warnings(enough, KEPT, LOCAL), [])

    def test_state_directory_warnings_last(self) -> None:
        """What the state directory check could not do comes after the rest."""
        state = dataclasses.replace(KEPT, warnings=("storage.path: open",))
        small = config(client=ClientConfig(max_messages_burst=1))
        warnings = startup_warnings(small, state, LOCAL)
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[-1], "storage.path: open")
