"""Tests for the ``twistd simplepush`` plugin."""

from __future__ import annotations

import ast
import inspect

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted import tap


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
