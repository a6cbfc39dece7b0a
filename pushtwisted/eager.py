"""``run_eagerly``: run a coroutine at once, and under Twisted only if it waits.

``Deferred.fromCoroutine`` allocates a Deferred and runs Twisted's coroutine
driver for every coroutine, even one that finishes without waiting: a
session handler with the memory backend, a ping, an error reply.
``run_eagerly`` runs the first step itself and hands the coroutine to
Twisted only when it stops on a Deferred that has not fired.  What it saves
per message is measured in ``ClientConnection._pump``'s docstring.

``resume(coroutine, awaited)`` is the second half on its own, for a caller
that runs the first step itself because it needs the coroutine's value
(``pushtwisted.web._util.render_async``).
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

__all__ = ["resume", "run_eagerly"]

_T = TypeVar("_T")


def run_eagerly(coroutine: Coroutine[Any, Any, None]) -> Deferred[None] | None:
    """Run ``coroutine`` until it finishes or first waits on an unfired Deferred.

    :returns: None when it finished (an exception it raised propagates to
        the caller), else a Deferred that fires (or fails) when the rest,
        driven by ``Deferred.fromCoroutine``, is done.
    """
    try:
        awaited = coroutine.send(None)
    except StopIteration:
        return None
    return resume(coroutine, awaited)


def resume(coroutine: Coroutine[Any, Any, _T], awaited: Any) -> Deferred[_T]:
    """Continue ``coroutine``, suspended on ``awaited``, under Twisted's driver.

    :returns: a Deferred that fires with the coroutine's value (or fails
        with what it raised).
    """
    return Deferred.fromCoroutine(_finish(coroutine, awaited))


@types.coroutine
def _finish(coroutine: Coroutine[Any, Any, _T], awaited: Any) -> Generator[Any, Any, _T]:
    """A plain pass-through of results and failures in both directions."""
    while True:
        try:
            result = yield awaited
        except BaseException as e:
            try:
                awaited = coroutine.throw(e)
            except StopIteration as done:
                value: _T = done.value
                return value
        else:
            try:
                awaited = coroutine.send(result)
            except StopIteration as done:
                value = done.value
                return value
