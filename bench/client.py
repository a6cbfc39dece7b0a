"""Lean asyncio clients: a push device over WebSocket, and a keep-alive HTTP request pool.

A device speaks SimplePush, or WebPush when its worker's ``webpush`` is set
(hello with ``use_webpush``, one ``notification`` per message, acked by its id).

Both are plain ``asyncio.Protocol`` subclasses with ``__slots__``: no stream
objects, no per-message tasks, so one generator core can drive tens of
thousands of sockets.  Failures surface as ``BenchFailure(kind)`` where
``kind`` is a short label (``tcp_refused``, ``ws_status_503``, ``hello_timeout``, ...)
that the reports count by kind.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import socket
import sys
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

from bench.wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    FrameError,
    HttpError,
    HttpResponseParser,
    encode_close,
    encode_frame,
    make_ws_key,
    parse_upgrade_response,
    put_request,
    upgrade_request,
)

__all__ = ["BenchFailure", "Device", "WSProto", "HttpConn", "new_channel_id", "os_error_kind"]

_loads = json.loads
_dumps = json.dumps


class BenchFailure(Exception):
    """One failed step, labelled with a short kind."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def os_error_kind(prefix: str, exc: BaseException) -> str:
    """``tcp_refused``, ``tcp_EADDRNOTAVAIL``, ... for an exception from connect."""
    if isinstance(exc, ConnectionRefusedError):
        return f"{prefix}_refused"
    if isinstance(exc, ConnectionResetError):
        return f"{prefix}_reset"
    if isinstance(exc, TimeoutError):
        return f"{prefix}_timeout"
    if isinstance(exc, OSError) and exc.errno:
        return f"{prefix}_{errno.errorcode.get(exc.errno, exc.errno)}"
    return f"{prefix}_{type(exc).__name__}"


