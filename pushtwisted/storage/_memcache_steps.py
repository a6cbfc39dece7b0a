"""Run many memcached operations together, one pipelined round trip per step.

An *operation* (``MemcachedStorage.update``, ``MemcachedDirectory.set_node``,
...) is written as a generator of *steps*: it yields a command of
``pushtwisted.storage._memcache_wire`` (or a tuple of them, sent together)
and is sent back the reply (a tuple of replies), until it returns its
result.  Its compare-and-set loops read like blocking code, yet it never
waits on a socket itself.

``MemcacheSteps(client)`` is the executor the storage thread pool runs
(``ThreadPoolService.submit``): called on a pool thread with the operations
that arrived in one reactor turn, it advances them in lockstep.  Each round
collects the next step of every operation and sends them all with *one*
``client.pipeline`` call (one write per server, the writes first, then one
``gets`` of every key read), so N operations of two steps each cost two
round trips, not 2N.  Two operations of a batch never work on one key at
the same time: an operation owns every key it has touched until it ends,
and another operation's step that needs one of them waits for the next
rounds (a cycle of waits, which the operations here cannot form, would be
broken by sending the steps anyway: compare-and-set keeps them correct).
So an update and an ack of one channel in one batch run one after the
other and neither loses its ``cas``.  A ``cas`` lost to another node or
batch is retried by the operation at the next round, without sleeping.

Errors: a command whose server failed, a value that does not decode, or an
error raised by the operation ends that operation alone, with
``storage_error`` applied; the other operations go on.  Executors built on
the same client compare equal, so the pool runs the storage's and the
directory's operations of one turn in one batch.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pushtwisted.storage._memcache import MemcacheClient, storage_error
from pushtwisted.storage._memcache_wire import Command
from pushtwisted.threadpool import Outcome

__all__ = ["MemcacheSteps", "Step", "Steps"]

_T = TypeVar("_T")

#: What an operation yields: one command, or several sent together.
Step = Command | tuple[Command, ...]

#: An operation: yields steps, is sent their replies, returns its result.
Steps = Generator[Step, Any, _T]


@dataclass(frozen=True, slots=True)
class MemcacheSteps:
    """The executor of memcached operations on ``client`` (see the module docstring)."""

    client: MemcacheClient

    def __call__(self, operations: list[Steps[Any]]) -> list[Outcome]:
        """Run ``operations`` to their end; one outcome per operation, in order."""
        outcomes: list[Outcome | None] = [None] * len(operations)
        owner: dict[str, int] = {}
        owned: dict[int, list[str]] = {}
        ready: list[tuple[int, Step]] = []

        def advance(i: int, reply: object) -> None:
            try:
                step = operations[i].send(reply)
            except StopIteration as stop:
                finish(i, (True, stop.value))
            except Exception as e:
                finish(i, (False, storage_error(e)))
            else:
                ready.append((i, step))

        def finish(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome
            for key in owned.pop(i, ()):
                del owner[key]

        for i in range(len(operations)):
            advance(i, None)
        while ready:
            sent: list[tuple[int, Step]] = []
            waiting: list[tuple[int, Step]] = []
            for i, step in ready:
                commands = step if isinstance(step, tuple) else (step,)
                if any(owner.get(c.key, i) != i for c in commands):
                    waiting.append((i, step))
                    continue
                keys = owned.setdefault(i, [])
                for c in commands:
                    if c.key not in owner:
                        owner[c.key] = i
                        keys.append(c.key)
                sent.append((i, step))
            if not sent:  # a cycle of waits: send them all, cas keeps it correct
                sent, waiting = waiting, []
            ready = waiting
            flat: list[Command] = []
            for _, step in sent:
                if isinstance(step, tuple):
                    flat.extend(step)
                else:
                    flat.append(step)
            replies = self.client.pipeline(flat) if flat else []
            at = 0
            for i, step in sent:
                if isinstance(step, tuple):
                    parts = tuple(replies[at : at + len(step)])
                    at += len(step)
                    reply: object = parts
                    error = next((r for r in parts if isinstance(r, Exception)), None)
                else:
                    reply = replies[at]
                    at += 1
                    error = reply if isinstance(reply, Exception) else None
                if error is not None:
                    operations[i].close()
                    finish(i, (False, storage_error(error)))
                else:
                    advance(i, reply)
            ready.sort(key=_first)
        # The loop ends when no operation is left unfinished.
        return cast(list[Outcome], outcomes)


def _first(entry: tuple[int, Step]) -> int:
    return entry[0]
