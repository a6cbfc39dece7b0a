"""Tests for the packaging: ``pyproject.toml``, ``requirements.lock``, ``Dockerfile``, licence."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"


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


def lock_pins() -> dict[str, Requirement]:
    """Return the requirements of ``requirements.lock`` by canonical name."""
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def dockerfile_instructions() -> Iterator[str]:
    """Yield each instruction of the Dockerfile, continuation lines joined, comments out."""
    current = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            yield current.strip()
        current = ""


def healthcheck_command() -> list[str]:
    """Return the exec-form command of the Dockerfile's ``HEALTHCHECK``."""
    [instruction] = [i for i in dockerfile_instructions() if i.startswith("HEALTHCHECK ")]
    _, _, command = instruction.partition(" CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(arg) for arg in argv]


def _lower_bound(specifier: SpecifierSet) -> Version | None:
    """Return the lowest version ``specifier`` allows by its ``>=``/``==``/``~=`` parts."""
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


def _closure() -> dict[str, list[Requirement]]:
    """Return every distribution the runtime dependencies need, installed metadata
    followed (with extras), mapped to the requirements that name it."""
    found: dict[str, list[Requirement]] = {}
    todo = [(requirement, "") for requirement in runtime_requirements()]
    seen: set[tuple[str, str]] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        found.setdefault(name, []).append(requirement)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            for text in importlib.metadata.requires(requirement.name) or []:
                todo.append((Requirement(text), wanted))
    return found


class LockTests(SynchronousTestCase):
    """``requirements.lock`` pins every runtime dependency at one exact version."""

    def test_every_line_is_an_exact_pin(self) -> None:
        """Each requirement of the lock is ``name==version`` and nothing else."""
        pins = lock_pins()
        self.assertTrue(pins)
        for name, requirement in pins.items():
            self.assertEqual(
                [s.operator for s in requirement.specifier], ["=="], f"{name} is not pinned"
            )
            self.assertEqual((requirement.extras, requirement.marker), (set(), None), name)

    def test_runtime_dependencies_pinned(self) -> None:
        """Every distribution the runtime dependencies need (extras such as
        ``twisted[tls]`` and their own dependencies included) is in the lock, at a
        version every requirement naming it allows."""
        pins = lock_pins()
        closure = _closure()
        self.assertIn("autobahn", closure)
        self.assertIn("pyopenssl", closure)  # twisted[tls]
        for name, requirements in sorted(closure.items()):
            self.assertIn(name, pins, f"{name} is needed but not in requirements.lock")
            [pin] = pins[name].specifier
            for requirement in requirements:
                self.assertTrue(
                    requirement.specifier.contains(pin.version, prereleases=True),
                    f"requirements.lock has {name}=={pin.version}, {requirement} does not allow it",
                )

    def test_pyproject_install_path_unchanged(self) -> None:
        """The lock is a constraints file, not the dependency list: ``pip install .``
        still resolves from ``pyproject.toml``, whose bounds are ranges."""
        for requirement in runtime_requirements():
            if requirement.name != "autobahn":
                self.assertNotIn("==", str(requirement.specifier), requirement)


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


class DockerfileTests(SynchronousTestCase):
    """The image installs the locked versions and checks its own health."""

    def test_installs_with_the_lock(self) -> None:
        """The lock is copied in and used as constraints for ``pip install .``."""
        instructions = list(dockerfile_instructions())
        copies = " ".join(i for i in instructions if i.startswith("COPY "))
        for name in ("requirements.lock", "LICENSE", "pyproject.toml"):
            self.assertIn(name, copies)
        self.assertTrue(
            any(i.startswith("RUN pip install -c requirements.lock . ") for i in instructions)
        )

    def test_healthcheck_is_python_on_health(self) -> None:
        """The health check runs a Python snippet (no curl in the slim image) that
        compiles and asks ``/health`` on the endpoint listener's port."""
        argv = healthcheck_command()
        self.assertEqual(argv[:2], ["python", "-c"])
        compile(argv[2], "HEALTHCHECK", "exec")
        self.assertIn("'http://127.0.0.1:8081/health'", argv[2])
        instructions = list(dockerfile_instructions())
        self.assertTrue(any("SIMPLEPUSH_ENDPOINT_LISTEN=tcp:8081:" in i for i in instructions))
