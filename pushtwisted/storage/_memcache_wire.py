"""Pipelined memcached commands on one pymemcache connection.

pymemcache sends one request per ``cas``, ``add`` or ``touch`` and waits for
its reply; ``exchange`` writes a whole round of commands in one ``sendall``
and then reads every reply, so a round costs one round trip however many
commands it holds:

- the commands are ``Get``, ``Store`` (``cas``, ``add``, ``set``), ``Touch``
  and ``Delete``;
- the writes go first, in the given order, then every ``Get`` as *one*
  ``gets`` line of all their keys; memcached answers in order on one
  connection, so the reads see the round's writes;
- ``exchange`` returns one reply per command, in the given order: ``(value,
  cas)`` or ``(None, None)`` for a ``Get`` (or the ``ValueError`` of a value
  that does not decode), ``True``/``False``/``None`` for a ``Store`` (stored,
  not stored or changed, ``cas`` of a missing key), ``True``/``False`` for
  ``Touch`` and ``Delete`` (done, key missing);
- an error line from memcached, a closed connection or a socket timeout
  raises (``MemcacheError`` or ``OSError``): the connection is out of step,
  and the caller drops it.

It drives a ``pymemcache.client.base.Client`` (its socket, its serde, its
``_connect``) and pymemcache's line and value readers; nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymemcache.client.base import Client, _readline, _readvalue, check_key_helper
from pymemcache.exceptions import MemcacheUnknownError

__all__ = ["Command", "Delete", "Get", "Store", "Touch", "exchange"]


class Get:
    """Read ``key`` with its cas token: ``(value, cas)`` or ``(None, None)``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Get({self.key!r})"


class Store:
    """``cas``, ``add`` or ``set`` ``value`` under ``key`` with an expiry.

    :param verb: ``b"cas"`` (needs ``cas``), ``b"add"`` or ``b"set"``.
    """

    __slots__ = ("cas", "expire", "key", "value", "verb")

    def __init__(
        self, verb: bytes, key: str, value: object, expire: int, cas: bytes | None = None
    ) -> None:
        if (verb == b"cas") != (cas is not None):
            raise ValueError("a cas token goes with cas, and only with cas")
        self.verb = verb
        self.key = key
        self.value = value
        self.expire = expire
        self.cas = cas

    def __repr__(self) -> str:
        return f"Store({self.verb.decode()}, {self.key!r})"


class Touch:
    """Give ``key`` a new expiry."""

    __slots__ = ("expire", "key")

    def __init__(self, key: str, expire: int) -> None:
        self.key = key
        self.expire = expire

    def __repr__(self) -> str:
        return f"Touch({self.key!r})"


class Delete:
    """Delete ``key``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Delete({self.key!r})"


Command = Get | Store | Touch | Delete

#: The reply lines of the write commands, by verb.
_REPLIES: dict[bytes, dict[bytes, bool | None]] = {
    b"cas": {b"STORED": True, b"EXISTS": False, b"NOT_FOUND": None},
    b"add": {b"STORED": True, b"NOT_STORED": False},
    b"set": {b"STORED": True},
    b"touch": {b"TOUCHED": True, b"NOT_FOUND": False},
    b"delete": {b"DELETED": True, b"NOT_FOUND": False},
}


def _key(key: str) -> bytes:
    return check_key_helper(key, False)  # type: ignore[no-any-return]


def _encode(client: Client, command: Store | Touch | Delete) -> tuple[bytes, bytes]:
    """Return the verb and the request bytes of one write command."""
    if isinstance(command, Store):
        key = _key(command.key)
        data, flags = client.serde.serialize(key, command.value)
        head = b"%s %s %d %d %d" % (command.verb, key, flags, command.expire, len(data))
        if command.cas is not None:
            head += b" " + command.cas
        return command.verb, head + b"\r\n" + data + b"\r\n"
    if isinstance(command, Touch):
        return b"touch", b"touch %s %d\r\n" % (_key(command.key), command.expire)
    return b"delete", b"delete %s\r\n" % _key(command.key)


def exchange(client: Client, commands: Sequence[Command]) -> list[object]:
    """Send ``commands`` in one write on ``client``'s connection; return the replies.

    :raises MemcacheError: for an error line or an unexpected reply.
    :raises OSError: for a socket error or timeout.
    """
    writes: list[tuple[int, bytes]] = []
    requests: list[bytes] = []
    reads: dict[bytes, list[int]] = {}
    for i, command in enumerate(commands):
        if isinstance(command, Get):
            reads.setdefault(_key(command.key), []).append(i)
        else:
            verb, request = _encode(client, command)
            writes.append((i, verb))
            requests.append(request)
    if reads:
        requests.append(b"gets " + b" ".join(reads) + b"\r\n")
    if client.sock is None:
        client._connect()
    sock = client.sock
    sock.sendall(b"".join(requests))
    replies: list[Any] = [None] * len(commands)
    buf = b""
    for i, verb in writes:
        buf, line = _readline(sock, buf)
        client._raise_errors(line, verb)
        try:
            replies[i] = _REPLIES[verb][line]
        except KeyError:
            raise MemcacheUnknownError(line[:32]) from None
    if not reads:
        return replies
    for indexes in reads.values():
        for i in indexes:
            replies[i] = (None, None)
    while True:
        buf, line = _readline(sock, buf)
        if line == b"END":
            return replies
        client._raise_errors(line, b"gets")
        if not line.startswith(b"VALUE "):
            raise MemcacheUnknownError(line[:32])
        _, key, flags, size, cas = line.split()
        buf, data = _readvalue(sock, buf, int(size))
        value: object
        try:
            value = (client.serde.deserialize(key, data, int(flags)), cas)
        except ValueError as e:  # corrupt: fails the commands that read it, not the round
            value = e
        for i in reads[key]:
            replies[i] = value
