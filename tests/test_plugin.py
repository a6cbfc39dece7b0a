"""Tests for the ``twistd simplepush`` plugin."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted import tap
from pushtwisted.cluster.reuseport import ReusePortParser
from pushtwisted.listeners import PREFIX, ListenerParser


def _simplepush_plugins() -> list[IServiceMaker]:
    return [p for p in getPlugins(IServiceMaker) if p.tapname == "simplepush"]


class PluginTests(SynchronousTestCase):
    """twistd finds ``simplepush`` and it points at ``pushtwisted.tap``."""

    def test_found_by_twistd(self) -> None:
        """``getPlugins(IServiceMaker)`` yields exactly one plugin with tapname ``simplepush``."""
        self.assertEqual(len(_simplepush_plugins()), 1)

    def test_points_at_tap(self) -> None:
        """The plugin's options and makeService are those of ``pushtwisted.tap``."""
        [plugin] = _simplepush_plugins()
        self.assertIs(plugin.options, tap.Options)
        self.assertIs(plugin.makeService, tap.makeService)

    def test_plugin_module_imports_no_pushtwisted(self) -> None:
        """The plugin module imports nothing from pushtwisted (twistd imports it to list)."""
        import twisted.plugins.simplepush as module

        tree = ast.parse(inspect.getsource(module))
        imported: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.append(node.module or "")
        self.assertEqual([name for name in imported if name.startswith("pushtwisted")], [])
        self.assertNotEqual(imported, [])


class EndpointPluginTests(SynchronousTestCase):
    """``serverFromString`` finds pushtwisted's endpoint types."""

    def test_found(self) -> None:
        """``reuseport`` and ``pushtwisted-listener`` are each found exactly once."""
        parsers = list(getPlugins(IStreamServerEndpointStringParser))
        reuseport = [p for p in parsers if p.prefix == "reuseport"]
        listener = [p for p in parsers if p.prefix == PREFIX]
        self.assertEqual(len(reuseport), 1)
        self.assertEqual(len(listener), 1)
        self.assertIsInstance(reuseport[0], ReusePortParser)
        self.assertIsInstance(listener[0], ListenerParser)

    def test_plugin_module_is_light(self) -> None:
        """Importing the endpoint plugin module (twistd imports it to list plugins) loads
        no Autobahn, web, HTTP client, memcached or Prometheus code, nor ``tap``."""
        heavy = (
            "autobahn",
            "treq",
            "pymemcache",
            "prometheus_client",
            "twisted.web",
            "pushtwisted.tap",
            "pushtwisted.session",
        )
        script = (
            "import sys, twisted.plugins.pushtwisted_endpoints\n"
            f"heavy = {heavy!r}\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
        )
        # From the directory holding the pushtwisted under test (the tree or site-packages).
        root = Path(pushtwisted.__file__).resolve().parents[1]
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root
        ).stdout
        self.assertEqual(out.strip(), "[]")
