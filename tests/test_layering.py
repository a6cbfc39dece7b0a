"""The package's import structure: layers point down, the session loads no I/O.

Layers (STYLE.md 3.1), lowest first: leaves (pure values and seams), domain
(the state machine and what it talks to), adapters (storage backends,
cluster, HTTP, WebSocket, Prometheus), and the composition root.  A module
may import its own layer or a lower one; nothing imports ``tap``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import pushtwisted

_PACKAGE = Path(pushtwisted.__file__).parent

_LEAVES = frozenset(
    {
        "pushtwisted",
        "pushtwisted._config_checks",
        "pushtwisted._reactor",
        "pushtwisted.config",
        "pushtwisted.config_toml",
        "pushtwisted.eager",
        "pushtwisted.errors",
        "pushtwisted.ids",
        "pushtwisted._logwrite",
        "pushtwisted.logs",
        "pushtwisted.messages",
        "pushtwisted.metrics",
        "pushtwisted.storage",
        "pushtwisted.storage.interface",
        "pushtwisted.storage.opening",
        "pushtwisted.tokens",
    }
)
_DOMAIN = frozenset(
    {
        "pushtwisted.connection",
        "pushtwisted.connlimit",
        "pushtwisted.hello",
        "pushtwisted.node",
        "pushtwisted.outbox",
        "pushtwisted.registry",
        "pushtwisted.routing",
        "pushtwisted.session",
        "pushtwisted.threadpool",
        "pushtwisted.wpsession",
    }
)
#: Every module of these packages is a leaf: building blocks that do no I/O.
_LEAF_PACKAGES = ("pushtwisted.webpush",)
_ADAPTERS = frozenset(
    {
        "pushtwisted._autobahn_bounds",
        "pushtwisted._autobahn_frames",
        "pushtwisted._autobahn_handshake",
        "pushtwisted._autobahn_open",
        "pushtwisted._autobahn_patches",
        "pushtwisted._autobahn_tuning",
        "pushtwisted._bucket_timer",
        "pushtwisted._eager_write",
        "pushtwisted._prom_tally",
        "pushtwisted.collector",
        "pushtwisted.listeners",
        "pushtwisted.prometheus",
        "pushtwisted.statedir",
        "pushtwisted.websocket",
    }
)
#: Every module of these packages is an adapter (unless named above).
_ADAPTER_PACKAGES = ("pushtwisted.cluster", "pushtwisted.storage", "pushtwisted.web")
_ROOT = frozenset(
    {"pushtwisted.__main__", "pushtwisted.cli", "pushtwisted.startup", "pushtwisted.tap"}
)
#: Test support sits on top: it may import anything but ``tap``.
_ROOT_PACKAGES = ("pushtwisted.testing",)

_LAYER_NAMES = ("leaf", "domain", "adapter", "root")

#: What ``import pushtwisted.session`` must not load.
_SESSION_MUST_NOT_LOAD = (
    "pymemcache",
    "prometheus_client",
    "treq",
    "autobahn",
    "twisted.web.client",
    "pushtwisted.cluster",
    "pushtwisted.web",
    "pushtwisted.storage._memcache",
    "pushtwisted.storage.memcached",
    "pushtwisted.storage.sqlite",
    "pushtwisted.prometheus",
)


def _in_package(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _layer(module: str) -> int | None:
    """Return the layer of ``module`` (0 leaf .. 3 root), or None when unassigned."""
    for layer, names in enumerate((_LEAVES, _DOMAIN, _ADAPTERS, _ROOT)):
        if module in names:
            return layer
    if _in_package(module, _LEAF_PACKAGES):
        return 0
    if _in_package(module, _ADAPTER_PACKAGES):
        return 2
    if _in_package(module, _ROOT_PACKAGES):
        return 3
    return None


def _modules() -> Iterator[tuple[str, Path]]:
    """Yield ``(dotted name, path)`` of every module of the package."""
    for path in sorted(_PACKAGE.rglob("*.py")):
        parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    base = _PACKAGE / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(module: str, path: Path) -> set[str]:
    """Return the package modules ``module`` imports anywhere (type-checking blocks too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pushtwisted")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "pushtwisted":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _is_module(candidate) else base)
    found.discard(module)
    return found


class LayeringTests(SynchronousTestCase):
    """Imports point down the layers; nothing imports the composition root."""

    def setUp(self) -> None:
        self.graph = {name: _imports(name, path) for name, path in _modules()}

    def test_every_module_has_a_layer(self) -> None:
        """Each module is placed in a layer (a new module must be placed on purpose)."""
        self.assertEqual([m for m in self.graph if _layer(m) is None], [])

    def test_no_upward_import(self) -> None:
        """No module imports a module of a higher layer."""
        upward = []
        for module, deps in self.graph.items():
            for dep in sorted(deps):
                low, high = _layer(module), _layer(dep)
                if low is not None and high is not None and high > low:
                    upward.append(f"{module} ({_LAYER_NAMES[low]}) -> {dep} ({_LAYER_NAMES[high]})")
        self.assertEqual(upward, [])

    def test_nothing_imports_tap(self) -> None:
        """``tap`` is the composition root: no module imports it."""
        self.assertEqual([m for m, deps in self.graph.items() if "pushtwisted.tap" in deps], [])

    def test_nothing_imports_testing(self) -> None:
        """The test doubles are for tests: no module outside ``testing`` imports them."""
        importers = [
            module
            for module, deps in self.graph.items()
            if not _in_package(module, _ROOT_PACKAGES)
            and any(_in_package(d, _ROOT_PACKAGES) for d in deps)
        ]
        self.assertEqual(importers, [])

    def test_session_imports_no_adapter(self) -> None:
        """``session`` imports no cluster, web or storage-backend module, directly."""
        deps = self.graph["pushtwisted.session"]
        self.assertEqual(sorted(d for d in deps if _layer(d) not in (0, 1)), [])

    def test_no_cycles(self) -> None:
        """The import graph has no cycle."""
        done: set[str] = set()
        cycles: list[list[str]] = []

        def visit(module: str, stack: list[str]) -> None:
            if module in stack:
                cycles.append([*stack[stack.index(module) :], module])
                return
            if module in done:
                return
            for dep in sorted(self.graph.get(module, ())):
                visit(dep, [*stack, module])
            done.add(module)

        for module in sorted(self.graph):
            visit(module, [])
        self.assertEqual(cycles, [])

    def test_the_checker_sees_imports(self) -> None:
        """The graph is real: known imports of several kinds are found."""
        self.assertIn("pushtwisted.messages", self.graph["pushtwisted.session"])
        self.assertIn("pushtwisted.routing", self.graph["pushtwisted.node"])
        self.assertIn("pushtwisted.threadpool", self.graph["pushtwisted.storage.memcached"])
        self.assertIn("pushtwisted.websocket", self.graph["pushtwisted.tap"])
        self.assertEqual(_layer("pushtwisted.tap"), 3)
        self.assertEqual(_layer("pushtwisted.web.endpoint"), 2)


class FreshImportTests(SynchronousTestCase):
    """Importing a module in a fresh interpreter loads no I/O library it does not need."""

    def loaded_by(self, module: str) -> list[str]:
        """Return ``sys.modules`` after ``import module`` in a new interpreter."""
        code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
        env = dict(os.environ, PYTHONPATH=str(_PACKAGE.parent))
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(_PACKAGE.parent),
            check=False,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        loaded: list[str] = json.loads(done.stdout)
        self.assertIn(module, loaded)
        return loaded

    def test_session(self) -> None:
        """None of pymemcache, the HTTP client, Prometheus, cluster, web or a
        blocking storage backend is loaded by importing the session."""
        loaded = self.loaded_by("pushtwisted.session")
        self.assertIn("pushtwisted.routing", loaded)
        self.assertEqual([m for m in loaded if _in_package(m, _SESSION_MUST_NOT_LOAD)], [])

    def test_testing(self) -> None:
        """The light test doubles load no more than the session does (the
        cluster's doubles, in ``pushtwisted.testing.cluster``, need the HTTP stack)."""
        loaded = self.loaded_by("pushtwisted.testing")
        self.assertEqual([m for m in loaded if _in_package(m, _SESSION_MUST_NOT_LOAD)], [])
