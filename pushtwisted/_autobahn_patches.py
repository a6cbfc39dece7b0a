"""Autobahn's module-level names that cost per connection, replaced once at start.

Items 1 and 5 of ``pushtwisted._autobahn_tuning``: Autobahn evaluates
``pformat(...)``, ``hltype(...)`` and ``hlval(...)`` as arguments of debug log
calls on every connection and data chunk, even with debug logging off, and
unmasks every small frame with a native masker object.  ``apply()`` swaps
those names, in the Autobahn modules that imported them, for lazy stand-ins
and for ``pushtwisted._autobahn_frames.create_xor_masker``; it checks each
name is still the function it expects (another Autobahn release is skipped
with a warning, never guessed at).
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

import autobahn.twisted.websocket as _tx_websocket
import autobahn.util as _ab_util
import autobahn.websocket.protocol as _ws_protocol
from autobahn.websocket.xormasker import (  # type: ignore[attr-defined]
    create_xor_masker as _native_create_xor_masker,
)

from pushtwisted._autobahn_frames import create_xor_masker
from pushtwisted.logs import logger

__all__ = [
    "TESTED_AUTOBAHN",
    "LazyFormat",
    "apply",
    "check_version",
    "installed_autobahn",
]

_log = logger()


#: The Autobahn release these tunings were written against and tested with.
TESTED_AUTOBAHN = "26.10.2"

_log = logger()


class LazyFormat:
    """A log field that calls ``func(*args, **kwargs)`` only when rendered.

    ``str()``, ``repr()`` and ``format()`` all give the text the wrapped
    function returns, so a debug log line reads exactly as with Autobahn's
    eager call.
    """

    __slots__ = ("_func", "_args", "_kwargs")

    def __init__(
        self, func: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, Any]
    ) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs

    def __str__(self) -> str:
        return str(self._func(*self._args, **self._kwargs))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy(func: Callable[..., object]) -> Callable[..., LazyFormat]:
    """Return a stand-in for ``func`` that defers the call to rendering time."""

    def stand_in(*args: object, **kwargs: Any) -> LazyFormat:
        return LazyFormat(func, args, kwargs)

    stand_in.__name__ = f"lazy_{func.__name__}"
    stand_in.__qualname__ = stand_in.__name__
    stand_in.__doc__ = f"Lazy stand-in for {func.__module__}.{func.__qualname__}."
    stand_in.__wrapped__ = func  # type: ignore[attr-defined]
    return stand_in


#: (module, name, the function Autobahn imported under that name, stand-in).
_TARGETS: tuple[tuple[ModuleType, str, Callable[..., object], Callable[..., object]], ...] = (
    (_ws_protocol, "pformat", pprint.pformat, _lazy(pprint.pformat)),
    (_ws_protocol, "hltype", _ab_util.hltype, _lazy(_ab_util.hltype)),
    (_ws_protocol, "hlval", _ab_util.hlval, _lazy(_ab_util.hlval)),
    (_tx_websocket, "hltype", _ab_util.hltype, _lazy(_ab_util.hltype)),
    (_tx_websocket, "hlval", _ab_util.hlval, _lazy(_ab_util.hlval)),
    (_ws_protocol, "create_xor_masker", _native_create_xor_masker, create_xor_masker),
)


def installed_autobahn() -> str:
    """Return the installed Autobahn version, or ``"unknown"``."""
    try:
        return version("autobahn")
    except PackageNotFoundError:  # pragma: no cover - autobahn is a dependency
        return "unknown"


def check_version(installed: str) -> bool:
    """Return True when ``installed`` is the tested Autobahn; log a warning if not."""
    if installed == TESTED_AUTOBAHN:
        return True
    _log.warn(
        "autobahn {installed} is not the tested {tested}: the tunings in "
        "pushtwisted._autobahn_tuning may not fit it (run tests/test_autobahn_tuning.py)",
        installed=installed,
        tested=TESTED_AUTOBAHN,
    )
    return False


def apply() -> list[str]:
    """Replace Autobahn's eager debug formatting and small-frame unmasking.

    Returns the ``module.name`` replaced by this call.  Idempotent: a name
    already replaced is left alone.  A name that is not the function
    expected (another Autobahn release) is skipped with a warning rather
    than guessed at.  Called once, at start-up, by ``tap.build_service``.
    """
    check_version(installed_autobahn())
    return _replace(_TARGETS)


def _replace(
    targets: tuple[tuple[Any, str, Callable[..., object], Callable[..., object]], ...],
) -> list[str]:
    patched = []
    for module, name, original, stand_in in targets:
        current = getattr(module, name, None)
        if current is stand_in:
            continue  # already applied
        if current is not original:
            _log.warn(
                "autobahn tuning skipped: {module}.{name} is not {original}",
                module=module.__name__,
                name=name,
                original=f"{original.__module__}.{original.__qualname__}",
            )
            continue
        setattr(module, name, stand_in)
        patched.append(f"{module.__name__}.{name}")
    if patched:
        _log.debug("autobahn tuning applied: {names}", names=", ".join(patched))
    return patched
