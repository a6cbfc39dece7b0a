"""Tests for the packaging: ``pyproject.toml`` and the licence."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _project() -> dict[str, Any]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return project


def runtime_requirements() -> list[Requirement]:
    """Return ``[project] dependencies`` of ``pyproject.toml``."""
    return [Requirement(text) for text in _project()["dependencies"]]


def _lower_bound(specifier: SpecifierSet) -> Version | None:
    """Return the lowest version ``specifier`` allows by its ``>=``/``==``/``~=`` parts."""
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


class BoundsTests(SynchronousTestCase):
    """The lower bounds of ``pyproject.toml`` resolve with the pinned autobahn."""

    def test_autobahn_pinned_and_installed(self) -> None:
        """autobahn is pinned, and the installed one is that version."""
        [autobahn] = [r for r in runtime_requirements() if r.name == "autobahn"]
        [pin] = autobahn.specifier
        self.assertEqual(pin.operator, "==")
        self.assertEqual(importlib.metadata.version("autobahn"), pin.version)

    def test_lower_bounds_meet_autobahn_s(self) -> None:
        """No lower bound of ours is below what autobahn (with Twisted) requires:
        a floor below it could never be installed with the pinned autobahn."""
        ours = {canonicalize_name(r.name): r for r in runtime_requirements()}
        checked = []
        for text in importlib.metadata.requires("autobahn") or []:
            theirs = Requirement(text)
            if theirs.marker is not None and not theirs.marker.evaluate({"extra": "twisted"}):
                continue
            name = canonicalize_name(theirs.name)
            their_floor = _lower_bound(theirs.specifier)
            if name not in ours or their_floor is None:
                continue
            our_floor = _lower_bound(ours[name].specifier)
            self.assertIsNotNone(our_floor, f"{name} has no lower bound")
            assert our_floor is not None
            self.assertGreaterEqual(our_floor, their_floor, f"{name}: autobahn needs {theirs}")
            checked.append(name)
        self.assertIn("cryptography", checked)
        self.assertIn("txaio", checked)

    def test_dev_tools_pinned(self) -> None:
        """ruff, mypy and mypy-zope are pinned in the ``dev`` extra."""
        dev = {
            canonicalize_name(r.name): r
            for r in map(Requirement, _project()["optional-dependencies"]["dev"])
        }
        for name in ("ruff", "mypy", "mypy-zope"):
            self.assertEqual([s.operator for s in dev[name].specifier], ["=="], name)


class LicenseTests(SynchronousTestCase):
    """The licence is stated in the metadata and shipped."""

    def test_mpl(self) -> None:
        """``pyproject.toml`` and the installed metadata say MPL-2.0; LICENSE holds it."""
        project = _project()
        self.assertEqual(project["license"], "MPL-2.0")
        self.assertEqual(project["license-files"], ["LICENSE"])
        self.assertTrue(
            (ROOT / "LICENSE")
            .read_text(encoding="utf-8")
            .startswith("Mozilla Public License Version 2.0\n")
        )
        metadata = importlib.metadata.metadata("pushtwisted")
        self.assertEqual(metadata["License-Expression"], "MPL-2.0")
