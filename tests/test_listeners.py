"""Tests for ``pushtwisted.listeners``: a section's ``listen``, ``backlog`` and ``reuse_port``.

The inner description goes to a recorder instead of ``serverFromString``
where the test is about what the parser writes; ``tests/test_tap.py`` and
``tests/test_tap_cluster.py`` check the listeners the whole tree opens.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.reuseport import ReusePortEndpoint
from pushtwisted.listeners import ListenerParser, ReusePortError, listener_description


class _Recorder:
    """Stands in for ``serverFromString``: keeps the description it is given."""

    def __init__(self) -> None:
        self.descriptions: list[str] = []

    def __call__(self, reactor: Any, description: str) -> Any:
        self.descriptions.append(description)
        return object()


class DescriptionTests(SynchronousTestCase):
    """What ``ListenerParser`` hands on for each kind of description."""

    def inner(self, *args: str, **kwargs: str) -> str:
        """Hand the parser a description split as Twisted splits it (backlog 9, no
        reuse_port); return the inner description it passes on."""
        recorder = _Recorder()
        parser = ListenerParser(server_from_string=recorder)
        parser.parseStreamServer(MemoryReactorClock(), "9", "0", *args, **kwargs)
        [description] = recorder.descriptions
        return description

    def test_backlog_added(self) -> None:
        """``tcp``, ``tcp6``, ``ssl``, ``unix`` and ``reuseport`` get ``backlog=`` when they
        have none."""
        self.assertEqual(
            self.inner("tcp", "8080", interface="127.0.0.1"),
            "tcp:8080:interface=127.0.0.1:backlog=9",
        )
        for kind in ("tcp6", "ssl", "unix", "reuseport"):
            self.assertEqual(self.inner(kind, "x"), f"{kind}:x:backlog=9")

    def test_backlog_in_description_kept(self) -> None:
        """A ``backlog=`` written in the description wins."""
        self.assertEqual(self.inner("tcp", "8080", backlog="5"), "tcp:8080:backlog=5")

    def test_backlog_not_added_where_unsupported(self) -> None:
        """Types whose parser takes no backlog (``systemd``) are handed on as written."""
        self.assertEqual(
            self.inner("systemd", domain="INET", index="0"), "systemd:domain=INET:index=0"
        )

    def test_quoted_again(self) -> None:
        """Colons and backslashes in the parsed values are escaped again."""
        self.assertEqual(self.inner("unix", "/tmp/a:b"), r"unix:/tmp/a\:b:backlog=9")
        self.assertEqual(
            self.inner("tcp", "80", interface="::1"), r"tcp:80:interface=\:\:1:backlog=9"
        )
        self.assertEqual(self.inner("unix", "c\\d"), r"unix:c\\d:backlog=9")

    def test_empty(self) -> None:
        """A description without a type is a ``ValueError``."""
        with self.assertRaises(ValueError):
            self.inner()
        with self.assertRaises(ValueError):
            serverFromString(
                MemoryReactorClock(), listener_description("", backlog=1, reuse_port=False)
            )


class ReusePortTests(SynchronousTestCase):
    """``reuse_port`` turns ``tcp:``/``tcp6:`` into a ``ReusePortEndpoint``, and nothing else."""

    def endpoint(self, listen: str, backlog: int = 9) -> Any:
        description = listener_description(listen, backlog=backlog, reuse_port=True)
        return serverFromString(MemoryReactorClock(), description)

    def test_tcp(self) -> None:
        """``tcp:`` keeps its port and interface and gets the section's backlog."""
        endpoint = self.endpoint("tcp:8080:interface=127.0.0.1")
        assert isinstance(endpoint, ReusePortEndpoint)
        self.assertEqual(
            (endpoint.port, endpoint.interface, endpoint.backlog, endpoint.family),
            (8080, "127.0.0.1", 9, socket.AF_INET),
        )
        self.assertEqual(self.endpoint("tcp:8080:backlog=3").backlog, 3)

    def test_tcp6(self) -> None:
        """``tcp6:`` listens on every IPv6 address unless an interface is given."""
        endpoint = self.endpoint("tcp6:8080")
        self.assertEqual((endpoint.interface, endpoint.family), ("::", socket.AF_INET6))
        self.assertEqual(self.endpoint(r"tcp6:8080:interface=\:\:1").interface, "::1")

    def test_refused(self) -> None:
        """Other types, and keys ``reuseport`` does not take, are a ``ReusePortError``."""
        for bad in (
            "ssl:443:privateKey=k.pem",
            "unix:/tmp/s",
            "systemd:domain=INET:index=0",
            "tcp",
            "tcp:http",
            "tcp:80:backlog=0",
            "tcp:80:81",
            "tcp:80:reuse=1",
        ):
            with self.assertRaises(ReusePortError, msg=bad):
                self.endpoint(bad)

    def test_off(self) -> None:
        """Without ``reuse_port`` a ``tcp:`` description is Twisted's own TCP endpoint."""
        description = listener_description("tcp:8080", backlog=9, reuse_port=False)
        endpoint = serverFromString(MemoryReactorClock(), description)
        self.assertNotIsInstance(endpoint, ReusePortEndpoint)