_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: On by default on Linux; ``BENCH_NO_PORT=0`` binds ``(local_ip, 0)`` the plain way.
_no_port_ok = sys.platform.startswith("linux") and os.environ.get("BENCH_NO_PORT", "1") != "0"


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    local_ip: str | None,
) -> None:
    """``create_connection`` from ``local_ip`` without a port search at bind time.

    With ``IP_BIND_ADDRESS_NO_PORT`` (Linux) the kernel picks the source port at
    connect, by the full 4-tuple: binding 20,000 sockets to a few loopback
    addresses then costs no more than connecting them unbound.  A plain
    ``bind((local_ip, 0))`` searches the port range for a port no socket on
    that address holds, in the kernel, and the search grows with the ports
    taken: at ~7,000 sockets per address it used more CPU than the whole
    cluster under test, and a 12-node ramp fell from ~950 to ~250
    connections/s (bench/README.md, "Source ports").
    """
    global _no_port_ok
    if local_ip is None:
        await loop.create_connection(factory, host, port)
        return
    if not _no_port_ok:
        await loop.create_connection(factory, host, port, local_addr=(local_ip, 0))
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            _no_port_ok = False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((local_ip, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise


def new_channel_id() -> str:
    """A random lowercase dashed UUID4 (cheaper than ``uuid.uuid4``: no syscall)."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


class WSProto(asyncio.Protocol):
    """One WebSocket connection of a ``Device``: upgrade, then masked text frames."""

    __slots__ = (
        "dev",
        "transport",
        "request",
        "key",
        "head",
        "dec",
        "open",
        "ready",
        "lost",
        "close_sent",
        "abort_timer",
    )

    def __init__(self, dev: Device, request: bytes, key: bytes, loop: asyncio.AbstractEventLoop):
        self.dev = dev
        self.transport: asyncio.Transport | None = None
        self.request = request
        self.key = key
        self.head = b""
        self.dec = FrameDecoder()
        self.open = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.close_sent = False
        self.abort_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]
        self.request = b""

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            idx = self.head.find(b"\r\n\r\n")
            if idx < 0:
                if len(self.head) > 16384:
                    self._fail("ws_bad_response")
                return
            _status, err = parse_upgrade_response(self.head[:idx], self.key)
            rest = self.head[idx + 4 :]
            self.head = b""
            if err is not None:
                self._fail(err)
                return
            self.open = True
            if not self.ready.done():
                self.ready.set_result(None)
            if not rest:
                return
            data = rest
        try:
            frames = self.dec.feed(data)
        except FrameError:
            self.dev.worker.count("ws_bad_frame")
            self.transport.abort()  # type: ignore[union-attr]
            return
        for op, payload in frames:
            if op == OP_TEXT:
                self.dev.on_text(payload)
            elif op == OP_PING:
                self.transport.write(encode_frame(OP_PONG, payload))  # type: ignore[union-attr]
            elif op == OP_CLOSE:
                if not self.close_sent:
                    self.close_sent = True
                    self.dev.worker.count("server_closed")
                    self.transport.write(encode_close(1000))  # type: ignore[union-attr]
                # The server closes TCP after the close handshake; don't wait forever.
                self._arm_abort(2.0)
            elif op != OP_PONG:
                self.dev.worker.count("ws_unexpected_opcode")

    def _fail(self, kind: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(BenchFailure(kind))
        if self.transport is not None:
            self.transport.abort()

    def _arm_abort(self, delay: float) -> None:
        if self.abort_timer is None and self.transport is not None:
            loop = self.lost.get_loop()
            self.abort_timer = loop.call_later(delay, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        if not self.ready.done():
            self.ready.set_exception(BenchFailure("ws_closed"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.dev.on_lost(self)

    def send_text(self, text: str) -> None:
        self.transport.write(encode_frame(OP_TEXT, text.encode()))  # type: ignore[union-attr]

    def send_close(self) -> None:
        if not self.close_sent and self.transport is not None:
            self.close_sent = True
            self.transport.write(encode_close(1000))


class Device:
    """A simulated user agent: one UAID, one channel, at most one live connection."""

    __slots__ = (
        "worker",
        "idx",
        "ip",
        "uaid",
        "chid",
        "path",
        "proto",
        "waiter",
        "version",
        "want",
        "want_fut",
        "closing",
        "stage",
    )

    def __init__(self, worker: Any, idx: int, ip: str) -> None:
        self.worker = worker
        self.idx = idx
        self.ip = ip
        self.uaid = ""
        self.chid = ""
        self.path = ""
        self.proto: WSProto | None = None
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.version = 0
        self.want = 0
        self.want_fut: asyncio.Future[None] | None = None
        self.closing = False
        #: The step in progress (tcp, ws, hello, register, ...), for timeout labels.
        self.stage = ""

    # -- inbound -------------------------------------------------------------

    def on_text(self, payload: bytes) -> None:
        try:
            msg = _loads(payload)
        except ValueError:
            self.worker.count("bad_json")
            return
        if type(msg) is not dict:
            self.worker.count("bad_message")
            return
        mt = msg.get("messageType")
        if mt == "notification" and "updates" not in msg:
            self._on_message(msg)
            return
        if mt == "notification":
            updates = msg.get("updates")
            if type(updates) is not list:
                self.worker.count("bad_notification")
                return
            self.worker.on_updates(self, updates)
            if self.proto is not None and self.proto.transport is not None:
                acks = ",".join(
                    f'{{"channelID":{_dumps(u.get("channelID"))},'
                    f'"version":{_dumps(u.get("version"))}}}'
                    for u in updates
                    if type(u) is dict
                )
                self.proto.send_text(f'{{"messageType":"ack","updates":[{acks}]}}')
            return
        w = self.waiter
        if w is not None and not w.done():
            self.waiter = None
            w.set_result(msg)
        else:
            self.worker.count(f"unexpected_{mt}")

    def _on_message(self, msg: dict[str, Any]) -> None:
        """A WebPush notification: count it, then ack it by its id (``version``)."""
        self.worker.on_message(self, msg)
        if self.proto is not None and self.proto.transport is not None:
            chid, version = _dumps(msg.get("channelID")), _dumps(msg.get("version"))
            self.proto.send_text(
                f'{{"messageType":"ack","updates":[{{"channelID":{chid},'
                f'"version":{version},"code":100}}]}}'
            )

    def on_lost(self, proto: WSProto) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        w = self.waiter
        if w is not None and not w.done():
            self.waiter = None
            w.set_exception(BenchFailure("closed"))
        if not self.closing:
            self.worker.on_dropped(self)

    # -- outbound ------------------------------------------------------------

    async def request(self, text: str, what: str, timeout: float | None) -> dict[str, Any]:
        """Send ``text`` and wait for the next non-notification message.

        ``timeout`` None: the caller bounds the whole sequence (see ``stage``).
        """
        proto = self.proto
        if proto is None or proto.transport is None:
            raise BenchFailure(f"{what}_closed")
        fut: asyncio.Future[dict[str, Any]] = proto.lost.get_loop().create_future()
        self.waiter = fut
        self.stage = what
        proto.send_text(text)
        try:
            if timeout is None:
                return await fut
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise BenchFailure(f"{what}_timeout") from None
        except BenchFailure as e:
            raise BenchFailure(f"{what}_{e.kind}") from None
        finally:
            if self.waiter is fut:
                self.waiter = None

    async def connect(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        host_header: str,
        subprotocol: str | None,
        timeout: float | None,
    ) -> tuple[float, float]:
        """TCP connect + WebSocket upgrade; returns (tcp seconds, upgrade seconds)."""
        key = make_ws_key()
        proto = WSProto(self, upgrade_request(host_header, "/", key, subprotocol), key, loop)
        self.closing = False
        self.stage = "tcp"
        t0 = perf_counter()
        try:
            if timeout is None:
                await open_connection(loop, lambda: proto, host, port, self.ip)
            else:
                async with asyncio.timeout(timeout):
                    await open_connection(loop, lambda: proto, host, port, self.ip)
        except TimeoutError:
            raise BenchFailure("tcp_timeout") from None
        except OSError as e:
            raise BenchFailure(os_error_kind("tcp", e)) from None
        t1 = perf_counter()
        self.proto = proto
        self.stage = "ws"
        try:
            if timeout is None:
                await proto.ready
            else:
                async with asyncio.timeout(timeout):
                    await proto.ready
        except TimeoutError:
            proto.transport.abort()  # type: ignore[union-attr]
            raise BenchFailure("ws_timeout") from None
        return t1 - t0, perf_counter() - t1

    async def hello(self, timeout: float | None) -> None:
        webpush = self.worker.webpush
        if webpush:
            uaid = f',"uaid":"{self.uaid}"' if self.uaid else ""
            text = f'{{"messageType":"hello","use_webpush":true{uaid}}}'
        elif self.uaid:
            text = f'{{"messageType":"hello","uaid":"{self.uaid}","channelIDs":["{self.chid}"]}}'
        else:
            text = '{"messageType":"hello","uaid":"","channelIDs":[]}'
        msg = await self.request(text, "hello", timeout)
        if msg.get("messageType") != "hello":
            raise BenchFailure(f"hello_unexpected_{msg.get('messageType')}")
        status = msg.get("status")
        if status != 200:
            raise BenchFailure(f"hello_status_{status}")
        if webpush and msg.get("use_webpush") is not True:
            raise BenchFailure("hello_not_webpush")
        uaid = msg.get("uaid")
        if not isinstance(uaid, str) or len(uaid) != 32:
            raise BenchFailure("hello_bad_uaid")
        if self.uaid and uaid != self.uaid:
            self.uaid = uaid
            raise BenchFailure("hello_uaid_changed")
        self.uaid = uaid

    async def register(self, timeout: float | None) -> str:
        """Register a fresh channel; returns the push endpoint URL."""
        chid = new_channel_id()
        msg = await self.request(
            f'{{"messageType":"register","channelID":"{chid}"}}', "register", timeout
        )
        if msg.get("messageType") != "register":
            raise BenchFailure(f"register_unexpected_{msg.get('messageType')}")
        status = msg.get("status")
        if status != 200:
            raise BenchFailure(f"register_status_{status}")
        endpoint = msg.get("pushEndpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith("http"):
            raise BenchFailure("register_bad_endpoint")
        if msg.get("channelID", chid) != chid:
            raise BenchFailure("register_wrong_channel")
        self.chid = chid
        parts = urlsplit(endpoint)
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        return endpoint

    async def ping(self, timeout: float) -> None:
        msg = await self.request("{}", "ping", timeout)
        if msg:
            raise BenchFailure("ping_bad_reply")

    async def close(self, timeout: float) -> None:
        """Close handshake, then wait for the server to drop TCP (so it knows we're gone)."""
        proto = self.proto
        if proto is None:
            return
        self.closing = True
        proto.send_close()
        try:
            async with asyncio.timeout(timeout):
                await proto.lost
        except TimeoutError:
            if proto.transport is not None:
                proto.transport.abort()
            raise BenchFailure("close_timeout") from None

    def abort(self) -> None:
        self.closing = True
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abort()


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time."""

    __slots__ = ("transport", "parser", "waiter", "closed", "host_header")

    def __init__(self, host_header: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False
        self.host_header = host_header

    @classmethod
    async def open(
        cls,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        local_ip: str | None,
        timeout: float,
    ) -> HttpConn:
        conn = cls(f"{host}:{port}")
        try:
            async with asyncio.timeout(timeout):
                await open_connection(loop, lambda: conn, host, port, local_ip)
        except TimeoutError:
            raise BenchFailure("http_connect_timeout") from None
        except OSError as e:
            raise BenchFailure(os_error_kind("http_connect", e)) from None
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except HttpError:
            self._fail("http_bad_response")
            return
        for resp in responses:
            w = self.waiter
            self.waiter = None
            if w is not None and not w.done():
                w.set_result(resp)
            if not resp[2]:
                self.closed = True
                self.transport.close()  # type: ignore[union-attr]

    def _fail(self, kind: str) -> None:
        self.closed = True
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            w.set_exception(BenchFailure(kind))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        last = self.parser.eof()
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            if last is not None:
                w.set_result(last)
            else:
                w.set_exception(BenchFailure("http_conn_lost"))

    async def put(
        self, path: str, body: bytes, timeout: float, on_sent: Callable[[], None] | None = None
    ) -> int:
        """PUT ``body`` to ``path``; returns the status."""
        return await self.send(put_request(self.host_header, path, body), timeout, on_sent)

    async def send(
        self, request: bytes, timeout: float, on_sent: Callable[[], None] | None = None
    ) -> int:
        """Write one whole request (``put_request``, ``post_request``); returns the status."""
        if self.closed or self.transport is None:
            raise BenchFailure("http_conn_lost")
        fut: asyncio.Future[tuple[int, bytes, bool]] = asyncio.get_running_loop().create_future()
        self.waiter = fut
        if on_sent is not None:
            on_sent()
        self.transport.write(request)
        try:
            async with asyncio.timeout(timeout):
                status, _body, _keep = await fut
        except TimeoutError:
            self._fail("http_timeout")
            raise BenchFailure("http_timeout") from None
        return status

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
