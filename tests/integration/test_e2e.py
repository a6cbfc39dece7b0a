"""End-to-end: the real ``twistd simplepush`` process, a real WebSocket client, real PUTs.

The server runs in a separate process, so the blocking clients
(``websocket-client`` and ``urllib``/``http.client``) are fine here; every
receive has a timeout, so a missing message fails the test instead of hanging.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import websocket
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.ids import is_valid_id
from tests.integration.server import ServerProcess, run_command, twistd_command
from tests.integration.ws_client import TIMEOUT, JsonClient


def put(url: str, body: bytes | None, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """PUT ``body`` to ``url`` with urllib (form Content-Type by default); return status, body."""
    request = urllib.request.Request(url, data=body, method="PUT", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")


def put_raw(url: str, body: bytes) -> tuple[int, str]:
    """PUT ``body`` with no Content-Type header at all; return status, body."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        connection.putrequest("PUT", parts.path, skip_accept_encoding=True)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


class _Client(JsonClient):
    """A blocking SimplePush client over ``websocket-client``."""

    def hello(self, uaid: str = "", channel_ids: list[str] | None = None) -> str:
        """Send hello; check the 200 reply and return the UAID it gives."""
        self.send({"messageType": "hello", "uaid": uaid, "channelIDs": channel_ids or []})
        reply = self.recv()
        self.testcase.assertEqual(
            (reply.get("messageType"), reply.get("status")), ("hello", 200), reply
        )
        self.testcase.assertTrue(is_valid_id(reply.get("uaid")), reply)
        return str(reply["uaid"])

    def register(self, chid: str) -> str:
        """Register ``chid``; check the 200 reply and return its pushEndpoint."""
        self.send({"messageType": "register", "channelID": chid})
        reply = self.recv()
        self.testcase.assertEqual(
            (reply.get("messageType"), reply.get("status"), reply.get("channelID")),
            ("register", 200, chid),
            reply,
        )
        return str(reply["pushEndpoint"])

    def ack(self, chid: str, version: int) -> None:
        self.send({"messageType": "ack", "updates": [{"channelID": chid, "version": version}]})


