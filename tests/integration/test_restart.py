"""Restart and outage tests: a real ``twistd`` process on sqlite and on memcached.

An update answered 200/202 must survive a SIGTERM and restart of the server,
and a memcached outage must answer 503 (endpoint, hello, health) without
resetting any UAID, then recover by itself once memcached is back; a hello
that needs no storage answer passes, and its connection gets the stored
updates once memcached answers again.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import websocket
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.memcached_fixture import MemcachedProcess, shared_memcached
from tests.integration.server import ServerProcess
from tests.integration.test_e2e import TIMEOUT, _Client, put


def _get(url: str) -> tuple[int, Any]:
    """GET ``url``; return the status and the decoded JSON body."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class _RestartMixin:
    """Register, PUT while offline, SIGTERM, restart: the update arrives with its data."""

    backend: dict[str, object]

    def connect(self, server: ServerProcess) -> _Client:
        ws = websocket.create_connection(server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws.close)  # type: ignore[attr-defined]
        return _Client(self, ws)  # type: ignore[arg-type]

    def test_offline_update_survives_restart(self) -> None:
        """An update stored (202) before SIGTERM is delivered, with data, after the restart."""
        server = ServerProcess(self, {"storage": dict(self.backend)})  # type: ignore[arg-type]
        server.start()
        client = self.connect(server)
        uaid = client.hello()
        chid = str(uuid.uuid4())
        endpoint = client.register(chid)
        client.close()
        status, _ = put(endpoint, b"version=42&data=hello%20again")
        self.assertEqual(status, 202)  # type: ignore[attr-defined]
        self.assertEqual(server.stop(), 0)  # type: ignore[attr-defined]

        server.start()
        again = self.connect(server)
        self.assertEqual(again.hello(uaid, [chid]), uaid)  # type: ignore[attr-defined]
        message = again.recv()
        self.assertEqual(  # type: ignore[attr-defined]
            message["updates"], [{"channelID": chid, "version": 42, "data": "hello again"}]
        )
        # The endpoint issued before the restart still works after it.
        again.ack(chid, 42)
        status, _ = put(endpoint, b"version=43")
        self.assertEqual(status, 200)  # type: ignore[attr-defined]

    def test_answered_updates_survive_sigkill(self) -> None:
        """Updates answered 202 survive a SIGKILL (no graceful shutdown) of the server."""
        server = ServerProcess(self, {"storage": dict(self.backend)})  # type: ignore[arg-type]
        server.start()
        client = self.connect(server)
        uaid = client.hello()
        chids = [str(uuid.uuid4()) for _ in range(5)]
        endpoints = [client.register(chid) for chid in chids]
        client.close()
        for version, endpoint in enumerate(endpoints, 1):
            status, _ = put(endpoint, f"version={version}".encode())
            self.assertEqual(status, 202)  # type: ignore[attr-defined]
        self.assertEqual(server.stop(signal.SIGKILL), -signal.SIGKILL)  # type: ignore[attr-defined]

        server.start()
        again = self.connect(server)
        self.assertEqual(again.hello(uaid, chids), uaid)  # type: ignore[attr-defined]
        got = sorted((u["channelID"], u["version"]) for u in again.recv()["updates"])
        self.assertEqual(got, sorted(zip(chids, range(1, 6), strict=True)))  # type: ignore[attr-defined]


class SqliteRestartTests(_RestartMixin, SynchronousTestCase):
    """Restart with the embedded sqlite store (the default)."""

    backend = {"backend": "sqlite"}


class MemcachedRestartTests(_RestartMixin, SynchronousTestCase):
    """Restart with the shared memcached store."""

    def setUp(self) -> None:
        self.backend = {"backend": "memcached", "servers": [shared_memcached()]}


class MemcachedOutageTests(SynchronousTestCase):
    """memcached hung: 503 everywhere, no reset; it comes back: service resumes."""

    @staticmethod
    def _resume(memcached: MemcachedProcess) -> None:
        if memcached.process is not None and memcached.process.poll() is None:
            memcached.process.send_signal(signal.SIGCONT)

    def start(self) -> tuple[MemcachedProcess, ServerProcess]:
        """Start a private memcached and a server on it (storage timeout 1 s)."""
        memcached = MemcachedProcess()
        self.addCleanup(memcached.cleanup)
        memcached.start()
        server = ServerProcess(
            self,
            {"storage": {"backend": "memcached", "servers": [memcached.address], "timeout": 1.0}},
        )
        server.start()
        return memcached, server

    def registered(self, server: ServerProcess) -> tuple[str, str, str]:
        """Connect, say hello, register one channel and disconnect; return the UAID,
        the channel ID and its pushEndpoint."""
        ws = websocket.create_connection(server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws.close)
        client = _Client(self, ws)
        uaid = client.hello()
        chid = str(uuid.uuid4())
        endpoint = client.register(chid)
        client.close()
        return uaid, chid, endpoint

    def test_outage_answers_503_and_recovers(self) -> None:
        """PUT, hello and /health answer 503 during the outage; afterwards the same UAID works."""
        memcached, server = self.start()
        uaid, chid, endpoint = self.registered(server)
        health = f"{server.endpoint_url}/health"
        self.assertEqual(_get(health)[0], 200)

        # A hung memcached (SIGSTOP): every call times out, the items stay.
        assert memcached.process is not None
        memcached.process.send_signal(signal.SIGSTOP)
        self.addCleanup(self._resume, memcached)
        status, body = put(endpoint, b"version=7")
        self.assertEqual(status, 503, body)
        status, body = _get(health)
        self.assertEqual(status, 503)
        self.assertIn("storage", body)
        ws2 = websocket.create_connection(server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws2.close)
        during = _Client(self, ws2)
        during.send({"messageType": "hello", "uaid": uaid, "channelIDs": [chid]})
        reply = during.recv()
        self.assertEqual(reply["status"], 503, reply)
        during.close()

        memcached.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while _get(health)[0] != 200:
            self.assertLess(time.monotonic(), deadline, "no recovery within 10 s")
            time.sleep(0.2)
        status, _ = put(endpoint, b"version=8")
        self.assertEqual(status, 202)
        ws3 = websocket.create_connection(server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws3.close)
        after = _Client(self, ws3)
        self.assertEqual(after.hello(uaid, [chid]), uaid)
        self.assertEqual(after.recv()["updates"], [{"channelID": chid, "version": 8}])

    def test_stored_updates_reach_a_hello_made_during_the_outage(self) -> None:
        """A hello without channelIDs is answered 200 while memcached hangs; the update
        stored before reaches that connection once memcached answers, without a new hello."""
        memcached, server = self.start()
        uaid, chid, endpoint = self.registered(server)
        self.assertEqual(put(endpoint, b"version=5")[0], 202)

        assert memcached.process is not None
        memcached.process.send_signal(signal.SIGSTOP)
        self.addCleanup(self._resume, memcached)
        ws2 = websocket.create_connection(server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws2.close)
        during = _Client(self, ws2)
        self.assertEqual(during.hello(uaid), uaid)
        deadline = time.monotonic() + 10
        while "storage fetch_pending failed" not in server.log:
            self.assertLess(time.monotonic(), deadline, "the fetch after hello did not fail")
            time.sleep(0.1)
        memcached.process.send_signal(signal.SIGCONT)
        self.assertEqual(during.recv(timeout=20)["updates"], [{"channelID": chid, "version": 5}])
