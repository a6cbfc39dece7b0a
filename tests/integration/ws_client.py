"""``JsonClient``: a blocking WebSocket client of JSON messages, for end-to-end tests.

The SimplePush client of ``tests.integration.test_e2e`` and the WebPush device
of ``tests.integration.webpush_client`` add their protocol's commands to it.
Every receive has a timeout, so a missing message fails the test instead of
hanging.
"""

from __future__ import annotations

import json
from typing import Any

import websocket
from twisted.trial.unittest import SynchronousTestCase

__all__ = ["TIMEOUT", "JsonClient"]

#: Seconds a receive waits before the test fails.
TIMEOUT = 5.0


class JsonClient:
    """JSON messages over one open WebSocket.

    :param testcase: the test (for assertions and failures).
    :param ws: an open ``websocket.WebSocket`` to the server.
    """

    def __init__(self, testcase: SynchronousTestCase, ws: websocket.WebSocket) -> None:
        self.testcase = testcase
        self.ws = ws

    def send(self, message: object) -> None:
        """Send one message (JSON-encoded unless it is text)."""
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = TIMEOUT) -> Any:
        """Return the next message, decoded; fail when none arrives in ``timeout``."""
        self.ws.settimeout(timeout)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            self.testcase.fail(f"no message within {timeout}s")
        return json.loads(text)

    def assert_silent(self, seconds: float) -> None:
        """Fail when any message arrives within ``seconds``."""
        self.ws.settimeout(seconds)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        self.testcase.fail(f"unexpected message: {text!r}")

    def sync(self) -> None:
        """Ping and wait for the pong, so everything sent before has been handled.

        (A server with ``[client] min_ping_interval`` closes a client that pings
        more often than that.)
        """
        self.ws.send("{}")
        self.testcase.assertEqual(self.recv(), {})

    def close(self) -> None:
        """Close the WebSocket."""
        self.ws.close()