class EndToEndTests(SynchronousTestCase):
    """A client and an application server talk to a real pushtwisted process."""

    config: dict[str, dict[str, object]] = {}

    def setUp(self) -> None:
        self.server = ServerProcess(self, self.config)
        self.server.start()

    def connect(self, **kwargs: Any) -> _Client:
        """Open a WebSocket to the server (closed at cleanup)."""
        ws = websocket.create_connection(self.server.ws_url, timeout=TIMEOUT, **kwargs)
        self.addCleanup(ws.close)
        return _Client(self, ws)

    def registered(self) -> tuple[_Client, str, str, str]:
        """Return a client after hello and one register, with its UAID, chid and endpoint."""
        client = self.connect(subprotocols=["push-notification"])
        uaid = client.hello()
        chid = str(uuid.uuid4())
        return client, uaid, chid, client.register(chid)

    def test_hello_and_register(self) -> None:
        """A first hello gets a fresh UAID; register returns a pushEndpoint under public_url."""
        client = self.connect()
        uaid = client.hello()
        self.assertEqual(len(uaid.replace("-", "")), 32)
        endpoint = client.register(str(uuid.uuid4()))
        self.assertTrue(
            endpoint.startswith(self.server.endpoint_url + "/update/"),
            f"{endpoint!r} is not under {self.server.endpoint_url}/update/",
        )
        self.assertGreater(len(endpoint), len(self.server.endpoint_url + "/update/"))

    def test_online_delivery(self) -> None:
        """A PUT for a connected client answers 200 and the notification arrives."""
        client, _, chid, endpoint = self.registered()
        status, _ = put(endpoint, b"version=5")
        self.assertEqual(status, 200)
        self.assertEqual(
            client.recv(),
            {"messageType": "notification", "updates": [{"channelID": chid, "version": 5}]},
        )

    def test_online_delivery_with_data(self) -> None:
        """``data`` in the PUT is passed to a connected client."""
        client, _, chid, endpoint = self.registered()
        status, _ = put(endpoint, b"version=8&data=hello+world")
        self.assertEqual(status, 200)
        self.assertEqual(
            client.recv()["updates"], [{"channelID": chid, "version": 8, "data": "hello world"}]
        )

    def test_offline_delivery(self) -> None:
        """A PUT for an offline client is 202; on reconnect the hello reply, then the update."""
        client, uaid, chid, endpoint = self.registered()
        client.close()
        status, _ = put(endpoint, b"version=6&data=payload")
        self.assertEqual(status, 202)
        again = self.connect()
        self.assertEqual(again.hello(uaid, [chid]), uaid)
        self.assertEqual(
            again.recv(),
            {
                "messageType": "notification",
                "updates": [{"channelID": chid, "version": 6, "data": "payload"}],
            },
        )

    def test_acked_update_not_resent_on_reconnect(self) -> None:
        """After an ack, reconnecting with the same UAID gets nothing."""
        client, uaid, chid, endpoint = self.registered()
        self.assertEqual(put(endpoint, b"version=5")[0], 200)
        self.assertEqual(client.recv()["updates"][0]["version"], 5)
        client.ack(chid, 5)
        client.sync()
        client.close()
        again = self.connect()
        self.assertEqual(again.hello(uaid, [chid]), uaid)
        again.assert_silent(1.0)

    def test_unacked_update_resent_on_reconnect(self) -> None:
        """A delivered but unacknowledged update is sent again at the next hello."""
        client, uaid, chid, endpoint = self.registered()
        self.assertEqual(put(endpoint, b"version=3")[0], 200)
        self.assertEqual(client.recv()["updates"], [{"channelID": chid, "version": 3}])
        client.close()
        again = self.connect()
        self.assertEqual(again.hello(uaid, [chid]), uaid)
        self.assertEqual(again.recv()["updates"], [{"channelID": chid, "version": 3}])

    def test_unregister_then_put_is_gone(self) -> None:
        """After unregister the endpoint answers 410 Gone."""
        client, _, chid, endpoint = self.registered()
        client.send({"messageType": "unregister", "channelID": chid})
        self.assertEqual(
            client.recv(), {"messageType": "unregister", "status": 200, "channelID": chid}
        )
        status, _ = put(endpoint, b"version=5")
        self.assertEqual(status, 410)
        client.assert_silent(0.5)

    def test_bad_token_is_not_found(self) -> None:
        """A PUT to a token that does not decode answers 404."""
        status, _ = put(self.server.endpoint_url + "/update/not-a-token", b"version=1")
        self.assertEqual(status, 404)

    def test_bad_version_is_bad_request(self) -> None:
        """A PUT with a version that is not a non-negative integer answers 400."""
        _, _, _, endpoint = self.registered()
        self.assertEqual(put(endpoint, b"version=-3")[0], 400)

    def test_ping(self) -> None:
        """``{}`` is answered with exactly ``{}``."""
        client = self.connect()
        client.ws.send("{}")
        client.ws.settimeout(TIMEOUT)
        self.assertEqual(json.loads(client.ws.recv()), {})

    def test_subprotocol_echoed(self) -> None:
        """An offered ``push-notification`` subprotocol is echoed in the handshake."""
        client = self.connect(subprotocols=["push-notification"])
        self.assertEqual(client.ws.getsubprotocol(), "push-notification")

    def test_no_subprotocol_accepted(self) -> None:
        """A client that offers no subprotocol is accepted and can say hello."""
        client = self.connect()
        self.assertIsNone(client.ws.getsubprotocol())
        client.hello()

    def test_invalid_json_closes(self) -> None:
        """A frame that is not JSON closes the connection without a reply."""
        client = self.connect()
        client.hello()
        client.ws.send("{not json")
        client.ws.settimeout(TIMEOUT)
        try:
            opcode, frame = client.ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return  # closed without a close frame: still closed
        except websocket.WebSocketTimeoutException:
            self.fail("the connection stayed open after an invalid frame")
        self.assertEqual(opcode, websocket.ABNF.OPCODE_CLOSE, frame.data)

    def test_put_without_content_type(self) -> None:
        """A form body sent with no Content-Type header (curl-like) is read as a form."""
        client, _, chid, endpoint = self.registered()
        status, _ = put_raw(endpoint, b"version=9")
        self.assertEqual(status, 200)
        self.assertEqual(client.recv()["updates"], [{"channelID": chid, "version": 9}])

    def test_status_on_websocket_port(self) -> None:
        """Plain ``GET /status`` and ``/health`` on the WebSocket port answer 200 with JSON
        status OK; another path is the JSON 404."""
        for path in ("/status", "/health"):
            url = f"http://127.0.0.1:{self.server.ws_port}{path}"
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                self.assertEqual(response.status, 200)
                self.assertEqual(json.loads(response.read())["status"], "OK")
        url = f"http://127.0.0.1:{self.server.ws_port}/nothing"
        with self.assertRaises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(url, timeout=TIMEOUT)
        self.assertEqual(raised.exception.code, 404)
        self.assertEqual(json.loads(raised.exception.read())["errno"], 102)
        raised.exception.close()

    def test_sigterm_shuts_down_cleanly(self) -> None:
        """SIGTERM closes clients with 1001 (going away) and the process exits 0."""
        client = self.connect()
        client.hello()
        self.assertEqual(self.server.stop(), 0)
        client.ws.settimeout(TIMEOUT)
        # recv_frame, not recv_data: the latter answers the close frame, and the
        # server process has already exited, so that answer would be reset.
        frame = client.ws.recv_frame()
        self.assertEqual(frame.opcode, websocket.ABNF.OPCODE_CLOSE)
        self.assertEqual(int.from_bytes(frame.data[:2], "big"), 1001)
        self.assertIn("Server Shut Down.", self.server.log)
        self.assertNotIn("Traceback", self.server.log)

    def test_sigterm_during_traffic_loses_no_accepted_update(self) -> None:
        """Every PUT answered 200/202 before SIGTERM is delivered after the restart."""
        client, uaid, chid, endpoint = self.registered()
        client.close()
        answered = []
        for version in range(1, 21):
            status, _ = put(endpoint, f"version={version}".encode())
            self.assertIn(status, (200, 202))
            answered.append(version)
        self.assertEqual(self.server.stop(), 0)
        self.server.start()
        again = self.connect()
        again.hello(uaid, [chid])
        message = again.recv()
        self.assertEqual(message["updates"], [{"channelID": chid, "version": answered[-1]}])


