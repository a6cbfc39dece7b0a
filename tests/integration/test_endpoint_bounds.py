"""End-to-end: the endpoint listener's bounds against hostile app-server clients.

A real ``twistd simplepush``; the server's CPU time is read from
``/proc/<pid>/stat`` before and after each hostile phase.  Every phase is
bounded in count and time.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import websocket
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.server import ServerProcess
from tests.integration.test_e2e import TIMEOUT, _Client, put

#: A multipart body of 1,200 tiny parts (62 KB, under max_body): 0.2 s of CPU each
#: with the email-package parser.
_PARTS = 1200


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _many_parts() -> bytes:
    part = b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
    return part * _PARTS + b"--B--\r\n"


class EndpointBoundsTests(SynchronousTestCase):
    """Slow and crafted requests cost the endpoint listener little and end quickly."""

    def setUp(self) -> None:
        self.server = ServerProcess(self, {"endpoint": {"request_timeout": 1.0}})
        self.server.start()
        assert self.server.process is not None
        self.pid = self.server.process.pid

    def slow_socket(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.endpoint_port), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(b"PUT /update/x HTTP/1.1\r\nHost: x\r\n")
        return sock

    def test_trickled_headers_get_408_and_free_the_listener(self) -> None:
        """Four clients sending a header line every 0.3 s (each line resets the 60 s idle
        timer) cannot hold their connections: 1 s after its first byte each is answered
        408 and closed."""
        socks = [self.slow_socket() for _ in range(4)]
        started = time.monotonic()
        for n in range(3):  # until 0.9 s: a later line could meet the close (a reset)
            time.sleep(0.3)
            for sock in socks:
                sock.sendall(b"X-Slow-%d: 1\r\n" % n)
        answers = [_read_to_close(sock) for sock in socks]
        self.assertLess(time.monotonic() - started, 1 + TIMEOUT)
        for data in answers:
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)

    def test_crafted_multipart_costs_little(self) -> None:
        """Twenty PUTs of a 1,200-part multipart body (with a valid token, then a bad
        one) are 400 and 404, and cost the server well under a second of CPU."""
        ws = websocket.create_connection(self.server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws.close)
        client = _Client(self, ws)
        client.hello()
        endpoint = client.register(str(uuid.uuid4()))
        body = _many_parts()
        headers = {"Content-Type": "multipart/form-data; boundary=B"}
        before = _cpu_seconds(self.pid)
        for url, expected in [(endpoint, 400), (self.server.endpoint_url + "/update/x", 404)]:
            for _ in range(10):
                status, answer = put(url, body, headers)
                self.assertEqual(status, expected, answer)
        self.assertLess(_cpu_seconds(self.pid) - before, 1.0)
        self.assertNotIn("Traceback", self.server.log)
