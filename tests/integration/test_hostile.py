"""End-to-end: a real ``twistd simplepush`` under hostile WebSocket peers.

Each test runs one hostile client over a raw socket against its own server
process and reads the server's resident memory and CPU time from
``/proc/<pid>`` before and after.  The client is bounded in what it sends
and in time (a few seconds each); the test asserts that the server closed the
connection, and that the memory and CPU it spent stayed within the bound.
Without the bounds of ``pushtwisted._autobahn_bounds`` these clients grew the
server by megabytes per second, or were never disconnected.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.integration.server import ServerProcess
from tests.integration.test_e2e import put
from tests.test_websocket import client_frame, close_code, server_frames

_MIB = 1024 * 1024
_HEAD = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@dataclass(frozen=True)
class _Usage:
    """A process's resident memory (bytes) and CPU time (seconds, user + system)."""

    rss: int
    cpu: float

    @classmethod
    def of(cls, pid: int) -> _Usage:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        rss_kib = int(status["VmRSS"].split()[0])
        return cls(rss=rss_kib * 1024, cpu=ticks / os.sysconf("SC_CLK_TCK"))


class _Peer:
    """A raw TCP client of the WebSocket port that reads only when asked."""

    def __init__(self, port: int, *, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect: the window is offered then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(5.0)
        self.sock.connect(("127.0.0.1", port))
        self.pending = b""

    def close(self) -> None:
        self.sock.close()

    def handshake(self) -> None:
        self.sock.sendall((_HEAD + "\r\n").encode("ascii"))
        head = self.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.pending[:200]!r}")
            self.pending += chunk
        head, _, self.pending = self.pending.partition(marker)
        return head + marker

    def hello(self) -> str:
        self.sock.sendall(client_frame(b'{"messageType":"hello","channelIDs":[]}'))
        reply = self.message()
        uaid: str = reply["uaid"]
        return uaid

    def register(self, chid: str) -> str:
        message = {"messageType": "register", "channelID": chid}
        self.sock.sendall(client_frame(json.dumps(message).encode()))
        endpoint: str = self.message()["pushEndpoint"]
        return endpoint

    def message(self) -> Any:
        """Read one whole text frame (the test's own small replies) and decode it."""
        while True:
            frames = _complete_frames(self.pending)
            if frames:
                opcode, payload, size = frames
                self.pending = self.pending[size:]
                assert opcode == 1, (opcode, payload)
                return json.loads(payload)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed while reading a message")
            self.pending += chunk

    def send_until_closed(self, data: bytes, limit: int, seconds: float) -> int:
        """Send ``data`` over and over (frames stay whole), at most ``limit`` bytes and
        ``seconds`` long, reading nothing meanwhile.

        Return the bytes sent when the server closed the connection (what it
        sent is then in ``pending``), or -1 when it is still open at the end.
        """
        self.sock.settimeout(0.2)
        view = memoryview(data)
        sent = offset = 0
        deadline = time.monotonic() + seconds
        while sent < limit and time.monotonic() < deadline:
            try:
                n = self.sock.send(view[offset : offset + min(len(data) - offset, limit - sent)])
            except TimeoutError:
                continue  # the server is not reading: keep trying until the deadline
            except OSError:  # EPIPE, ECONNRESET: closed by the server
                self.is_open(seconds=1.0)  # collect what it sent before closing
                return sent
            sent += n
            offset = (offset + n) % len(data)
        return -1 if self.is_open(seconds=max(0.5, deadline - time.monotonic())) else sent

    def is_open(self, seconds: float) -> bool:
        """Return False when the server closed the connection within ``seconds``
        (what it sent meanwhile is kept in ``pending``, the last 4 MiB of it)."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return True
                continue
            except OSError:
                return False
            if not chunk:
                return False
            self.pending = (self.pending + chunk)[-4 * _MIB :]


def _complete_frames(data: bytes) -> tuple[int, bytes, int] | None:
    """Return (opcode, payload, bytes used) of the first whole server frame in ``data``."""
    if len(data) < 2:
        return None
    size, start = data[1] & 0x7F, 2
    if size == 126:
        size, start = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        size, start = int.from_bytes(data[2:10], "big"), 10
    if len(data) < start + size:
        return None
    return data[0] & 0x0F, data[start : start + size], start + size


class HostilePeerTests(SynchronousTestCase):
    """One hostile client against a real server; the server's costs read from /proc."""

    config: dict[str, dict[str, object]] = {"storage": {"backend": "memory"}}

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SkipTest("reads the server's memory and CPU from Linux's /proc")

    def start(self, **sections: dict[str, object]) -> ServerProcess:
        config = {name: dict(table) for name, table in self.config.items()}
        for name, table in sections.items():
            config.setdefault(name, {}).update(table)
        server = ServerProcess(self, config)
        server.start()
        return server

    def peer(self, server: ServerProcess, **kwargs: Any) -> _Peer:
        peer = _Peer(server.ws_port, **kwargs)
        self.addCleanup(peer.close)
        return peer

    def usage(self, server: ServerProcess) -> _Usage:
        assert server.process is not None
        return _Usage.of(server.process.pid)

    def assertWithin(self, before: _Usage, after: _Usage, *, rss: int, cpu: float) -> None:
        """The server grew by at most ``rss`` bytes and spent at most ``cpu`` seconds."""
        grown, spent = after.rss - before.rss, after.cpu - before.cpu
        self.assertLessEqual(grown, rss, f"RSS grew {grown / _MIB:.1f} MiB")
        self.assertLessEqual(spent, cpu, f"server used {spent:.2f} s of CPU")

    def test_ping_flood_never_reading(self) -> None:
        """A client flooding pings without reading is closed after its burst (1008)."""
        server = self.start()
        peer = self.peer(server, receive_buffer=4096)
        peer.handshake()
        before = self.usage(server)
        ping = b"".join(client_frame(b"p" * 125, 9) for _ in range(500))  # 65.5 KB
        sent = peer.send_until_closed(ping, limit=64 * _MIB, seconds=10)
        self.assertNotEqual(sent, -1, "the server did not close the connection")
        self.assertWithin(before, self.usage(server), rss=4 * _MIB, cpu=2.0)
        self.assertIn("too many control frames", server.log)

    def test_unread_pongs_bounded(self) -> None:
        """With control frames unlimited, a client that pings and never reads is aborted
        once 1 MiB of its output waits, whatever it sends."""
        server = self.start(websocket={"max_control_frames_per_second": 0.0})
        peer = self.peer(server, receive_buffer=4096)
        peer.handshake()
        before = self.usage(server)
        ping = b"".join(client_frame(b"p" * 125, 9) for _ in range(500))
        sent = peer.send_until_closed(ping, limit=64 * _MIB, seconds=20)
        self.assertNotEqual(sent, -1, "the server did not close the connection")
        # The kernel's buffers take a few MB of pongs before the server's fill.
        self.assertLess(sent, 32 * _MIB)
        self.assertWithin(before, self.usage(server), rss=6 * _MIB, cpu=3.0)
        self.assertIn("peer does not read", server.log)

    def test_writing_but_never_reading(self) -> None:
        """A client that sends a purge every 0.2 s but never reads is dropped within
        auto_ping_interval + auto_ping_timeout (each rounded up to the timer's whole
        second, plus slack for a busy machine); PUTs to it are then 202."""
        server = self.start(websocket={"auto_ping_interval": 1.0, "auto_ping_timeout": 1.0})
        peer = self.peer(server)
        peer.handshake()
        peer.hello()
        endpoint = peer.register(str(uuid.uuid4()))
        self.assertEqual(put(endpoint, b"version=1")[0], 200)
        before = self.usage(server)
        started = time.monotonic()
        purge = client_frame(b'{"messageType":"purge"}')
        closed_after = None
        while time.monotonic() - started < 10:
            try:
                peer.sock.sendall(purge)
            except OSError:
                closed_after = time.monotonic() - started
                break
            time.sleep(0.2)
        self.assertIsNotNone(closed_after, "still connected after 10 s")
        assert closed_after is not None
        self.assertLess(closed_after, 2.0 + 2.0 + 2.0)
        self.assertEqual(put(endpoint, b"version=2")[0], 202)
        self.assertWithin(before, self.usage(server), rss=2 * _MIB, cpu=1.0)
        self.assertIn("ping timeout", server.log)

    def test_not_draining_answers_202(self) -> None:
        """PUTs to a client that stopped reading answer 200 until its output backs up,
        then 202 (stored); once it reads again, it gets the stored update."""
        server = self.start(endpoint={"max_data": 60000, "max_body": 131072})
        peer = self.peer(server, receive_buffer=4096)
        peer.handshake()
        peer.hello()
        chid = str(uuid.uuid4())
        endpoint = peer.register(chid)
        data = b"x" * 60000
        statuses = []
        for version in range(1, 201):  # 12 MB at most
            status, _ = put(endpoint, b"version=%d&data=%s" % (version, data))
            statuses.append(status)
            if status == 202:
                break
        self.assertEqual(statuses[-1], 202, "every PUT answered 200")
        self.assertEqual(set(statuses[:-1]), {200})
        self.assertGreater(len(statuses), 3)  # the kernel takes megabytes first
        last = len(statuses)
        # Read everything: the stored version arrives once the socket drained.
        peer.sock.settimeout(10)
        deadline = time.monotonic() + 10
        seen = 0
        while seen < last and time.monotonic() < deadline:
            message = peer.message()
            if message.get("messageType") == "notification":
                seen = max(seen, *(u["version"] for u in message["updates"]))
        self.assertEqual(seen, last)

    def test_endless_handshake_head(self) -> None:
        """A request head that never ends is answered 431 and closed after 16 KiB."""
        server = self.start()
        peer = self.peer(server)
        before = self.usage(server)
        peer.sock.sendall(b"GET / HTTP/1.1\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        sent = peer.send_until_closed(line, limit=8 * _MIB, seconds=10)
        self.assertNotEqual(sent, -1, "the server did not close the connection")
        self.assertLess(sent, 8 * _MIB)
        self.assertTrue(peer.pending.startswith(b"HTTP/1.1 431 "), peer.pending[:100])
        self.assertWithin(before, self.usage(server), rss=2 * _MIB, cpu=1.0)

    def test_fragment_flood(self) -> None:
        """200,000 one-byte fragments: closed with 1009 after 1,000, memory flat."""
        server = self.start()
        peer = self.peer(server)
        peer.handshake()
        peer.hello()
        before = self.usage(server)
        flood = [client_frame(b"{", 1, fin=False)]
        flood += [client_frame(b" ", 0, fin=False)] * 199_999
        data = b"".join(flood)
        sent = peer.send_until_closed(data, limit=len(data), seconds=10)
        self.assertNotEqual(sent, -1, "the server did not close the connection")
        frames = server_frames(peer.pending)
        self.assertEqual(close_code(frames[-1]), 1009)
        self.assertWithin(before, self.usage(server), rss=2 * _MIB, cpu=1.0)