class RetryTests(SynchronousTestCase):
    """With ``retry_interval = 1`` unacknowledged updates are re-sent on a timer."""

    def test_resent_until_acked(self) -> None:
        """An unacked update comes again within 2 s with the same version; after ack, never."""
        server = ServerProcess(self, {"client": {"retry_interval": 1}})
        server.start()
        ws = websocket.create_connection(server.ws_url, timeout=TIMEOUT)
        self.addCleanup(ws.close)
        client = _Client(self, ws)
        client.hello()
        chid = str(uuid.uuid4())
        endpoint = client.register(chid)
        self.assertEqual(put(endpoint, b"version=7")[0], 200)
        expected = [{"channelID": chid, "version": 7}]
        self.assertEqual(client.recv()["updates"], expected)
        self.assertEqual(client.recv(timeout=2.5)["updates"], expected)
        client.ack(chid, 7)
        client.sync()
        client.assert_silent(2.5)


class CommandLineTests(SynchronousTestCase):
    """The commands an operator types: help, and a bad config file."""

    def run_command(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return run_command(command, self.mktemp_dir())

    def mktemp_dir(self) -> Path:
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        return path

    def bad_config(self) -> str:
        path = self.mktemp_dir() / "bad.toml"
        path.write_text("[websocket]\nbacklog = 0\n", encoding="utf-8")
        return str(path)

    def test_module_help(self) -> None:
        """``python -m pushtwisted --help`` prints the options and exits 0."""
        result = self.run_command([sys.executable, "-m", "pushtwisted", "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--config", result.stdout)
        self.assertIn("SIMPLEPUSH_<SECTION>_<KEY>", result.stdout)

    def test_twistd_bad_config(self) -> None:
        """``twistd simplepush`` with a bad value exits 1 with one ``error:`` line on stderr."""
        result = self.run_command(
            twistd_command("-n", "--pidfile=", "simplepush", "--config", self.bad_config())
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "error: websocket.backlog: must be > 0, got 0\n")

    def test_module_bad_config(self) -> None:
        """``python -m pushtwisted`` with a bad value exits 1 with one ``error:`` line."""
        result = self.run_command(
            [sys.executable, "-m", "pushtwisted", "--config", self.bad_config()]
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "error: websocket.backlog: must be > 0, got 0\n")

    def test_module_missing_config(self) -> None:
        """A config file that does not exist exits 1 naming the file, without a traceback."""
        missing = str(self.mktemp_dir() / "nope.toml")
        result = self.run_command([sys.executable, "-m", "pushtwisted", "--config", missing])
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"error: cannot read config file {missing}", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
